"""Stores: both formats through the one reader, the manifest, refusing to clobber another
dataset, the output lock."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from faultlib import REPO, child_env, run_cli, small_disk
from helpers import assert_same_arrays, bad_image_bytes

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, plan
from homogen.schema import FIELDS, SCHEMA, SCHEMA_VERSION, SPLIT_CODES
from homogen.sources import list_images
from homogen.store import (
    DamagedChunk,
    StoreConflict,
    StoreError,
    StoreLocked,
    ZarrWriter,
    open_dataset,
    open_writer,
)
from homogen.validation import validate_dataset

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
    assert ds.sources["files"]["image_id"] == [r.image_id for r in list_images(cfg.source)]  # the planned list
    assert "files" not in m["source"] and m["source"]["table"]["array"] == "source_table"  # beside the arrays
    assert m["schema_version"] == SCHEMA_VERSION and m["state"] == "complete"
    assert m["dataset_version"] == plan(cfg).version == ds.version
    assert m["config"] == cfg.model_dump(mode="json")
    assert m["source"]["digest"] == plan(cfg).digest and m["source"]["images"] == 8
    assert [(s["index"], s["name"], s["images"], s["pairs"]) for s in m["shards"]] == [
        (0, "shard-00000", 3, 12),
        (1, "shard-00001", 3, 12),
        (2, "shard-00002", 2, 8),
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
    m = generate(
        GenerateConfig(source=SourceConfig(root=str(src), kind="folder"), output=out, shard_size=2), progress=False
    )
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
    with pytest.raises(
        StoreConflict, match=rf"holds dataset version {plan(first).version}.*{plan(other).version}.*overwrite"
    ):
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


HOLD = """
import sys, time
from pathlib import Path
from homogen.store.lock import output_lock
try:
    with output_lock(sys.argv[1], wait_s=float(sys.argv[3])):
        Path(sys.argv[2]).write_text("held")
        time.sleep(float(sys.argv[4]))
except Exception as exc:
    Path(sys.argv[2]).write_text("refused " + str(exc))
"""


def hold_lock(out: str, flag: Path, wait_s: float = 0.0, hold_s: float = 60.0) -> subprocess.Popen:
    """A process that takes the output's lock (writing ``held`` to ``flag``) and holds it ``hold_s``."""
    return subprocess.Popen([sys.executable, "-c", HOLD, out, str(flag), str(wait_s), str(hold_s)], env=child_env())


def wait_flag(flag: Path, proc: subprocess.Popen) -> str:
    for _ in range(600):
        if flag.exists() and flag.read_text():
            return flag.read_text()
        assert proc.poll() is None or flag.exists(), "the lock holder died"
        time.sleep(0.05)
    raise AssertionError("the holder never took the lock")


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_second_generation_is_refused_while_the_lock_is_held(tmp_path, suffix):
    out = str(tmp_path / f"ds{suffix}")
    cfg = GenerateConfig(output=out, source=SourceConfig(max_images=4))
    generate(cfg, progress=False)
    before = tree(out)
    holder = hold_lock(out, tmp_path / "flag")
    try:
        assert wait_flag(tmp_path / "flag", holder) == "held"
        with pytest.raises(StoreLocked, match=rf"being written by pid {holder.pid}"):
            generate(cfg, progress=False)
        with pytest.raises(StoreLocked):
            generate(cfg.model_copy(update={"overwrite": True, "sampling": SamplingConfig(rho=8)}), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert tree(out) == before


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
    out = str(tmp_path / "ds.zarr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(out, dead.pid)
    m = generate(GenerateConfig(output=out, source=SourceConfig(max_images=2)), progress=False)
    assert m["num_pairs"] == 8 and not os.path.exists(out + ".lock")


def test_a_lock_whose_holder_was_killed_is_free_at_once(tmp_path):
    """A SIGKILLed holder leaves its lock file behind; the kernel has dropped its flock."""
    out = str(tmp_path / "ds.zarr")
    holder = hold_lock(out, tmp_path / "flag")
    assert wait_flag(tmp_path / "flag", holder) == "held"
    holder.kill()
    holder.wait()
    assert os.path.exists(out + ".lock")
    m = generate(GenerateConfig(output=out, source=SourceConfig(max_images=2)), progress=False)
    assert m["num_pairs"] == 8 and not os.path.exists(out + ".lock")


@pytest.mark.parametrize("stale", [False, True])
def test_of_racing_processes_exactly_one_holds_the_lock(tmp_path, stale):
    """Eight processes race for one output (over a stale lock file, or none): exactly one holds it
    while the others are refused; never two at once."""
    out = str(tmp_path / "ds.zarr")
    if stale:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        write_lock(out, dead.pid)
    flags = [tmp_path / f"flag{i}" for i in range(8)]
    procs = [hold_lock(out, f, wait_s=0.0, hold_s=120.0) for f in flags]
    try:
        results = [wait_flag(f, p) for f, p in zip(flags, procs)]  # the holder holds until killed
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert sorted(r.split(" ")[0] for r in results) == ["held"] + ["refused"] * 7, results


def test_the_same_output_by_a_symlink_takes_the_same_lock(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    holder = hold_lock(str(tmp_path / "real" / "ds.zarr"), tmp_path / "flag")
    try:
        assert wait_flag(tmp_path / "flag", holder) == "held"
        for other in (tmp_path / "link" / "ds.zarr", tmp_path / "real" / "x" / ".." / "ds.zarr"):
            with pytest.raises(StoreLocked, match=rf"pid {holder.pid}"):
                generate(GenerateConfig(output=str(other), source=SourceConfig(max_images=2)), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "real" / "ds.zarr").exists()


# ------------------------------------------------------------------ schema 2: plain readers


def readme_blocks() -> list[str]:
    """The Python examples of README's section on the store's layout and plain readers."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The store: layout and plain readers", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


# what each README example leaves behind, saved for comparison with homogen's reader
EPILOGUES = {  # first match wins: the Dataset example also calls zarr.open_group
    "class Chunks": "np.savez(OUT, offsets=np.concatenate([o.numpy() for _, o in loader]), n=sum(len(p) for p, _ in loader))",
    "zarr.open_group": "np.savez(OUT, a=a, b=b, offsets=offsets[:])",
    "xr.open_zarr": "np.savez(OUT, offsets=val.offsets.values, dims=np.array(ds.pairs.dims))",
    "da.from_zarr": "np.savez(OUT, offsets=offsets.compute())",
    "h5py.File": "np.savez(OUT, pairs=pairs, offsets=offsets)",
}


@pytest.mark.slow
def test_readme_plain_readers_open_the_store_without_homogen(both_formats, tmp_path):
    """zarr, xarray, dask, h5py and the README's plain PyTorch Dataset, each in a fresh process
    that never imports homogen, read exactly what homogen's reader reads."""
    blocks = readme_blocks()
    assert len(blocks) == 5
    ref = open_dataset(both_formats["zarr"])[:]
    for block in blocks:
        key = next(k for k in EPILOGUES if k in block)
        out = tmp_path / "out.npz"
        script = "\n".join(
            [
                "import numpy as np",
                f"path, OUT = {both_formats['zarr']!r}, {str(out)!r}",  # what the section's intro names
                block.replace('"work/datasets/photos.h5"', repr(both_formats["hdf5"])),  # each block defines the rest
                EPILOGUES[key],
                "import sys",
                "assert not [m for m in sys.modules if m.split('.')[0] == 'homogen'], 'homogen was imported'",
            ]
        )
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert res.returncode == 0, (key, res.stderr[-2000:])
        got = np.load(out)
        if key == "zarr.open_group":
            assert np.array_equal(got["a"], ref["pairs"][0, 0]) and np.array_equal(got["b"], ref["pairs"][0, 1])
            assert np.array_equal(got["offsets"], ref["offsets"])
        elif key == "xr.open_zarr":
            assert np.array_equal(got["offsets"], ref["offsets"][ref["split"] == 2])
            assert got["dims"].tolist() == ["pair", "ab", "y", "x"]
        elif key == "da.from_zarr":
            assert np.array_equal(got["offsets"], ref["offsets"])
        elif key == "h5py.File":
            assert np.array_equal(got["pairs"], ref["pairs"][:64]) and np.array_equal(
                got["offsets"], ref["offsets"][:64]
            )
        else:  # every train pair exactly once, in chunk-shuffled order
            train = ref["offsets"][ref["split"] == 0]
            assert int(got["n"]) == len(train)
            assert sorted(map(tuple, got["offsets"])) == sorted(map(tuple, train))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_every_field_is_one_array_at_the_root_with_dimension_names(both_formats, fmt):
    path = both_formats[fmt]
    if fmt == "zarr":
        root = zarr.open_group(path, mode="r")
        assert sorted(k for k, _ in root.arrays()) == sorted((*FIELDS, "source_table"))
        dims = {f.name: tuple(root[f.name].metadata.dimension_names) for f in SCHEMA}
        assert [k for k, _ in root.groups()] == []  # no shard groups left behind
        assert not os.path.exists(path + ".parts")
    else:
        with h5py.File(path, "r") as f:
            assert sorted(f.keys()) == sorted((*FIELDS, "source_table"))
            dims = {f_.name: tuple(d.label for d in f[f_.name].dims) for f_ in SCHEMA}
            assert all(f[name].fletcher32 for name in (*FIELDS, "source_table"))
    assert dims == {f.name: f.dims for f in SCHEMA}


# ---------------------------------------------------------------------- integrity: bit flips


def flip_bit_in_chunk(path: str, field: str, k: int, chunk_len: int, ndim: int) -> str:
    """Flip one bit in the middle of chunk ``k`` of ``field``, on disk; returns what was hit."""
    if path.endswith(".h5"):
        with h5py.File(path, "r") as f:
            info = f[field].id.get_chunk_info_by_coord((k * chunk_len,) + (0,) * (ndim - 1))
        offset, size, target = info.byte_offset, info.size, path
    else:
        target = f"{path}/{field}/c/" + "/".join([str(k)] + ["0"] * (ndim - 1))
        offset, size = 0, os.path.getsize(target)
    with open(target, "r+b") as fh:
        fh.seek(offset + size // 2)
        byte = fh.read(1)[0]
        fh.seek(offset + size // 2)
        fh.write(bytes([byte ^ 0x10]))
    return target


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_flipped_bit_in_any_array_is_a_read_error_naming_the_array_and_chunk(both_formats, tmp_path, fmt):
    src = both_formats[fmt]
    store = str(tmp_path / os.path.basename(src))
    (shutil.copy if fmt == "hdf5" else shutil.copytree)(src, store)
    clean = open_dataset(src)[:]
    for k, f in enumerate(SCHEMA):  # array f, chunk k (chunks of 5 pairs)
        flip_bit_in_chunk(store, f.name, k, 5, 1 + len(f.row_shape(128)))
    ds = open_dataset(store)
    for k, f in enumerate(SCHEMA):
        with pytest.raises(DamagedChunk, match=rf"^{f.name} chunk {k} \(pairs {5 * k}-{5 * k + 4}\) of .* is damaged"):
            ds.read(0, len(ds), (f.name,))
        other = (k + 1) % 7  # the other chunks of the same array still read, with the clean values
        if other < 7 and other != k:
            assert np.array_equal(
                ds.read(5 * other, 5 * other + 5, (f.name,))[f.name], clean[f.name][5 * other : 5 * other + 5]
            )
    report = validate_dataset(store, progress=False)
    damaged = {(e["array"], e["chunk"]) for e in report.check("readable").examples}
    assert report.check("readable").passed is False
    detail = report.check("readable").detail
    for k, f in enumerate(SCHEMA):  # validate names every damaged chunk, not only the first few
        assert f"{f.name} chunk {k} " in detail
    assert damaged <= {(f.name, k) for k, f in enumerate(SCHEMA)}


# ------------------------------------------------------------------------- damaged inputs


def test_a_truncated_zarr_json_is_an_error_naming_the_file(both_formats, tmp_path):
    store = tmp_path / "ds.zarr"
    shutil.copytree(both_formats["zarr"], store)
    meta = store / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:200])
    with pytest.raises(StoreError, match=r"ds\.zarr/zarr\.json is not valid JSON .*truncated"):
        open_dataset(str(store))
    arr_meta = store / "offsets" / "zarr.json"
    shutil.copy(Path(both_formats["zarr"]) / "zarr.json", meta)
    arr_meta.write_bytes(arr_meta.read_bytes()[:50])
    # the consolidated copy hides it from a reader of the root; one that opens the array by itself fails
    with pytest.raises(StoreError, match=r"ds\.zarr/offsets/zarr\.json cannot be read \(JSONDecodeError"):
        open_dataset(str(store))


def test_a_deleted_chunk_is_an_error_naming_the_file(both_formats, tmp_path):
    store = tmp_path / "ds.zarr"
    shutil.copytree(both_formats["zarr"], store)
    os.remove(store / "homography" / "c" / "3" / "0" / "0")
    with pytest.raises(
        DamagedChunk, match=r"has 1 chunk file\(s\) .* \(.*ds\.zarr/homography/c/3/0/0 \(missing from storage\)\)"
    ):
        open_dataset(str(store))
    shutil.rmtree(store / "image_id")  # a whole array: its metadata lives on in the consolidated copy
    with pytest.raises(StoreError, match=r"ds\.zarr/image_id/zarr\.json is missing \(the consolidated copy"):
        open_dataset(str(store))


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_hand_edited_manifest_is_an_error_naming_the_file(both_formats, tmp_path, fmt):
    src = both_formats[fmt]
    store = str(tmp_path / os.path.basename(src))
    (shutil.copy if fmt == "hdf5" else shutil.copytree)(src, store)
    manifest = open_dataset(src).manifest
    edited = {**manifest, "num_pairs": 33}
    if fmt == "zarr":
        zarr.open_group(store, mode="r+").attrs["homogen"] = edited
        where = r"ds\.zarr/zarr\.json"
    else:
        with h5py.File(store, "r+") as f:
            f.attrs["homogen"] = json.dumps(edited)
        where = r"ds\.h5"
    with pytest.raises(
        StoreError,
        match=rf"array pairs is uint8\(32, 2, 128, 128\), the manifest \({'.*' + where}\) says uint8\(33, 2, 128, 128\)",
    ):
        open_dataset(store)
    edited = {k: v for k, v in manifest.items() if k != "shards"}
    if fmt == "zarr":
        zarr.open_group(store, mode="r+").attrs["homogen"] = edited
    else:
        with h5py.File(store, "r+") as f:
            f.attrs["homogen"] = json.dumps(edited)
    with pytest.raises(
        StoreError, match=rf"the manifest in .*{where}.* was edited or damaged \(shards: Field required\)"
    ):
        open_dataset(store)
    if fmt == "hdf5":
        with h5py.File(store, "r+") as f:
            f.attrs["homogen"] = "{not json"
        with pytest.raises(StoreError, match=r"the manifest in .*ds\.h5 is not valid JSON"):
            open_dataset(store)


def make_schema1_store(path: Path) -> None:
    """A store as homogen schema 1 wrote it: one group per shard, arrays nowhere at the root."""
    root = zarr.create_group(
        str(path),
        attributes={
            "homogen": {
                "schema_version": 1,
                "dataset_version": "0123456789ab",
                "state": "complete",
                "format": "zarr",
                "shards": [{"index": 0, "name": "shard-00000", "pairs": 4}],
                "num_pairs": 4,
            }
        },
    )
    g = root.create_group("shards").create_group("shard-00000")
    g.create_array("pairs", shape=(4, 2, 128, 128), dtype="uint8")[...] = 7


@pytest.mark.slow
def test_an_old_layout_store_is_named_with_the_fix_by_info_validate_and_train(tmp_path):
    old = tmp_path / "old.zarr"
    make_schema1_store(old)
    before = tree(old)
    for args in (["info", str(old)], ["validate", str(old)], ["train", str(old), "--epochs", "1"]):
        res = run_cli(args, tmp_path)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert (
            "schema-1 homogen store (the old layout" in lines[0] and "regenerate it with `homogen generate`" in lines[0]
        )
    assert tree(old) == before  # nothing generated is lost
    with pytest.raises(
        StoreConflict, match=r"holds a schema-1 store \(an older layout\).*pass overwrite=True to replace it"
    ):
        generate(GenerateConfig(output=str(old), source=SourceConfig(max_images=2)), progress=False)
    assert tree(old) == before


# ------------------------------------------------------------- resume that cannot lose data


def test_a_complete_store_rerun_with_another_shard_or_chunk_size_is_the_same_dataset(tmp_path):
    out = str(tmp_path / "ds.zarr")
    first = GenerateConfig(output=out, source=SourceConfig(max_images=8), shard_size=4, chunk_size=8)
    generate(first, progress=False)
    before = tree(out)
    for update in ({"shard_size": 8}, {"shard_size": 3, "chunk_size": 5}):
        m = generate(first.model_copy(update=update), progress=False)
        assert m["num_pairs"] == 32 and tree(out) == before  # nothing rewritten, nothing lost


def test_a_partly_generated_store_rerun_with_another_shard_or_chunk_size_is_refused_naming_both(tmp_path, monkeypatch):
    out = str(tmp_path / "ds.zarr")
    cfg = GenerateConfig(output=out, source=SourceConfig(max_images=8), shard_size=4, chunk_size=8)
    real = ZarrWriter.write_shard

    def fail_on_shard_1(self, index, arrays, info):
        if index == 1:
            raise KeyboardInterrupt("stopped")
        return real(self, index, arrays, info)

    monkeypatch.setattr(ZarrWriter, "write_shard", fail_on_shard_1)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, progress=False)
    monkeypatch.setattr(ZarrWriter, "write_shard", real)
    before = tree(out)
    with pytest.raises(
        StoreConflict, match=r"with shard_size 4, and this run asks for shard_size 8: re-run with shard_size=4"
    ):
        generate(cfg.model_copy(update={"shard_size": 8}), progress=False)
    with pytest.raises(
        StoreConflict, match=r"with chunk_size 8, and this run asks for chunk_size 16: re-run with chunk_size=8"
    ):
        generate(cfg.model_copy(update={"chunk_size": 16}), progress=False)
    assert tree(out) == before and not os.path.exists(out + ".lock")
    m = generate(cfg, progress=False)  # the same sizes finish it
    assert m["num_pairs"] == 32
    assert_same_arrays(open_dataset(out)[:], open_dataset(both_small(tmp_path))[:])


def both_small(tmp_path) -> str:
    ref = str(tmp_path / "ref.zarr")
    generate(GenerateConfig(output=ref, source=SourceConfig(max_images=8), shard_size=3, chunk_size=5), progress=False)
    return ref


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_the_arrays_do_not_depend_on_shard_size_chunk_size_or_a_quarantined_image(
    tmp_path, sample_photos, rgb_photo, suffix
):
    """Shards whose rows line up with the chunks (copied as stored bytes) or not (re-encoded),
    with and without a quarantined image: the same rows."""
    src = tmp_path / "src"
    src.mkdir()
    for p in sample_photos[:5]:
        shutil.copyfile(p, src / p.name)
    (src / "000000000050.jpg").write_bytes(bad_image_bytes("truncated_jpeg", sample_photos[0].read_bytes(), rgb_photo))
    source = SourceConfig(root=str(src), kind="folder")
    stores = []
    for shard, chunk in ((1, 4), (2, 8), (6, 3), (4, 256)):
        out = str(tmp_path / f"s{shard}-{chunk}{suffix}")
        m = generate(GenerateConfig(source=source, output=out, shard_size=shard, chunk_size=chunk), progress=False)
        assert len(m["quarantine"]) == 1 and m["num_pairs"] == 20
        stores.append(open_dataset(out)[:])
    for other in stores[1:]:
        assert_same_arrays(other, stores[0])
    assert 50 not in stores[0]["image_id"]  # no row of the quarantined image, no hole, no padding


# ------------------------------------------------------------ kill at every write step


KILLER = r"""
import json, os, sys
from homogen.store import hdf5_writer, zarr_writer
from homogen.config import GenerateConfig
from homogen.generate import generate

args = json.loads(sys.argv[1])
step, fmt = args["step"], args["format"]
Writer = zarr_writer.ZarrWriter if fmt == "zarr" else hdf5_writer.HDF5Writer


def die():
    os._exit(9)


def at(obj, name, call=1, after=False):
    real = getattr(obj, name)
    count = [0]

    def wrapper(*a, **kw):
        count[0] += 1
        if count[0] == call and not after:
            die()
        out = real(*a, **kw)
        if count[0] == call and after:
            die()
        return out

    setattr(obj, name, wrapper)


if step == "after-lock":
    at(Writer, "prepare")
elif step == "root-without-manifest":  # as an older homogen could leave it: the root exists, its manifest not yet
    def bare(self, header):
        if fmt == "zarr":
            os.makedirs(self.url)
            with open(os.path.join(self.url, "zarr.json"), "w") as f:
                json.dump({"zarr_format": 3, "node_type": "group", "attributes": {}}, f)
        else:
            open(self.url + ".tmp-deadbeef", "wb").write(b"\x89HDF")
        die()
    Writer.write_header = bare
elif step == "between-shards":
    at(Writer, "write_shard", call=2, after=True)
elif step == "mid-assemble":
    if fmt == "zarr":
        at(Writer, "_copy_rows", call=4)
    else:
        at(hdf5_writer, "_create_h5_dataset", call=3 + 3)  # 3 staged shards, then the root's third array
elif step == "before-manifest":
    if fmt == "zarr":
        at(zarr_writer.zarr, "consolidate_metadata", call=1, after=True)
    else:
        at(hdf5_writer.os, "replace", call=5)  # header, 3 shards, then the root file
elif step == "after-manifest":
    at(Writer, "remove_debris")
generate(GenerateConfig.model_validate(args["config"]), progress=False)
"""

KILL_STEPS = [
    "after-lock",
    "root-without-manifest",
    "between-shards",
    "mid-assemble",
    "before-manifest",
    "after-manifest",
]


@pytest.fixture(scope="module")
def clean_reference(tmp_path_factory) -> dict[str, dict]:
    d = tmp_path_factory.mktemp("ref")
    out = {}
    for fmt, name in (("zarr", "ds.zarr"), ("hdf5", "ds.h5")):
        generate(
            GenerateConfig(output=str(d / name), source=SourceConfig(max_images=6), shard_size=2, chunk_size=4),
            progress=False,
        )
        out[fmt] = open_dataset(str(d / name))[:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
@pytest.mark.parametrize("step", KILL_STEPS)
def test_a_process_killed_at_any_write_step_is_finished_by_a_rerun(tmp_path, clean_reference, fmt, step):
    """A real SIGKILL-like exit at each step of a generation (lock, root, shards, assembling the
    arrays, the manifest, cleaning up); the same generation re-run ends with the clean dataset and
    no debris."""
    out = tmp_path / ("ds.zarr" if fmt == "zarr" else "ds.h5")
    cfg = GenerateConfig(output=str(out), source=SourceConfig(max_images=6), shard_size=2, chunk_size=4)
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLER,
            json.dumps({"step": step, "format": fmt, "config": cfg.model_dump(mode="json")}),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert res.returncode == 9, res.stderr[-2000:]
    if step != "after-manifest":
        with pytest.raises(StoreError):
            open_dataset(str(out))  # never a half dataset presented as a whole
    m = generate(cfg, progress=False)
    assert m["state"] == "complete" and m["num_pairs"] == 24
    assert_same_arrays(open_dataset(str(out))[:], clean_reference[fmt])
    assert not os.path.exists(str(out) + ".parts") and not os.path.exists(str(out) + ".lock")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


# ---------------------------------------------------------- the output: writable, and its lock


@contextlib.contextmanager
def read_only_folder(path: Path, monkeypatch):
    """A folder on a read-only file system: a real read-only tmpfs where mounting is allowed,
    otherwise file creation under it fails with EROFS as such a mount would."""
    path.mkdir(parents=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        real_open = os.open

        def ro_open(file, flags, *a, **kw):
            if os.path.abspath(os.fspath(file)).startswith(str(path)) and flags & (
                os.O_CREAT | os.O_WRONLY | os.O_RDWR
            ):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(file))
            return real_open(file, flags, *a, **kw)

        monkeypatch.setattr(os, "open", ro_open)
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)


@pytest.mark.parametrize(
    "make_output, message",
    [
        (
            lambda tmp: "/proc/homogen/ds.zarr",
            r"output /proc/homogen/ds\.zarr is inside a pseudo file system: choose a folder on a disk",
        ),
        (
            lambda tmp: "file://relative/ds.zarr",
            r"output file://relative/ds\.zarr is a file:// URL without an absolute path: write file:///abs/path",
        ),
        (
            lambda tmp: str(tmp / "a-file" / "ds.zarr"),
            r"output .*a-file/ds\.zarr cannot be created: .*a-file is a file, not a folder",
        ),
        (
            lambda tmp: str(tmp / "ro" / "sub" / "ds.h5"),
            r"output .*ro/sub/ds\.h5 cannot be written in .*/ro: it is read-only: choose a writable folder",
        ),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_in_one_line_before_anything_exists(
    tmp_path, monkeypatch, make_output, message
):
    monkeypatch.chdir(tmp_path)  # a relative path that slipped through would land here, not in the checkout
    (tmp_path / "a-file").write_text("not a folder")
    with read_only_folder(tmp_path / "ro", monkeypatch):
        output = make_output(tmp_path)
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(StoreError, match=message) as info:
            generate(GenerateConfig(output=output, source=SourceConfig(max_images=2)), progress=False)
        assert "\n" not in str(info.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no lock, no probe
        assert not os.listdir(tmp_path / "ro")


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"\x00\xff garbage"])
def test_an_empty_or_unreadable_lock_is_stale_and_taken_over(tmp_path, content):
    out = str(tmp_path / "ds.zarr")
    Path(out + ".lock").write_bytes(content)  # left by a crash or a full disk
    m = generate(GenerateConfig(output=out, source=SourceConfig(max_images=2)), progress=False)
    assert m["num_pairs"] == 8 and not os.path.exists(out + ".lock")


def test_the_lock_is_never_seen_half_written(tmp_path):
    """The lock file appears with its content (written under a temporary name, then linked)."""
    out = str(tmp_path / "ds.zarr")
    writer = open_writer(out)
    with writer.lock():
        holder = json.loads(Path(out + ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert [p.name for p in tmp_path.iterdir()] == ["ds.zarr.lock"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_full_disk_at_start_leaves_nothing_behind_and_a_rerun_works(tmp_path, monkeypatch, suffix):
    with small_disk(tmp_path / "disk", size_kib=256, monkeypatch=monkeypatch) as disk:
        filler = disk.path / "filler"
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
        if disk.real:  # fill the tmpfs to the last byte
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 4096):
                    pass
        else:  # the write budget, spent
            disk.used = disk.budget
        os.close(fd)
        out = disk.path / f"ds{suffix}"
        cfg = GenerateConfig(output=str(out), source=SourceConfig(max_images=2))
        with pytest.raises(StoreError, match=r"disk is full") as info:
            generate(cfg, progress=False)
        assert "\n" not in str(info.value) and str(disk.path) in str(info.value)
        assert sorted(p.name for p in disk.path.iterdir()) == ["filler"]  # no lock, no root, no temporary
        filler.unlink()
        disk.grow(64 * 1024)
        assert generate(cfg, progress=False)["num_pairs"] == 8


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_file_url_output_is_the_same_as_its_path(tmp_path, suffix):
    out = tmp_path / f"ds{suffix}"
    m = generate(GenerateConfig(output=f"file://{out}", source=SourceConfig(max_images=2)), progress=False)
    assert m["num_pairs"] == 8 and out.exists()
    assert_same_arrays(open_dataset(f"file://{out}")[:], open_dataset(str(out))[:])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_opening_a_store_reads_no_source_table_and_sources_read_it_once(tmp_path, monkeypatch, fmt):
    """The per-image table (~10 MB of JSON on full COCO) is an array beside the fields: opening a
    store, reading pairs and every shard's "is the store complete?" read only the small header;
    ``ds.sources`` reads the table once per open."""
    import homogen.store.dataset as reader
    from homogen.generate import generate_shard

    out = str(tmp_path / ("ds.zarr" if fmt == "zarr" else "ds.h5"))
    cfg = GenerateConfig(output=out, **SMALL)
    generate(cfg, progress=False)
    reads = []
    real = reader.decode_table
    monkeypatch.setattr(reader, "decode_table", lambda *a: reads.append(1) or real(*a))
    header = open_writer(out, fmt).read_header()
    assert "files" not in header["source"] and "same_bytes" not in header["source"]
    again = [generate_shard(open_writer(out, fmt, cfg.chunk_size), s, cfg.sampling) for s in plan(cfg).shards]
    assert all(r.skipped for r in again)
    with open_dataset(out) as ds:
        ds[:]
        assert reads == []
        assert ds.sources["files"]["image_id"] == ds.sources["files"]["image_id"]
        assert len(reads) == 1 and ds.sources["images"] == 8


def test_the_old_import_paths_still_work():
    """Code written against homogen.stores, homogen.outputs, homogen.validate and
    homogen.check_report before the packages existed goes on importing the same objects."""
    import homogen.check_report
    import homogen.outputs
    import homogen.store
    import homogen.stores
    import homogen.validate
    import homogen.validation
    import homogen.validation.report

    assert homogen.stores.open_dataset is homogen.store.open_dataset
    assert homogen.stores.StoreError is homogen.outputs.StoreError is homogen.store.StoreError
    assert homogen.outputs.output_lock is homogen.store.lock.output_lock
    assert homogen.validate.validate_dataset is homogen.validation.validate_dataset
    assert homogen.check_report.CheckResult is homogen.validation.report.CheckResult
