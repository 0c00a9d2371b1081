"""Shared fixtures: the bundled photographs, folders built from them, a small store, a temporary
Prefect API, one torch thread. Plain helper functions live in ``tests/helpers.py`` (``from helpers import ...``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from homogen.config import GenerateConfig, SourceConfig
from homogen.generate import generate

from helpers import PHOTOS, SAMPLE_ANNOTATIONS, stop_prefect_queue_services


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    """The 32 bundled COCO photographs, by file name (= by image id)."""
    photos = list(PHOTOS)
    assert len(photos) == 32
    return photos


@pytest.fixture(scope="session")
def sample_coco() -> dict:
    """The bundled COCO annotations, parsed."""
    return json.loads(SAMPLE_ANNOTATIONS.read_text())


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, sample_photos) -> Path:
    """A plain folder holding copies of 8 bundled photographs (never modified by tests)."""
    folder = tmp_path_factory.mktemp("photos")
    for p in sample_photos[:8]:
        shutil.copyfile(p, folder / p.name)
    return folder


@pytest.fixture(scope="session")
def rgb_photo(sample_photos) -> np.ndarray:
    """One real photograph as (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(sample_photos[0]), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> tuple[Path, dict]:
    """8 bundled images, 4 pairs each, in 3 shards (3, 3, 2 images), chunks of 5 pairs: (path, manifest)."""
    out = tmp_path_factory.mktemp("small") / "small.zarr"
    cfg = GenerateConfig(source=SourceConfig(max_images=8), output=str(out), shard_size=3, chunk_size=5)
    return out, generate(cfg, progress=False)


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect API (SQLite) for the flow runs of one test module (``prefect_test_harness``)."""
    from prefect.testing.utilities import prefect_test_harness

    stop_prefect_queue_services()  # none left bound to an earlier server (helpers.stop_prefect_queue_services)
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread: small convolutions on a busy 2-core machine run faster, and steadier."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
