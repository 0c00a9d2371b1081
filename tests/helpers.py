"""Helpers shared by test modules (imported as ``from helpers import ...``; tests/ is on sys.path)."""

from __future__ import annotations

import io
import json
import shutil
from http.server import ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from homogen.config import SAMPLE_ROOT
from homogen.stores import FIELDS, open_dataset

SAMPLE = Path(SAMPLE_ROOT)
SAMPLE_ANNOTATIONS = SAMPLE / "annotations" / "instances_train2017.json"
PHOTOS = sorted((SAMPLE / "train2017").glob("*.jpg"))


def recipe_pairs(n: int, rho: float, patch: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs cut from the bundled photographs by the recipe of CONVENTIONS.md, written out here
    independently of homogen.generate: uint8 ``(n, 2, P, P)`` and their offsets float32 ``(n, 8)``."""
    rng = np.random.default_rng(seed)
    pairs = np.empty((n, 2, patch, patch), np.uint8)
    offsets = rng.uniform(-rho, rho, size=(n, 8)).astype(np.float32)
    for i in range(n):
        img = cv2.resize(
            cv2.imread(str(PHOTOS[i % len(PHOTOS)]), cv2.IMREAD_GRAYSCALE), (320, 240), interpolation=cv2.INTER_AREA
        )
        m = int(np.ceil(rho))
        x, y = int(rng.integers(m, 320 - patch - m + 1)), int(rng.integers(m, 240 - patch - m + 1))
        c = np.float32([[x, y], [x + patch, y], [x + patch, y + patch], [x, y + patch]])
        h_ab = cv2.getPerspectiveTransform(c, c + offsets[i].reshape(4, 2))
        warped = cv2.warpPerspective(img, np.linalg.inv(h_ab), (320, 240))
        pairs[i, 0] = img[y : y + patch, x : x + patch]
        pairs[i, 1] = warped[y : y + patch, x : x + patch]
    return pairs, offsets


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def corrupt_jpeg_header(data: bytes) -> bytes:
    """A JPEG whose frame header (SOF0) is damaged: a component count no decoder accepts."""
    sof = data.index(b"\xff\xc0")
    out = bytearray(data)
    out[sof + 9] = 7
    return bytes(out)


def bad_image_bytes(kind: str, jpeg: bytes, rgb: np.ndarray) -> bytes:
    """The bytes of one kind of bad image file, made from a real photograph."""
    im = Image.fromarray(rgb)
    gray16 = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    if kind == "corrupt_jpeg":
        return corrupt_jpeg_header(jpeg)
    if kind == "truncated_jpeg":
        return jpeg[: len(jpeg) // 2]
    if kind == "zero_bytes":
        return b""
    if kind == "text_as_jpg":
        return b"this is a text file with an image's name\n" * 20
    if kind == "cmyk_jpeg":
        return encode(im.convert("CMYK"), "JPEG")
    if kind == "png16_gray":
        return cv2.imencode(".png", gray16)[1].tobytes()
    if kind == "png16_rgb":
        return cv2.imencode(".png", rgb.astype(np.uint16) * 257)[1].tobytes()
    if kind == "rgba_png":
        return encode(im.convert("RGBA"), "PNG")
    if kind == "palette_png_transparent":
        return encode(im.convert("P"), "PNG", transparency=0)
    if kind == "tiny_jpeg":
        return encode(im.resize((100, 80)), "JPEG")
    if kind == "truncated_png":
        return encode(im, "PNG")[:-5000]
    raise ValueError(kind)


# reason fragments a user sees in the manifest's quarantine list, per kind of bad file
BAD_KINDS: dict[str, str] = {
    "corrupt_jpeg": "corrupt JPEG header",
    "truncated_jpeg": "truncated JPEG",
    "zero_bytes": "empty file",
    "text_as_jpg": "not an image",
    "cmyk_jpeg": "CMYK",
    "png16_gray": "16-bit",
    "png16_rgb": "16-bit",
    "rgba_png": "alpha",
    "palette_png_transparent": "alpha",
    "tiny_jpeg": "too small",
    "truncated_png": "truncated PNG",
}
BAD_SUFFIX = {k: (".png" if "png" in k else ".jpg") for k in BAD_KINDS}


def make_coco(root: Path, split: str, photos: list[Path], coco: dict, extra_images: list[dict] = ()) -> Path:
    """A COCO layout ``root/<split>/*.jpg`` + ``root/annotations/instances_<split>.json`` holding
    ``photos`` (copied) and their annotations from ``coco``; ``extra_images`` are listed in the
    annotations only (no file)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    names = {p.name for p in photos}
    for p in photos:
        shutil.copyfile(p, root / split / p.name)
    images = [i for i in coco["images"] if i["file_name"] in names] + list(extra_images)
    ids = {i["id"] for i in images}
    data = {
        "images": images,
        "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
        "categories": coco["categories"],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def read_store(path) -> dict[str, np.ndarray]:
    """Every array of a finished store, through the one reader."""
    ds = open_dataset(str(path))
    return ds[:]


def p32_store(path, *, seed: int = 0, pairs_per_image: int = 4, val_fraction: float = 0.25, **config):
    """A small real store for training tests, opened: 16 bundled images (train, val and test ones),
    32 x 32 patches, rho 8, chunks of 16 pairs; ``config``: other GenerateConfig fields (shard_size)."""
    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.generate import generate

    generate(
        GenerateConfig(
            output=str(path),
            chunk_size=16,
            sampling=SamplingConfig(pairs_per_image=pairs_per_image, patch_size=32, rho=8, seed=seed),
            source=SourceConfig(max_images=16, test_fraction=0.25, val_fraction=val_fraction),
            **config,
        ),
        progress=False,
    )
    return open_dataset(str(path))


def with_sources(store) -> dict:
    """A store's manifest with its source section complete (``files``, ``same_bytes``: the table the
    store keeps beside its arrays), the form the manifest functions take (homogen.versions, diff)."""
    with open_dataset(str(store), check_chunks=False) as ds:
        return {**ds.manifest, "source": ds.sources}


def assert_same_arrays(a: dict, b: dict) -> None:
    for f in FIELDS:
        assert a[f].dtype == b[f].dtype and a[f].shape == b[f].shape, f
        assert np.array_equal(a[f], b[f]), f"field {f} differs"


def manifest_without_location(m: dict) -> dict:
    """The manifest minus what names where it was written (the output path, the format)."""
    m = json.loads(json.dumps(m))
    m["config"].pop("output", None)
    m["config"].pop("format", None)
    m.pop("format", None)
    return m


class QuietHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server on a test folder that does not print the errors of clients hanging up
    early (partial reads, dropped transfers): expected in these tests."""

    def handle_error(self, request, client_address) -> None:
        pass


def latest_artifact(client, key: str) -> dict:
    """The latest version of the artifact ``key`` as JSON.

    Posted by hand: with FastAPI 0.154 the server refuses the explicit nulls that Prefect's client
    methods (``read_artifacts``, ``Artifact.get``) send for the filters they are not given.
    """
    response = client._client.post(
        "/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}, "sort": "UPDATED_DESC", "limit": 1}
    )
    response.raise_for_status()
    found = response.json()
    assert found, f"no artifact {key!r}"
    return found[0]


def stop_prefect_queue_services(timeout: float = 10.0) -> None:
    """Stop this process's Prefect event and log services, waiting at most ``timeout`` s each.

    They are process-wide and keep the API URL they started with: once a test's server is gone, the
    next module's flows would send their events there (a 60 s client timeout each), and
    ``prefect_test_harness`` drains them at its exit with no timeout (a suite stuck in teardown).
    Stopped, the next event or log starts services bound to the server of that moment."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=timeout)
