"""``homogen diff A B`` on real stores: it names exactly what changed, and nothing else."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.digests import file_digest
from homogen.generate import generate
from homogen.lineage.diff import diff_stores
from homogen.splits import hashed_split

from helpers import with_sources

TEST_FRACTION = 0.25
SAMPLING = SamplingConfig(pairs_per_image=2, patch_size=64, rho=16)


def make(folder, output, val_fraction: float) -> dict:
    cfg = GenerateConfig(
        source=SourceConfig(root=str(folder), test_fraction=TEST_FRACTION, val_fraction=val_fraction),
        sampling=SAMPLING,
        output=str(output),
    )
    generate(cfg, progress=False)
    return with_sources(output)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, sample_photos):
    """A: 8 photographs, val 25 %. B: the same with one photograph re-encoded and val 60 %.
    A.h5: A's config again, in HDF5 with other chunk and shard sizes."""
    root = tmp_path_factory.mktemp("diff")
    folder = root / "photos"
    folder.mkdir()
    for p in sample_photos[:8]:
        shutil.copyfile(p, folder / p.name)
    a = make(folder, root / "a.zarr", 0.25)
    generate(
        GenerateConfig(
            source=SourceConfig(root=str(folder), test_fraction=TEST_FRACTION, val_fraction=0.25),
            sampling=SAMPLING,
            output=str(root / "a.h5"),
            shard_size=3,
            chunk_size=5,
        ),
        progress=False,
    )
    changed = folder / sample_photos[5].name
    before = file_digest(str(changed))
    image = cv2.imread(str(changed))
    cv2.imwrite(str(changed), image, [cv2.IMWRITE_JPEG_QUALITY, 70])  # other bytes, still a good JPEG
    b = make(folder, root / "b.zarr", 0.6)
    return {"root": root, "a": a, "b": b, "changed": changed.name, "before": before, "after": file_digest(str(changed))}


def expected_moves(manifest: dict) -> dict[int, tuple[str, str]]:
    """The split rule itself (homogen.splits) applied to every image id, under A's and B's fractions."""
    out = {}
    for i in manifest["source"]["files"]["image_id"]:
        sa, sb = hashed_split(i, TEST_FRACTION, 0.25), hashed_split(i, TEST_FRACTION, 0.6)
        if sa != sb:
            out[i] = (sa, sb)
    return out


def test_diff_names_exactly_the_changed_image_and_the_images_that_moved_split(stores):
    root = stores["root"]
    moves = expected_moves(stores["a"])
    assert moves and all(m == ("train", "val") for m in moves.values())  # the fixture does move some images
    result = CliRunner().invoke(app, ["diff", str(root / "a.zarr"), str(root / "b.zarr"), "--json"])
    assert result.exit_code == 1, result.output
    d = json.loads(result.output)
    assert d["identical"] is False
    assert d["a"]["version"] == stores["a"]["dataset_version"] and d["b"]["version"] == stores["b"]["dataset_version"]
    assert d["recipe"] == {"source.val_fraction": [0.25, 0.6]}
    assert d["added"] == [] and d["removed"] == [] and d["quarantined"] == []
    (changed,) = d["changed"]
    assert changed["name"] == stores["changed"]
    assert (changed["digest_a"], changed["digest_b"]) == (stores["before"], stores["after"])
    assert {m["image_id"]: (m["split_a"], m["split_b"]) for m in d["moved"]} == moves
    a, b = stores["a"], stores["b"]
    want = {
        k: [x, y]
        for k, x, y in [("total", a["num_pairs"], b["num_pairs"])]
        + [(s, a["splits"][s], b["splits"][s]) for s in ("train", "test", "val")]
        if x != y
    }
    assert d["pairs"] == want and set(want) == {"train", "val"}
    # one photograph's pixels and some splits changed; labels depend on (seed, image id, pair) alone
    assert set(d["arrays"]) == {"pairs", "split"}


def test_diff_text_names_the_image_and_says_what_moved(stores):
    root = stores["root"]
    result = CliRunner().invoke(app, ["diff", str(root / "a.zarr"), str(root / "b.zarr")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    changed = [line for line in lines if line.startswith("changed")]
    assert len(changed) == 1 and stores["changed"] in changed[0]
    moved = [line for line in lines if line.startswith("moved")]
    assert len(moved) == len(expected_moves(stores["a"])) and all("train -> val" in line for line in moved)
    assert "recipe    source.val_fraction: 0.25 -> 0.6" in lines
    assert lines[-1].startswith("different: 1 recipe fields, 1 images changed,")


def test_the_same_dataset_in_another_format_and_layout_is_identical(stores):
    root = stores["root"]
    result = CliRunner().invoke(app, ["diff", str(root / "a.zarr"), str(root / "a.h5"), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert d["identical"] is True and d["arrays"] == {} and d["changed"] == [] and d["moved"] == []
    assert d["storage"] == {"format": ["zarr", "hdf5"], "chunk_size": [256, 5], "shard_size": [64, 3]}
    # the same store under two names
    same = diff_stores(str(root / "a.zarr"), f"file://{root / 'a.zarr'}/")
    assert same.identical and not same.storage


def test_a_path_that_is_not_a_store_is_one_line_naming_it(stores, tmp_path):
    (tmp_path / "notes.txt").write_text("not a store")
    for bad in (tmp_path / "missing.zarr", tmp_path / "notes.txt", tmp_path):
        result = CliRunner().invoke(app, ["diff", str(stores["root"] / "a.zarr"), str(bad)])
        assert result.exit_code == 2
        assert result.output.count("\n") == 1 and str(bad) in result.output, result.output


def test_an_image_quarantined_on_one_side_is_named(tmp_path, sample_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_photos[:4]:
        shutil.copyfile(p, folder / p.name)
    make(folder, tmp_path / "a.zarr", 0.25)
    broken = folder / sample_photos[2].name
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # truncated: quarantined
    b = make(folder, tmp_path / "b.zarr", 0.25)
    d = diff_stores(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")).to_dict()
    (q,) = d["quarantined"]
    assert q["name"] == broken.name and q["in"] == "B" and q["reason"] == b["quarantine"][0]["reason"]
    assert [c["name"] for c in d["changed"]] == [broken.name] and d["moved"] == [] and d["recipe"] == {}
    assert d["pairs"]["total"] == [8, 6]


def test_digests_of_another_hash_function_are_not_reported_as_changed_images(stores):
    import copy

    from homogen.lineage.diff import diff_manifests

    a = stores["a"]
    b = copy.deepcopy(a)
    b["source"]["files"]["hash"] = "sha256"  # as a homogen hashing with another function would record
    b["source"]["files"]["digest"] = ["0" * 64 for _ in b["source"]["files"]["digest"]]
    d = diff_manifests(a, b)
    assert d.changed == [] and d.recipe == {"source.hash": ["xxh3-128", "sha256"]} and not d.identical


def test_a_damaged_copy_quarantined_on_one_side_is_named_quarantined_never_added_or_removed(tmp_path, sample_photos):
    """B's folder holds A's photographs and a damaged copy of one of them: `diff A B` listed the copy
    as "added" (and `diff B A` as "removed") though it gave no pairs; it is quarantined in B."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    for p in sample_photos[:4]:
        shutil.copyfile(p, a_dir / p.name)
    shutil.copytree(a_dir, b_dir)
    copy = b_dir / f"copy of {sample_photos[1].name}"
    copy.write_bytes(sample_photos[1].read_bytes()[:3000])  # truncated: quarantined
    make(a_dir, tmp_path / "a.zarr", 0.25)
    b = make(b_dir, tmp_path / "b.zarr", 0.25)
    (reason,) = [q["reason"] for q in b["quarantine"]]
    for first, second, side, other in (("a", "b", "B", "A"), ("b", "a", "A", "B")):
        d = diff_stores(str(tmp_path / f"{first}.zarr"), str(tmp_path / f"{second}.zarr"))
        assert d.added == [] and d.removed == [] and d.changed == [] and d.moved == [] and d.pairs == {}
        (q,) = d.quarantined
        assert (q["name"], q["in"], q["absent_from"], q["reason"]) == (copy.name, side, other, reason)
        text = d.to_text()
        assert f"quarantined image {q['image_id']} {copy.name}: in {side} ({other}'s source has no such image)" in text
        assert "added" not in text and "removed" not in text and "1 images quarantined on one side" in text, text


def test_a_changed_category_filter_is_named_as_the_cause_of_the_images_added_and_removed(tmp_path):
    """`--category dog` against `--category person` diffed as images added and removed only; the
    selection that chose them is now named (the trial's case)."""
    out = {}
    for cat in ("dog", "person"):
        cfg = GenerateConfig(source=SourceConfig(categories=(cat,)), sampling=SAMPLING, output=str(tmp_path / cat))
        generate(cfg, progress=False)
        out[cat] = str(tmp_path / cat)
    d = diff_stores(out["dog"], out["person"])
    assert d.selection == {"source.categories": [["dog"], ["person"]]} and d.added and not d.identical
    assert "selection source.categories: ['dog'] -> ['person']" in d.to_text()


def test_the_same_images_chosen_from_another_root_are_identical_and_the_root_is_reported(tmp_path, sample_photos):
    """A copy of a folder elsewhere makes the same dataset version: identical (exit 0), the root a
    selection line, never a difference of the data."""
    for name in ("here", "elsewhere"):
        (tmp_path / name).mkdir()
        for p in sample_photos[:4]:
            shutil.copyfile(p, tmp_path / name / p.name)
        make(tmp_path / name, tmp_path / f"{name}.zarr", 0.25)
    res = CliRunner().invoke(app, ["diff", str(tmp_path / "here.zarr"), str(tmp_path / "elsewhere.zarr")])
    assert res.exit_code == 0, res.output
    assert "identical: same dataset version" in res.output
    assert f"selection source.root: {tmp_path / 'here'} -> {tmp_path / 'elsewhere'}" in res.output


def test_diff_never_calls_a_damaged_store_the_same_stored_arrays(tmp_path, sample_photos):
    """diff reads manifests: with a chunk of B deleted it said "identical: same dataset version, same
    stored arrays". It names what it compared (the digests recorded at commit) and where the chunks are
    checked; `validate` fails that store."""
    from homogen.validation import validate_dataset

    (tmp_path / "p").mkdir()
    for p in sample_photos[:4]:
        shutil.copyfile(p, tmp_path / "p" / p.name)
    make(tmp_path / "p", tmp_path / "a.zarr", 0.25)
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    chunk = next(p for p in sorted((tmp_path / "b.zarr" / "pairs").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    res = CliRunner().invoke(app, ["diff", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")])
    assert "same stored arrays" not in res.output
    assert "same array digests recorded at commit" in res.output and "homogen validate" in res.output, res.output
    assert validate_dataset(str(tmp_path / "b.zarr"), progress=False).passed is False
