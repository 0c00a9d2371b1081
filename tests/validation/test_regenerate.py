"""``validate --regenerate k`` remakes k pairs from at most k source reads: never a listing of the
source, never a re-hash of every image."""

from __future__ import annotations

import shutil

import pytest

from homogen.config import GenerateConfig, SourceConfig
from homogen.generate import generate
from homogen.validation import regenerate as regen
from homogen.validation import validate_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("regen")
    out = str(d / "ds.zarr")
    generate(GenerateConfig(output=out, source=SourceConfig(max_images=12)), progress=False)
    return out


def test_k_pairs_cost_at_most_k_source_reads(store, monkeypatch):
    reads = []
    real = regen.read_bytes
    monkeypatch.setattr(regen, "read_bytes", lambda p: reads.append(p) or real(p))

    def forbidden(*a, **kw):
        raise AssertionError("regeneration must not hash or list the whole source")

    monkeypatch.setattr("homogen.digests.digest_files", forbidden)
    monkeypatch.setattr("homogen.sources.list_images", forbidden)
    for k in (1, 3, 8):
        reads.clear()
        check = validate_dataset(store, regenerate=k, progress=False).check("regenerate")
        assert check.passed is True and check.checked == k, check.detail
        assert 1 <= len(reads) <= k and len(reads) == len(set(reads)), reads


def test_a_replaced_source_image_is_named_as_changed(store, tmp_path):
    """Another photo under a source image's name: the read bytes are not the recorded ones."""
    from homogen.store import open_dataset

    root = open_dataset(store).manifest["source"]["root"]
    copy = tmp_path / "coco"
    shutil.copytree(root, copy)
    photos = sorted((copy / "train2017").glob("*.jpg"))
    for p in photos:  # every image replaced by its neighbour
        shutil.copyfile(photos[(photos.index(p) + 1) % len(photos)], str(p) + ".new")
    for p in photos:
        shutil.move(str(p) + ".new", p)
    check = validate_dataset(store, regenerate=4, source_root=str(copy), progress=False).check("regenerate")
    assert check.passed is False and check.failed == 4
    assert all("changed since generation" in e["why"] for e in check.examples)
    assert "--source-root" in check.detail


def test_a_relative_source_is_found_from_any_working_directory(tmp_path, monkeypatch):
    """``--source photos`` records the absolute root: validated from elsewhere, the same images are
    read (a relative root made `validate` fail, or read another folder of the same name)."""
    from homogen.config import SAMPLE_ROOT
    from homogen.store import open_dataset

    (tmp_path / "a").mkdir()
    shutil.copytree(SAMPLE_ROOT, tmp_path / "a" / "photos")
    monkeypatch.chdir(tmp_path / "a")
    out = str(tmp_path / "ds.zarr")
    generate(GenerateConfig(output=out, source=SourceConfig(root="photos", max_images=8)), progress=False)
    manifest = open_dataset(out).manifest
    assert manifest["source"]["root"] == manifest["config"]["source"]["root"] == str(tmp_path / "a" / "photos")
    (tmp_path / "b" / "photos").mkdir(parents=True)  # another folder of that name, empty, beside the new cwd
    monkeypatch.chdir(tmp_path / "b")
    check = validate_dataset(out, regenerate=4, progress=False).check("regenerate")
    assert check.passed is True and check.checked == 4, check.detail
