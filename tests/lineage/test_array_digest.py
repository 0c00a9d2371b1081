"""The array digest: recorded at commit, the same for the same values whatever the storage, and
``validate`` fails when the stored values are not those committed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xxhash
import zarr
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.schema import SCHEMA
from homogen.stores import open_dataset, open_writer
from homogen.validate import validate_dataset

from helpers import read_store

SAMPLING = SamplingConfig(pairs_per_image=3, patch_size=64, rho=16)


def make(path, **kw) -> dict:
    cfg = GenerateConfig(source=SourceConfig(max_images=6), sampling=SAMPLING, output=str(path), **kw)
    return generate(cfg, progress=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("digest")
    return {
        "zarr": (root / "a.zarr", make(root / "a.zarr")),
        "hdf5": (root / "a.h5", make(root / "a.h5", shard_size=4, chunk_size=5)),
        "small-chunks": (root / "b.zarr", make(root / "b.zarr", shard_size=1, chunk_size=2)),
    }


def by_hand(arrays: dict[str, np.ndarray], patch: int) -> dict[str, str]:
    """The definition: xxh3-128 of "name<TAB>dtype<TAB>row shape<LF>", then of each row's xxh3-64
    (8 bytes little-endian), the row being its values' bytes in C order."""
    out = {}
    for f in SCHEMA:
        h = xxhash.xxh3_128(f"{f.name}\t{f.dtype.str}\t{f.row_shape(patch)}\n".encode())
        for row in np.ascontiguousarray(arrays[f.name]):
            h.update(xxhash.xxh3_64_intdigest(np.ascontiguousarray(row).tobytes()).to_bytes(8, "little"))
        out[f.name] = h.hexdigest()
    return out


def by_hand_legacy(arrays: dict[str, np.ndarray], patch: int) -> dict[str, str]:
    """The digest of stores committed before row hashes: the rows' bytes as one stream."""
    out = {}
    for f in SCHEMA:
        h = xxhash.xxh3_128(f"{f.name}\t{f.dtype.str}\t{f.row_shape(patch)}\n".encode())
        h.update(np.ascontiguousarray(arrays[f.name]).tobytes())
        out[f.name] = h.hexdigest()
    return out


def test_the_digest_recorded_at_commit_is_that_of_the_stored_values_whatever_the_storage(stores):
    path, m = stores["zarr"]
    assert m["array_digest"]["hash"] == "xxh3_128/rows" and m["array_digest"]["pairs"] == m["num_pairs"] == 18
    assert m["array_digest"]["arrays"] == by_hand(read_store(path), 64)
    # the same dataset in HDF5, or with 1-image shards and 2-pair chunks: the same values, the same digest
    for other in ("hdf5", "small-chunks"):
        assert stores[other][1]["dataset_version"] == m["dataset_version"]
        assert stores[other][1]["array_digest"] == m["array_digest"]
    assert validate_dataset(str(path), progress=False).check("arrays_match_digest").passed is True


def test_the_commit_digests_the_shards_row_hashes_without_decoding_what_it_wrote(tmp_path, monkeypatch):
    """The shards hash their rows in memory; the commit concatenates them (it decoded every chunk it had
    just written: a third of its time). A shard staged without row hashes (an older homogen's) makes the
    commit read the arrays back: the same digest either way."""
    import homogen.store.manifest as manifests

    read_back = []
    real = manifests.arrays_digest
    monkeypatch.setattr(manifests, "arrays_digest", lambda *a, **k: read_back.append(1) or real(*a, **k))
    m = make(tmp_path / "rows.zarr", shard_size=4)
    assert read_back == [] and m["array_digest"]["arrays"] == by_hand(read_store(tmp_path / "rows.zarr"), 64)
    monkeypatch.setattr("homogen.generate.shard_row_hashes", lambda arrays: None)  # as an older homogen staged
    again = make(tmp_path / "old.zarr", shard_size=4)
    assert read_back == [1] and again["array_digest"] == m["array_digest"]


def test_a_store_committed_with_the_legacy_digest_is_checked_the_legacy_way(stores, tmp_path):
    """Stores committed before row hashes record "xxh3_128" over the rows' bytes: they still validate,
    and a row swapped in one still fails."""
    store = copy(stores["zarr"][0], tmp_path / "legacy.zarr")
    arrays = read_store(store)
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["homogen"]["array_digest"] = {
        "hash": "xxh3_128",
        "pairs": 18,
        "arrays": by_hand_legacy(arrays, 64),
    }
    meta.write_text(json.dumps(doc))
    check = validate_dataset(str(store), progress=False).check("arrays_match_digest")
    assert check.passed is True and "(xxh3_128)" in check.detail, check.detail
    g = zarr.open_group(str(store), mode="r+")
    rows = np.asarray(g["offsets"][0:2])
    g["offsets"][0:2] = rows[::-1]
    assert validate_dataset(str(store), progress=False).check("arrays_match_digest").passed is False


def copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_validate_fails_when_two_rows_are_swapped_and_nothing_else_notices(stores, tmp_path):
    """Rows 0 and 1 (the same image) swapped in every array: each pair is still a valid pair and the
    counts, ids and splits still add up; only the digest says these are not the committed values."""
    store = copy(stores["zarr"][0], tmp_path / "swapped.zarr")
    g = zarr.open_group(str(store), mode="r+")
    for f in SCHEMA:
        rows = np.asarray(g[f.name][0:2])
        g[f.name][0:2] = rows[::-1]
    report = validate_dataset(str(store), progress=False)
    assert report.failed_checks == ["arrays_match_digest"]
    check = report.check("arrays_match_digest")
    assert check.failed == 4  # image_id and split rows are equal within one image: their digests hold
    assert {e["array"] for e in check.examples} == {"pairs", "offsets", "homography", "corners"}
    assert "modified after generation" in check.detail
    result = CliRunner().invoke(app, ["validate", str(store)])
    assert result.exit_code == 1 and "| arrays_match_digest | **FAIL** |" in result.output


def test_validate_fails_when_the_digest_is_removed_from_the_manifest(stores, tmp_path):
    store = copy(stores["zarr"][0], tmp_path / "edited.zarr")
    writer = open_writer(str(store))
    m = writer.read_header()
    del m["array_digest"]
    writer.write_header(m)
    check = validate_dataset(str(store), progress=False).check("arrays_match_digest")
    assert check.passed is False and "lacks its array_digest" in check.detail


def test_a_deleted_chunk_fails_the_digest_naming_the_array(stores, tmp_path):
    store = copy(stores["small-chunks"][0], tmp_path / "deleted.zarr")
    (store / "offsets" / "c" / "3" / "0").unlink()
    check = validate_dataset(str(store), progress=False).check("arrays_match_digest")
    assert check.passed is False and "offsets chunk 3 (missing from storage)" in check.detail
    assert open_dataset(str(stores["small-chunks"][0])).manifest["array_digest"] == stores["zarr"][1]["array_digest"]


def test_info_json_shows_the_code_and_the_digest(stores):
    result = CliRunner().invoke(app, ["info", str(stores["hdf5"][0]), "--json"])
    m = json.loads(result.output)
    assert set(m["code"]) == {"homogen", "numpy", "opencv", "simplejpeg", "libjpeg-turbo", "zarr", "h5py", "hdf5"}
    assert set(m["array_digest"]["arrays"]) == {f.name for f in SCHEMA}


def test_info_names_the_libraries_and_the_pairs_digest(stores):
    path, m = stores["zarr"]
    out = CliRunner().invoke(app, ["info", str(path)]).output
    assert f"numpy {m['code']['numpy']}" in out and f"libjpeg-turbo {m['code']['libjpeg-turbo']}" in out
    assert m["array_digest"]["arrays"]["pairs"] in out


def test_a_store_made_before_digests_were_recorded_is_not_applicable_and_still_validates(stores, tmp_path):
    store = copy(stores["zarr"][0], tmp_path / "old.zarr")
    writer = open_writer(str(store))
    m = writer.read_header()
    del m["array_digest"], m["code"]
    writer.write_header(m)
    report = validate_dataset(str(store), progress=False)
    check = report.check("arrays_match_digest")
    assert check.passed is None and "older homogen" in check.detail and report.passed


@pytest.mark.timeout(60)
def test_a_chunk_linked_to_dev_zero_is_never_read_by_the_digest(stores, tmp_path):
    store = copy(stores["small-chunks"][0], tmp_path / "linked.zarr")
    chunk = store / "pairs" / "c" / "2" / "0" / "0" / "0"
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    check = validate_dataset(str(store), progress=False).check("arrays_match_digest")
    assert check.passed is False and "pairs chunk 2 (a symbolic link" in check.detail
