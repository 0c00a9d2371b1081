"""What a new user's first trial of the command line ran into: options that a source ignores,
outputs that cannot be what they claim, symlinked folders, re-runs, the picture and the messages."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SourceConfig
from homogen.generate import generate
from homogen.render import sample_grid
from homogen.sources import SourceError, list_images
from homogen.stores import open_dataset


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(
    "option, value",
    [("--category", "person"), ("--test-split", "val2017"), ("--train-split", "nope")],
)
@pytest.mark.parametrize("kind", ["auto", "folder"])
def test_a_coco_only_option_on_an_image_folder_is_refused_before_anything_is_written(
    tmp_path, photo_folder, option, value, kind
):
    out = tmp_path / "out.zarr"
    res = run("generate", "--source", str(photo_folder), "--kind", kind, option, value, "-o", str(out))
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and option in line and "COCO source" in line and "drop it" in line
    assert not out.exists() and not (tmp_path / "out.zarr.lock").exists()


def test_a_library_config_with_categories_on_a_folder_names_the_field_and_the_flag(photo_folder):
    with pytest.raises(SourceError, match=r"source\.categories \(--category\) needs a COCO source"):
        list_images(SourceConfig(root=str(photo_folder), categories=("person",)))
    # the default train split is no choice of the user's: accepted for a folder
    assert len(list_images(SourceConfig(root=str(photo_folder), train_split="train2017", max_images=2))) == 2


def test_a_zarr_output_that_is_an_existing_file_is_refused_in_one_line_naming_it(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    res = run("generate", "--max-images", "2", "-o", str(afile))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1
    assert str(afile) in res.output and "is an existing file" in res.output
    assert afile.read_text() == "not a store" and not (tmp_path / "afile.lock").exists()


@pytest.mark.parametrize("name, fmt", [("x.zarr", "hdf5"), ("x.h5", "zarr"), ("x.hdf5", "zarr")])
def test_an_output_suffix_that_contradicts_the_format_is_refused_naming_both(tmp_path, name, fmt):
    res = run("generate", "--max-images", "2", "-o", str(tmp_path / name), "--format", fmt)
    assert res.exit_code == 2, res.output
    assert name in res.output and f"--format {fmt}" in res.output
    assert not (tmp_path / name).exists()
    # a plain name (no .zarr/.h5/.hdf5 suffix) takes the format given
    plain = tmp_path / "plain"
    generate(GenerateConfig(source=SourceConfig(max_images=2), output=str(plain), format=fmt), progress=False)
    assert open_dataset(str(plain)).manifest["format"] == fmt


def test_a_folder_source_follows_symlinked_subfolders_and_survives_a_link_cycle(tmp_path, sample_photos):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for p in sample_photos[:3]:
        shutil.copyfile(p, elsewhere / p.name)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(elsewhere, root / "train2017")
    os.symlink(root, elsewhere / "loop")  # a cycle: root/train2017/loop -> root
    records = list_images(SourceConfig(root=str(root)))
    assert sorted(r.image_id for r in records) == sorted(int(p.stem) for p in sample_photos[:3])
    assert all("/train2017/" in r.path and "/loop/" not in r.path for r in records)


def test_rerunning_generate_into_a_complete_store_with_another_shard_size_says_nothing_to_do(tmp_path):
    out = tmp_path / "done.zarr"
    first = run("generate", "--max-images", "8", "--shard-size", "4", "-o", str(out))
    assert first.exit_code == 0, first.output
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = run("generate", "--max-images", "8", "--shard-size", "2", "-o", str(out))
    assert again.exit_code == 0, again.output
    assert "already complete" in again.output and "nothing to do" in again.output
    assert "shard/s" not in again.output and "from 8 images" not in again.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_info_shows_the_real_chunk_length_when_the_requested_one_is_clamped(tmp_path, suffix):
    out = tmp_path / f"small{suffix}"
    generate(GenerateConfig(source=SourceConfig(max_images=4), output=str(out), chunk_size=100_000_000), progress=False)
    chunk = open_dataset(str(out)).chunk_len
    assert chunk == 16  # 4 images x 4 pairs: the chunk cannot be longer than the array
    res = run("info", str(out))
    assert res.exit_code == 0, res.output
    assert f"{chunk} pairs/chunk" in res.output and "100000000" not in res.output


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_info_says_where_the_per_image_table_is_and_json_sources_prints_it(tmp_path, suffix):
    """`info` names the table's array and size (it said "no digest per image" once the table left
    the manifest); `--json` prints the header, `--json --sources` the table too."""
    out = tmp_path / f"small{suffix}"
    generate(GenerateConfig(source=SourceConfig(max_images=4), output=str(out)), progress=False)
    table = open_dataset(str(out)).manifest["source"]["table"]
    res = run("info", str(out))
    assert res.exit_code == 0, res.output
    assert (
        "4 images" in res.output
        and f"per-image table in the array source_table, {table['bytes']:,} bytes" in res.output
    )
    header = json.loads(run("info", str(out), "--json").output)
    assert header["source"]["table"] == table and "files" not in header["source"]
    full = json.loads(run("info", str(out), "--sources").output)  # --sources implies --json
    assert (
        full["source"]["files"] == open_dataset(str(out)).sources["files"] and len(full["source"]["files"]["name"]) == 4
    )


def test_generate_says_when_a_split_is_empty_and_what_that_stops(tmp_path):
    """4 bundled images give no val pairs: training would refuse the store later; generate says so now."""
    res = run("generate", "--max-images", "4", "-o", str(tmp_path / "four.zarr"))
    assert res.exit_code == 0, res.output
    splits = open_dataset(str(tmp_path / "four.zarr")).manifest["splits"]
    assert splits["val"] == 0 and splits["train"] and splits["test"]
    notes = [line for line in res.output.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: no val pairs, so training cannot select a model without looking at the test pairs, and refuses "
        "the store: use more images, or change --val-fraction"
    ], res.output
    many = run("generate", "--max-images", "32", "-o", str(tmp_path / "all.zarr"))
    assert many.exit_code == 0 and "note: " not in many.output, many.output


def test_show_by_default_draws_pairs_of_different_images_and_says_which(small_store, tmp_path):
    path, _ = small_store
    png = tmp_path / "grid.png"
    res = run("show", str(path), "-o", str(png), "--n", "8")
    assert res.exit_code == 0, res.output
    rows = [int(r) for r in res.output.split("rows ")[1].rstrip(")\n").split(", ")]
    ds = open_dataset(str(path))
    assert len(rows) == 8 and len({int(ds.read(r, r + 1)["image_id"][0]) for r in rows}) == 8
    assert np.array_equal(cv2.imread(str(png), cv2.IMREAD_COLOR), sample_grid(ds, indices=rows))


def test_show_with_start_draws_consecutive_pairs(small_store, tmp_path):
    path, _ = small_store
    res = run("show", str(path), "-o", str(tmp_path / "g.png"), "--n", "3", "--start", "5")
    assert res.exit_code == 0, res.output
    assert "rows 5, 6, 7)" in res.output


def test_cli_errors_name_the_flag_beside_the_keyword(tmp_path, small_store):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run("generate", "--source", str(empty), "--kind", "coco", "-o", str(tmp_path / "o.zarr"))
    assert res.exit_code == 2 and "kind='folder' (--kind folder)" in res.output, res.output
    res = run("generate", "--source", str(tmp_path / "nowhere"), "--kind", "coco", "-o", str(tmp_path / "o.zarr"))
    assert res.exit_code == 2 and "nowhere does not exist: check source.root (--source)" in res.output, res.output
    res = run("generate", "--source", str(empty), "-o", str(tmp_path / "o.zarr"))
    assert res.exit_code == 2 and "check source.root (--source)" in res.output, res.output
    path, _ = small_store
    res = run("validate", str(path))
    assert "regenerate=k (--regenerate K)" in res.output, res.output
    res = run("validate", str(path), "--regenerate", "2", "--source-root", str(empty))
    assert res.exit_code == 1 and "source_root= (--source-root ROOT)" in res.output, res.output
