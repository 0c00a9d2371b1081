"""Stores: both formats through the one reader, the manifest, refusing to clobber another
dataset, the output lock."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, plan
from homogen.sources import list_images
from homogen.stores import (
    FIELDS,
    SPLIT_CODES,
    StoreConflict,
    StoreError,
    StoreLocked,
    open_dataset,
    open_writer,
)
from homogen.versions import SCHEMA_VERSION

from conftest import assert_same_arrays, bad_image_bytes

SMALL = dict(source=SourceConfig(max_images=8), shard_size=3, chunk_size=5)


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("formats")
    out = {"zarr": str(d / "ds.zarr"), "hdf5": str(d / "ds.h5")}
    for path in out.values():
        generate(GenerateConfig(output=path, **SMALL), progress=False)
    return out


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_reader_presents_each_format_as_one_dataset(both_formats, fmt):
    ds = open_dataset(both_formats[fmt])
    assert len(ds) == 32 and ds.manifest["format"] == fmt
    whole = ds[:]
    assert {k: (v.dtype.str, v.shape) for k, v in whole.items()} == {
        "pairs": ("|u1", (32, 2, 128, 128)),
        "offsets": ("<f4", (32, 8)),
        "homography": ("<f8", (32, 3, 3)),
        "corners": ("<f4", (32, 4, 2)),
        "image_id": ("<i8", (32,)),
        "split": ("|u1", (32,)),
    }
    # slices across shard boundaries (shards hold 12, 12, 8 pairs), steps, negative indices
    for sl in [slice(10, 14), slice(0, 32, 7), slice(-5, None), slice(11, 25), slice(30, 99)]:
        part = ds[sl]
        for f in FIELDS:
            assert np.array_equal(part[f], whole[f][sl]), (sl, f)
    for i in (0, 11, 12, 31, -1, -32):
        one = ds[i]
        for f in FIELDS:
            assert np.array_equal(one[f], whole[f][i])
    with pytest.raises(IndexError):
        ds[32]
    with pytest.raises(IndexError):
        ds[-33]


def test_both_formats_hold_the_same_dataset(both_formats):
    a, b = open_dataset(both_formats["zarr"]), open_dataset(both_formats["hdf5"])
    assert a.version == b.version
    assert_same_arrays(a[:], b[:])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_chunks_follow_the_storage_chunks(both_formats, fmt):
    ds = open_dataset(both_formats[fmt])
    # one array per field, chunks of 5 pairs whatever the shards (12, 12, 8 pairs) were
    assert ds.chunks() == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30), (30, 32)]
    assert_same_arrays({f: np.concatenate([ds.read(a, b)[f] for a, b in ds.chunks()]) for f in FIELDS}, ds[:])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_iter_chunks_by_split(both_formats, fmt):
    ds = open_dataset(both_formats[fmt])
    whole = ds[:]
    for name, code in SPLIT_CODES.items():
        blocks = list(ds.iter_chunks(split=name, fields=("image_id", "offsets")))
        assert all(set(b) == {"image_id", "offsets"} for b in blocks)
        ids = np.concatenate([b["image_id"] for b in blocks]) if blocks else np.empty(0, np.int64)
        assert np.array_equal(ids, whole["image_id"][whole["split"] == code])
        assert len(ids) == ds.split_counts()[name]
    with pytest.raises(ValueError, match="unknown split 'bogus'"):
        next(ds.iter_chunks(split="bogus"))


def test_manifest_records_what_made_the_dataset(both_formats):
    ds = open_dataset(both_formats["zarr"])
    m = ds.manifest
    cfg = GenerateConfig(output=both_formats["zarr"], **SMALL)
    records = list_images(cfg.source)
    assert m["schema_version"] == SCHEMA_VERSION and m["state"] == "complete"
    assert m["dataset_version"] == plan(cfg).version == ds.version
    assert m["config"] == cfg.model_dump(mode="json")
    assert m["source"]["digest"] == plan(cfg).digest and m["source"]["images"] == 8
    assert [(s["index"], s["name"], s["images"], s["pairs"]) for s in m["shards"]] == [
        (0, "shard-00000", 3, 12), (1, "shard-00001", 3, 12), (2, "shard-00002", 2, 8)
    ]
    split = ds[:]["split"]
    assert m["splits"] == {name: int((split == code).sum()) for name, code in SPLIT_CODES.items()}
    assert m["num_pairs"] == 32 and m["num_images"] == 8 and m["quarantine"] == []
    assert (ds.patch_size, ds.rho) == (128, 32)


def test_manifest_never_holds_credentials(tmp_path):
    """The source URL's user, password and query stay out of the manifest."""
    secret_root = "s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/coco?token=abc"
    cfg = GenerateConfig(source=SourceConfig(root=secret_root), output=str(tmp_path / "x.zarr"))
    p = plan(GenerateConfig(output=cfg.output))
    p.config = cfg
    writer = open_writer(cfg.output, "zarr")
    writer.prepare(p)
    header = json.dumps(writer.read_header())
    assert "wJalrXUtnFEMI" not in header and "AKIAEXAMPLE" not in header and "token" not in header
    assert "s3://bucket/coco" in header


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_shard_whose_images_are_all_bad_is_empty_and_readable(tmp_path, sample_photos, rgb_photo, fmt):
    src = tmp_path / "src"
    src.mkdir()
    jpeg = sample_photos[0].read_bytes()
    for p in sample_photos[:2]:  # ids 9, 36: shard 0
        shutil.copyfile(p, src / p.name)
    for n, kind in enumerate(["zero_bytes", "truncated_jpeg"]):  # ids 100, 101: shard 1, all bad
        (src / f"{100 + n}.jpg").write_bytes(bad_image_bytes(kind, jpeg, rgb_photo))
    shutil.copyfile(sample_photos[2], src / "000000000200.jpg")  # shard 2
    out = str(tmp_path / ("o.zarr" if fmt == "zarr" else "o.h5"))
    m = generate(GenerateConfig(source=SourceConfig(root=str(src), kind="folder"), output=out, shard_size=2),
                 progress=False)
    assert [s["pairs"] for s in m["shards"]] == [8, 0, 4]
    assert len(m["quarantine"]) == 2 and m["num_images"] == 3
    ds = open_dataset(out)
    assert len(ds) == 12 and ds.chunks() == [(0, 12)]  # no hole where shard 1 was
    assert ds[6:10]["image_id"].tolist() == [36, 36, 200, 200]
    assert ds[-1]["image_id"] == 200
    assert sum(len(b["image_id"]) for b in ds.iter_chunks()) == 12


def test_dataset_pickles_by_reopening(both_formats):
    for path in both_formats.values():
        ds = pickle.loads(pickle.dumps(open_dataset(path)))
        assert len(ds) == 32 and ds[3]["image_id"] == open_dataset(path)[3]["image_id"]


def test_opening_what_is_not_a_finished_store_says_so(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        open_dataset(str(tmp_path / "absent.zarr"))
    with pytest.raises(StoreError, match="no store at"):
        open_dataset(str(tmp_path / "absent.h5"))


def tree(path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself, and its HDF5 parts) with its bytes."""
    files = {}
    for base in (str(path), str(path) + ".parts"):
        if os.path.isfile(base):
            files[base] = open(base, "rb").read()
        for dirpath, _, names in os.walk(base):
            for n in names:
                files[os.path.join(dirpath, n)] = open(os.path.join(dirpath, n), "rb").read()
    return files


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_another_dataset_version_is_refused_unless_overwrite(tmp_path, suffix):
    out = str(tmp_path / f"ds{suffix}")
    first = GenerateConfig(output=out, source=SourceConfig(max_images=4))
    generate(first, progress=False)
    before = tree(out)
    other = first.model_copy(update={"sampling": SamplingConfig(rho=16)})
    with pytest.raises(StoreConflict, match=rf"holds dataset version {plan(first).version}.*{plan(other).version}.*overwrite"):
        generate(other, progress=False)
    assert tree(out) == before  # nothing lost, nothing touched
    assert not os.path.exists(out + ".lock")
    m = generate(other.model_copy(update={"overwrite": True}), progress=False)
    assert open_dataset(out).version == m["dataset_version"] == plan(other).version != plan(first).version


def test_a_folder_that_is_not_a_store_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(StoreConflict, match="data that is not a homogen store"):
        generate(GenerateConfig(output=str(out), source=SourceConfig(max_images=2)), progress=False)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "precious"


def write_lock(out: str, pid: int) -> None:
    with open(out + ".lock", "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}, f)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_second_generation_is_refused_while_the_lock_is_held(tmp_path, suffix):
    out = str(tmp_path / f"ds{suffix}")
    cfg = GenerateConfig(output=out, source=SourceConfig(max_images=4))
    generate(cfg, progress=False)
    before = tree(out)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(out, holder.pid)
        with pytest.raises(StoreLocked, match=rf"being written by pid {holder.pid}"):
            generate(cfg, progress=False)
        with pytest.raises(StoreLocked):
            generate(cfg.model_copy(update={"overwrite": True, "sampling": SamplingConfig(rho=8)}), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert tree(out) == before
    assert os.path.exists(out + ".lock")  # not ours to remove


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
    out = str(tmp_path / "ds.zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(out, dead.pid)
    m = generate(GenerateConfig(output=out, source=SourceConfig(max_images=2)), progress=False)
    assert m["num_pairs"] == 8 and not os.path.exists(out + ".lock")

