"""validate_dataset: a clean store passes every check; each kind of damage fails the check made for it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import zarr

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.images import load_gray
from homogen.sources import list_images
from homogen.validation import PER_PAIR_CHECKS, pixel_tolerance, validate_dataset
from homogen.warping import cut_pair

SOURCE = SourceConfig(max_images=6)  # 6 bundled COCO photographs: 4 train, 2 test
PPI = 4
SHARD_SIZE = 3  # 2 shards of 12 pairs
CHUNK = 8  # chunks [0, 8), [8, 16), [16, 24) of every array


def make_store(path: str, photometric: str = "none", source: SourceConfig = SOURCE, ppi: int = PPI) -> str:
    generate(
        GenerateConfig(
            output=path,
            source=source,
            shard_size=SHARD_SIZE,
            chunk_size=CHUNK,
            sampling=SamplingConfig(pairs_per_image=ppi, photometric=photometric),
        ),
        progress=False,
    )
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One clean store per format, generated once; tests tamper with copies."""
    root = tmp_path_factory.mktemp("clean")
    return {fmt: make_store(str(root / f"ds.{ext}")) for fmt, ext in (("zarr", "zarr"), ("hdf5", "h5"))}


def copy_store(src: str, dst_dir) -> str:
    dst = str(dst_dir / os.path.basename(src))
    if src.endswith(".h5"):
        shutil.copy(src, dst)
    else:
        shutil.copytree(src, dst)
    return dst


@contextlib.contextmanager
def root_arrays(store: str):
    """The store's arrays, writable (new values get valid checksums), for either format."""
    if store.endswith(".h5"):
        with h5py.File(store, "r+") as f:
            yield f
    else:
        yield zarr.open_group(store, mode="r+")


def run(store: str, **kw):
    return validate_dataset(store, progress=False, **kw)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_clean_store_passes_every_check(clean, fmt):
    report = run(clean[fmt], regenerate=6, sources=True)
    assert report.passed, report.to_markdown()
    assert report.num_pairs == 6 * PPI
    for c in report.checks:
        assert c.passed is True, f"{c.name}: {c.detail}"
        assert c.failed == 0
    for name in PER_PAIR_CHECKS:
        assert report.check(name).checked == report.num_pairs
    assert report.check("regenerate").checked == 6


def test_report_serialises_and_renders_a_table(clean):
    report = run(clean["zarr"])
    d = report.to_dict()
    assert json.loads(json.dumps(d))["num_pairs"] == report.num_pairs
    assert {c["name"] for c in d["checks"]} == {c.name for c in report.checks}
    md = report.to_markdown()
    assert "| check | result | samples checked | failed | detail |" in md
    for c in report.checks:
        assert f"| {c.name} |" in md
    assert report.dataset_version in md


def test_unrequested_or_meaningless_checks_are_reported_not_applicable(tmp_path):
    tiny = make_store(str(tmp_path / "tiny.zarr"), source=SourceConfig(max_images=2), ppi=2)
    report = run(tiny)
    uniform = report.check("offsets_uniform")
    assert uniform.passed is None and "not applicable" in uniform.detail
    assert report.check("regenerate").passed is None
    assert report.passed  # n/a is not a failure...
    assert "n/a" in report.to_markdown()  # ...but is shown as such


def test_zero_perturbation_store_has_no_false_duplicates(tmp_path):
    """rho = 0: every pair of an image has zero offsets, but pairs at other positions are distinct."""
    path = str(tmp_path / "rho0.zarr")
    generate(
        GenerateConfig(output=path, source=SourceConfig(max_images=3), sampling=SamplingConfig(rho=0)), progress=False
    )
    report = run(path)
    assert report.check("no_duplicates").passed, report.check("no_duplicates").detail
    assert report.passed


def test_labels_disagreeing_with_h_fail_the_dlt_check(clean, tmp_path):
    store = copy_store(clean["zarr"], tmp_path)
    with root_arrays(store) as g:
        off = g["offsets"][0]
        off[2] -= 5.0 * np.sign(off[2])  # stays within [-rho, rho]
        g["offsets"][0] = off
    report = run(store)
    check = report.check("homography_matches_offsets")
    assert check.passed is False and check.failed == 1
    assert check.examples[0]["index"] == 0 and check.examples[0]["value"] > 1.0
    assert report.check("offsets_in_range").passed is True
    assert report.check("pixels_match_homography").passed is True  # pixels still follow the stored H


def _wrong_direction_b(store: str, rows: range) -> None:
    """Rewrite B of ``rows`` as the recipe would with H^-1 instead of H."""
    records = {r.image_id: r for r in list_images(SOURCE)}
    with root_arrays(store) as g:
        for i in rows:
            h = np.asarray(g["homography"][i])
            x, y = (int(v) for v in g["corners"][i][0])
            frame = load_gray(records[int(g["image_id"][i])].path, 320, 240)
            _, b_wrong = cut_pair(frame, x, y, np.linalg.inv(h), 128)
            pair = np.asarray(g["pairs"][i])
            pair[1] = b_wrong
            g["pairs"][i] = pair


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_b_made_with_the_wrong_direction_of_h_fails_the_pixel_check(clean, tmp_path, fmt):
    store = copy_store(clean[fmt], tmp_path)
    _wrong_direction_b(store, range(0, 8))
    report = run(store)
    check = report.check("pixels_match_homography")
    assert check.passed is False
    assert check.failed == 8
    assert {e["index"] for e in check.examples} <= set(range(8))
    assert min(e["value"] for e in check.examples) > 4 * pixel_tolerance("none")
    assert report.failed_checks == ["pixels_match_homography"]


def test_offsets_out_of_range_are_named(clean, tmp_path):
    store = copy_store(clean["zarr"], tmp_path)
    with root_arrays(store) as g:
        off = g["offsets"][13]
        off[5] = 40.0  # rho = 32
        g["offsets"][13] = off
    report = run(store)
    check = report.check("offsets_in_range")
    assert check.passed is False and check.failed == 1
    assert check.examples[0]["chunk"] == 1
    assert check.examples[0]["index"] == 13 and check.examples[0]["value"] == pytest.approx(40.0)


def test_duplicated_sample_fails_only_the_duplicate_check(clean, tmp_path):
    store = copy_store(clean["zarr"], tmp_path)
    with root_arrays(store) as g:
        for name in ("pairs", "offsets", "homography", "corners", "image_id", "split"):
            g[name][0] = g[name][1]  # rows 0..3 come from the same image
    report = run(store)
    check = report.check("no_duplicates")
    assert check.passed is False
    assert any(e["indices"] == [0, 1] for e in check.examples)
    assert report.failed_checks == ["no_duplicates"]


def test_train_image_also_in_test_fails_the_split_check(clean, tmp_path):
    store = copy_store(clean["zarr"], tmp_path)
    with root_arrays(store) as g:
        image_id = int(g["image_id"][2])
        split = int(g["split"][2])
        g["split"][2] = 1 - split
    report = run(store)
    check = report.check("split_disjoint")
    assert check.passed is False and check.failed == 1
    assert {e.get("image_id") for e in check.examples} == {image_id}
    assert report.check("counts_match_manifest").passed is False  # the split counts moved too


def test_counts_disagreeing_with_the_manifest_fail(clean, tmp_path):
    store = copy_store(clean["zarr"], tmp_path)
    root = zarr.open_group(store, mode="r+")
    manifest = dict(root.attrs["homogen"])
    manifest["shards"][1] = {**manifest["shards"][1], "pairs": 11}
    manifest["splits"] = {**manifest["splits"], "train": manifest["splits"]["train"] + 1}
    root.attrs["homogen"] = manifest
    check = run(store).check("counts_match_manifest")
    assert check.passed is False
    assert "the manifest's shards end at pair 23, the arrays hold 24" in check.detail
    assert "manifest says {'train'" in check.detail


def test_stored_images_must_be_the_planned_ones_minus_the_quarantined(clean, tmp_path):
    store = copy_store(clean["zarr"], tmp_path)
    with root_arrays(store) as g:
        ids = np.asarray(g["image_id"][:])
        gone = int(ids[4])
        ids[ids == gone] = 999_999  # one image's pairs now claim an image nobody planned
        g["image_id"][:] = ids
    check = run(store).check("images_accounted")
    assert check.passed is False
    assert "1 images stored but not planned (ids [999999])" in check.detail
    assert f"1 images planned but neither stored nor quarantined (ids [{gone}])" in check.detail


def _damage_chunk_file(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(16)
        f.write(b"\xde\xad\xbe\xef" * 64)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_damaged_chunk_is_named_and_the_rest_still_checked(clean, tmp_path, fmt):
    store = copy_store(clean[fmt], tmp_path)
    if fmt == "zarr":
        _damage_chunk_file(f"{store}/pairs/c/2/0/0/0")  # pairs [16, 24)
    else:
        with h5py.File(store, "r") as f:
            info = f["pairs"].id.get_chunk_info_by_coord((16, 0, 0, 0))
        with open(store, "r+b") as f:
            f.seek(info.byte_offset + 16)
            f.write(b"\xde\xad\xbe\xef" * 64)
    report = run(store)
    check = report.check("readable")
    assert check.passed is False and check.failed == 8
    assert {k: check.examples[0][k] for k in ("array", "chunk", "pairs")} == {
        "array": "pairs",
        "chunk": 2,
        "pairs": "[16, 24)",
    }
    assert "pairs chunk 2 (pairs [16, 24)" in check.detail
    assert report.check("homography_matches_offsets").checked == 16  # other chunks were still checked
    assert report.check("pixels_match_homography").passed is True


def test_regenerate_fails_when_a_pixel_was_changed(clean, tmp_path):
    store = copy_store(clean["zarr"], tmp_path)
    with root_arrays(store) as g:
        pair = np.asarray(g["pairs"][17])
        pair[1, 64, 64] ^= 1  # one level on one pixel: invisible to the pixel check
        g["pairs"][17] = pair
    report = run(store, regenerate=24)
    check = report.check("regenerate")
    assert check.passed is False and check.failed == 1
    assert check.examples[0]["index"] == 17 and "pairs" in check.examples[0]["why"]
    assert report.failed_checks == ["regenerate"]


def test_regenerate_with_an_unusable_source_root_says_to_pass_one(clean, tmp_path):
    check = run(clean["zarr"], regenerate=2, source_root=str(tmp_path / "nowhere")).check("regenerate")
    assert check.passed is False
    assert "source_root" in check.detail and "nowhere" in check.detail


def test_photometric_store_passes(tmp_path):
    store = make_store(str(tmp_path / "tough.zarr"), photometric="tough")
    report = run(store, regenerate=3)
    assert report.passed, report.to_markdown()
    assert report.check("pixels_match_homography").checked == report.num_pairs


def test_photometric_store_with_wrong_direction_b_fails(tmp_path):
    store = make_store(str(tmp_path / "hard.zarr"), photometric="hard")
    _wrong_direction_b(store, range(0, 4))  # geometry wrong (and photometric changes dropped)
    check = run(store).check("pixels_match_homography")
    assert check.passed is False and check.failed == 4


def test_chunk_missing_from_storage_is_named(clean, tmp_path):
    store = copy_store(clean["zarr"], tmp_path)
    os.remove(f"{store}/pairs/c/0/0/0/0")  # zarr would read it back as zeros
    check = run(store).check("readable")
    assert check.passed is False and check.failed == 8
    assert {k: check.examples[0][k] for k in ("array", "chunk", "pairs")} == {
        "array": "pairs",
        "chunk": 0,
        "pairs": "[0, 8)",
    }
    assert "missing" in check.examples[0]["error"] and check.examples[0]["file"].endswith("/pairs/c/0/0/0/0")


# ------------------------------------------------- edits with valid checksums (rewritten through zarr/h5py)


def _images_of_two_splits(g) -> tuple[int, int]:
    ids, splits = np.asarray(g["image_id"][:]), np.asarray(g["split"][:])
    a = int(ids[0])
    b = int(next(i for i, s in zip(ids, splits) if s != splits[0]))
    return a, b


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
@pytest.mark.parametrize("field", ["split", "image_id"])
def test_swapping_two_images_values_across_splits_fails_validation(clean, tmp_path, fmt, field):
    """Swap the ``split`` (or ``image_id``) values of two images of different splits: every count
    still matches, every checksum is right; the pairs disagree with the manifest's per-image table."""
    store = copy_store(clean[fmt], tmp_path)
    with root_arrays(store) as g:
        a, b = _images_of_two_splits(g)
        ids, values = np.asarray(g["image_id"][:]), np.asarray(g[field][:])
        va, vb = values[ids == a][0], values[ids == b][0]
        values[ids == a], values[ids == b] = vb, va
        g[field][:] = values
    report = run(store)
    check = report.check("split_disjoint")
    assert check.passed is False and {e["image_id"] for e in check.examples} >= {a, b}, check.detail
    assert "another split than the manifest's table gives" in check.detail
    assert report.check("counts_match_manifest").passed is True  # the counts cannot see it


def _edit_manifest(store: str, edit) -> None:
    if store.endswith(".h5"):
        with h5py.File(store, "r+") as f:
            m = json.loads(f.attrs["homogen"])
            edit(m)
            f.attrs["homogen"] = json.dumps(m)
    else:
        g = zarr.open_group(store, mode="r+", use_consolidated=False)
        m = dict(g.attrs["homogen"])
        edit(m)
        g.attrs["homogen"] = m


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
@pytest.mark.parametrize(
    "what, edit",
    [
        ("num_images", lambda m: m.update(num_images=m["num_images"] + 1)),
        ("split_codes", lambda m: m.update(split_codes={"train": 1, "test": 0, "val": 2})),
    ],
)
def test_an_edited_count_or_split_code_fails_validation(clean, tmp_path, fmt, what, edit):
    store = copy_store(clean[fmt], tmp_path)
    _edit_manifest(store, edit)
    check = run(store).check("counts_match_manifest")
    assert check.passed is False and what in check.detail, check.detail


def test_a_copy_moved_to_another_split_fails_by_digest(tmp_path, sample_photos):
    """Two ids with the same bytes: moving one of them to another split (both arrays and nothing
    else) is caught by the digest rule even where the ids alone look consistent."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_photos[:4]:
        shutil.copyfile(p, folder / p.name)
    shutil.copyfile(sample_photos[0], folder / "twin.jpg")
    store = str(tmp_path / "o.zarr")
    generate(GenerateConfig(source=SourceConfig(root=str(folder), kind="folder"), output=store), progress=False)
    g = zarr.open_group(store, mode="r+")
    ids, splits = np.asarray(g["image_id"][:]), np.asarray(g["split"][:])
    twin = max(ids)  # the hashed id of twin.jpg is far above the COCO ids
    splits[ids == twin] = (splits[ids == twin][0] + 1) % 3
    g["split"][:] = splits
    check = run(store).check("split_disjoint")
    assert check.passed is False and "one digest" in check.detail, check.detail
