"""A damaged or edited store is one line naming the file and the fix, never a traceback, and
never read past what is stored: edited manifests, metadata bit flips in both formats, arrays
re-encoded without their checksum, chunk files replaced by symbolic links."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SourceConfig
from homogen.generate import generate
from homogen.store import DamagedChunk, StoreError, open_dataset
from homogen.validation import validate_dataset


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("damage")
    out = {"zarr": str(d / "ds.zarr"), "hdf5": str(d / "ds.h5")}
    for path in out.values():
        generate(GenerateConfig(output=path, source=SourceConfig(max_images=4), chunk_size=8), progress=False)
    return out


def copy(src: str, tmp_path) -> str:
    dst = str(tmp_path / os.path.basename(src))
    (shutil.copytree if os.path.isdir(src) else shutil.copyfile)(src, dst)
    return dst


def edit_manifest(store: str, edit) -> None:
    if store.endswith(".h5"):
        with h5py.File(store, "r+") as f:
            m = json.loads(f.attrs["homogen"])
            edit(m)
            f.attrs["homogen"] = json.dumps(m)
    else:
        path = os.path.join(store, "zarr.json")
        doc = json.loads(open(path).read())
        edit(doc["attributes"]["homogen"])
        open(path, "w").write(json.dumps(doc))


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line(res) -> str:
    """The command ended by SystemExit (no crash) with exactly one ``error:`` line."""
    assert isinstance(res.exception, SystemExit), f"crashed: {res.exception!r}\n{res.output}"
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m["config"].pop("sampling"), ["config.sampling: Field required"]),
        (lambda m: m.update(shards=[1, 2, 3]), ["shards.0: Input should be a valid dictionary"]),
        (lambda m: m.update(schema_version="2"), ["schema_version '2', not an integer"]),
        (lambda m: m.update(schema_version=True), ["schema_version True, not an integer"]),
        (lambda m: m.update(num_pairs=-1), ["num_pairs: Input should be greater than or equal to 0"]),
        (lambda m: m["source"].pop("table"), ["exactly one of source.table and source.files"]),
        (lambda m: m["source"]["table"].update(bytes="12"), ["source.table.bytes: Input should be a valid integer"]),
        (lambda m: m["config"]["sampling"].update(patch_size="128"), ["config.sampling.patch_size"]),
        (lambda m: m.update(quarantine={"a": 1}), ["quarantine: Input should be a valid list"]),
    ],
)
def test_an_edited_manifest_is_one_line_for_info_validate_and_show(stores, tmp_path, fmt, edit, words):
    store = copy(stores[fmt], tmp_path)
    edit_manifest(store, edit)
    for command in ("info", "validate", "show"):
        line = one_line(cli(command, store))
        assert os.path.basename(store) in line and "regenerate the store" in line, line
        for w in words:
            assert w in line, line


def _flip(path: str, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def test_bit_flips_in_zarr_metadata_are_never_a_traceback(stores, tmp_path):
    """80 single-bit flips in the store's zarr.json files (root manifest and each array's
    metadata): `validate` exits 0, 1 or 2 and never crashes."""
    rng = np.random.default_rng(0)
    src = stores["zarr"]
    metas = sorted(
        os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs if f == "zarr.json"
    )
    for trial in range(80):
        store = str(tmp_path / f"t{trial}.zarr")
        shutil.copytree(src, store)
        meta = os.path.join(store, metas[trial % len(metas)])
        _flip(meta, int(rng.integers(os.path.getsize(meta))), int(rng.integers(8)))
        res = cli("validate", store)
        assert res.exception is None or isinstance(res.exception, SystemExit), (meta, res.exception, res.output)
        assert res.exit_code in (0, 1, 2) and "Traceback" not in res.output
        shutil.rmtree(store)


def test_bit_flips_in_hdf5_metadata_are_never_a_traceback(stores, tmp_path):
    """80 single-bit flips in the HDF5 file outside its chunk data (superblock, object headers,
    B-trees, the manifest attribute): `validate` exits 0, 1 or 2 and never crashes."""
    rng = np.random.default_rng(1)
    src = stores["hdf5"]
    with h5py.File(src, "r") as f:  # byte ranges of the stored chunks: flips there are the checksums' business
        data = []
        for name in f:
            ds = f[name]
            for k in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(k)
                data.append((info.byte_offset, info.byte_offset + info.size))
    size = os.path.getsize(src)
    in_data = np.zeros(size, bool)
    for a, b in data:
        in_data[a:b] = True
    metadata = np.flatnonzero(~in_data)
    for trial in range(80):
        store = str(tmp_path / f"t{trial}.h5")
        shutil.copyfile(src, store)
        _flip(store, int(rng.choice(metadata)), int(rng.integers(8)))
        res = cli("validate", store)
        assert res.exception is None or isinstance(res.exception, SystemExit), (trial, res.exception, res.output)
        assert res.exit_code in (0, 1, 2) and "Traceback" not in res.output
        os.remove(store)


def test_an_array_re_encoded_without_its_crc32c_is_refused(stores, tmp_path):
    """Rewritten through zarr with the same values and no checksum codec: a later bit flip would
    change a pixel silently, so the store is refused on open, naming the array."""
    store = copy(stores["zarr"], tmp_path)
    g = zarr.open_group(store, mode="r+", use_consolidated=False)
    values = g["pairs"][:]
    old = g["pairs"]
    g.create_array(
        "pairs",
        shape=old.shape,
        dtype=old.dtype,
        chunks=old.chunks,
        compressors=[zarr.codecs.ZstdCodec()],
        dimension_names=old.metadata.dimension_names,
        overwrite=True,
    )[...] = values
    zarr.consolidate_metadata(store)
    with pytest.raises(StoreError, match=r"array pairs has no checksum per chunk \(a crc32c codec is required\)"):
        open_dataset(store)
    line = one_line(cli("validate", store))
    assert "pairs has no checksum" in line


def test_an_hdf5_dataset_without_fletcher32_is_refused(stores, tmp_path):
    store = copy(stores["hdf5"], tmp_path)
    with h5py.File(store, "r+") as f:
        values = f["offsets"][:]
        del f["offsets"]
        f.create_dataset("offsets", data=values, chunks=(8, 8), compression="gzip")
    with pytest.raises(StoreError, match=r"array offsets has no checksum per chunk \(a Fletcher-32 filter"):
        open_dataset(store)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["/dev/zero", "copy"])
def test_a_chunk_file_replaced_by_a_symlink_is_refused_and_never_read(stores, tmp_path, target):
    """A link to /dev/zero made `validate` run out of memory; a link to a good copy of the same
    chunk is refused too: nothing in a store is read through a link."""
    store = copy(stores["zarr"], tmp_path)
    chunk = os.path.join(store, "pairs", "c", "1", "0", "0", "0")
    if target == "copy":
        shutil.copyfile(chunk, tmp_path / "elsewhere")
        target = str(tmp_path / "elsewhere")
    os.remove(chunk)
    os.symlink(target, chunk)
    with pytest.raises(DamagedChunk, match=r"pairs/c/1/0/0/0 \(a symbolic link \(never followed inside a store\)\)"):
        open_dataset(store)
    report = validate_dataset(open_dataset(store, check_chunks=False), progress=False)
    readable = report.check("readable")
    assert readable.passed is False and "pairs chunk 1" in readable.detail and "symbolic link" in readable.detail
    assert [c.name for c in report.checks if c.passed is False][0] == "readable"


def test_a_symlinked_array_folder_counts_as_missing_chunks(stores, tmp_path):
    store = copy(stores["zarr"], tmp_path)
    shutil.move(os.path.join(store, "offsets"), tmp_path / "offsets")
    os.symlink(tmp_path / "offsets", os.path.join(store, "offsets"))
    with pytest.raises(DamagedChunk, match=r"offsets/c/0/0 \(missing from storage\)"):
        open_dataset(store)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_generate_over_an_edited_complete_store_is_one_line(stores, tmp_path, fmt):
    """The same generation re-run on its complete store whose manifest was edited (shards: [1, 2, 3]):
    one line, nothing changed (was: a traceback from the shard bookkeeping)."""
    store = copy(stores[fmt], tmp_path)
    edit_manifest(store, lambda m: m.update(shards=[1, 2, 3]))
    line = one_line(cli("generate", "--max-images", "4", "--chunk-size", "8", "-o", store))
    assert "was edited or damaged (shards.0: Input should be a valid dictionary" in line


# ---------------------------------------------------------------------- the source table


def read_table(store: str) -> dict:
    """The source table as plain zarr / h5py read it (no homogen)."""
    if store.endswith(".h5"):
        with h5py.File(store, "r") as f:
            return json.loads(f["source_table"][()].tobytes())
    return json.loads(zarr.open_group(store, mode="r")["source_table"][:].tobytes())


def rewrite_table(store: str, doc: dict) -> bytes:
    """Write ``doc`` as the store's source table through the format's own API (valid checksums)."""
    raw = json.dumps(doc, separators=(",", ":")).encode()
    if store.endswith(".h5"):
        with h5py.File(store, "r+") as f:
            del f["source_table"]
            f.create_dataset("source_table", data=np.frombuffer(raw, np.uint8), compression="gzip", fletcher32=True)
    else:
        g = zarr.open_group(store, mode="r+", use_consolidated=False)
        g.create_array(
            "source_table",
            shape=(len(raw),),
            dtype=np.uint8,
            chunks=(len(raw),),
            compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()],
            dimension_names=("table_byte",),
            chunk_key_encoding={"name": "default", "separator": "/"},
            overwrite=True,
        )[...] = np.frombuffer(raw, np.uint8)
        zarr.consolidate_metadata(store)
    return raw


def moved_image(doc: dict) -> dict:
    """The table with its first image put in another split."""
    split = doc["files"]["split"]
    split[0] = "train" if split[0] != "train" else "test"
    return doc


def other_digest(doc: dict) -> dict:
    """The table with one image's recorded digest changed in one hex digit (the same length)."""
    d = doc["files"]["digest"][0]
    doc["files"]["digest"][0] = ("1" if d[0] == "0" else "0") + d[1:]
    return doc


def flip_table_bit(store: str) -> None:
    if store.endswith(".h5"):
        with h5py.File(store, "r") as f:
            info = f["source_table"].id.get_chunk_info(0)
        _flip(store, info.byte_offset + info.size // 2, 3)
    else:
        chunk = os.path.join(store, "source_table", "c", "0")
        _flip(chunk, os.path.getsize(chunk) // 2, 3)


def remove_table(store: str) -> None:
    if store.endswith(".h5"):
        with h5py.File(store, "r+") as f:
            del f["source_table"]
    else:
        shutil.rmtree(os.path.join(store, "source_table"))  # the consolidated metadata still names it


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
@pytest.mark.parametrize(
    "damage, words",
    [
        (flip_table_bit, ["cannot be read", "damaged"]),
        (remove_table, ["cannot be read", "damaged"]),
        (lambda store: rewrite_table(store, moved_image(read_table(store))), ["not the one the manifest records"]),
        (lambda store: rewrite_table(store, {"files": {"hash": "xxh3-128"}}), ["not the one the manifest records"]),
        (lambda store: rewrite_table(store, other_digest(read_table(store))), ["not the one the manifest records"]),
    ],
)
def test_a_damaged_or_replaced_source_table_is_one_line_for_validate_and_diff(stores, tmp_path, fmt, damage, words):
    """The table is read only by what needs it: `info` and `show` still work; `validate` and `diff`
    say in one line which array is damaged and what to do."""
    store = copy(stores[fmt], tmp_path)
    damage(store)
    if damage is remove_table and fmt == "zarr":  # its zarr.json goes too: checked at open, like every array's
        for res in (cli("info", store), cli("validate", store), cli("diff", store, stores[fmt])):
            assert "source_table/zarr.json is missing" in one_line(res)
        return
    assert cli("info", store).exit_code == 0
    for res in (cli("validate", store), cli("diff", store, stores[fmt])):
        line = one_line(res)
        assert "source table" in line and "source_table" in line and "regenerate" in line, line
        for w in words:
            assert w in line, line


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_source_table_edited_together_with_its_recorded_digest_fails_validation(stores, tmp_path, fmt):
    """An edit that also rewrites the manifest's length and digest of the table still fails: the
    version and source digest are computed from the table, and the pairs' splits no longer match it."""
    import xxhash

    store = copy(stores[fmt], tmp_path)
    raw = rewrite_table(store, moved_image(read_table(store)))
    edit_manifest(store, lambda m: m["source"]["table"].update(bytes=len(raw), xxh3_128=xxhash.xxh3_128_hexdigest(raw)))
    report = validate_dataset(store, progress=False)
    assert report.passed is False
    assert report.check("version_matches_content").passed is False
    assert report.check("split_disjoint").passed is False
    assert cli("validate", store).exit_code == 1


@pytest.mark.timeout(120)
def test_a_source_table_chunk_linked_to_dev_zero_is_refused_and_never_read(stores, tmp_path):
    store = copy(stores["zarr"], tmp_path)
    chunk = os.path.join(store, "source_table", "c", "0")
    os.remove(chunk)
    os.symlink("/dev/zero", chunk)
    line = one_line(cli("validate", store))
    assert "source_table/c/0 is a symbolic link (never followed" in line, line


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_store_with_the_table_inside_its_manifest_still_opens_and_validates(stores, tmp_path, fmt):
    """Stores written before the table moved out hold it in the manifest (source.files, same_bytes)."""
    store = copy(stores[fmt], tmp_path)
    doc = read_table(store)
    remove_table(store)
    if fmt == "zarr":
        zarr.consolidate_metadata(store)

    def inline(m):
        del m["source"]["table"]
        m["source"].update(files=doc["files"], same_bytes=doc["same_bytes"])

    edit_manifest(store, inline)
    with open_dataset(store) as ds:
        assert ds.sources["files"] == doc["files"]
        assert validate_dataset(ds, regenerate=2, progress=False).passed


@pytest.mark.parametrize("edit", ["drop crc32c", "other chunk length"])
def test_an_array_whose_own_metadata_differs_from_its_consolidated_copy_is_refused(stores, tmp_path, edit):
    """The trial removed the crc32c codec from offsets/zarr.json only: homogen read through the intact
    consolidated copy and passed, while `zarr.open_array(path + "/offsets")` read without checksums."""
    store = copy(stores["zarr"], tmp_path)
    meta = os.path.join(store, "offsets", "zarr.json")
    doc = json.loads(open(meta).read())
    if edit == "drop crc32c":
        doc["codecs"] = [c for c in doc["codecs"] if c["name"] != "crc32c"]
    else:
        doc["chunk_grid"]["configuration"]["chunk_shape"][0] += 1
    open(meta, "w").write(json.dumps(doc))
    for command in ("info", "validate"):
        line = one_line(cli(command, store))
        assert "offsets/zarr.json is not its copy" in line and "regenerate the store" in line, line
