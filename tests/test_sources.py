"""Sources: COCO layouts (pycocotools) and plain folders, splits, category filters, shards,
malformed annotations, credentials kept out of what is written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from homogen.config import GenerateConfig, SourceConfig
from homogen.generate import generate
from homogen.sources import (
    SourceError,
    folder_image_id,
    hashed_split,
    list_images,
    make_shards,
)

from helpers import SAMPLE, make_coco, read_store


def test_bundled_sample_lists_as_coco_in_id_order(sample_photos):
    records = list_images(SourceConfig())
    assert [r.image_id for r in records] == sorted(int(p.stem) for p in sample_photos)
    assert all(r.path.endswith(f"train2017/{r.image_id:012d}.jpg") for r in records)
    assert {r.split for r in records} <= {"train", "val", "test"}


def test_coco_with_test_split_maps_train_to_train_and_val_to_test(tmp_path, sample_photos, sample_coco):
    root = tmp_path / "coco"
    make_coco(root, "train2017", sample_photos[:6], sample_coco)
    make_coco(root, "val2017", sample_photos[6:10], sample_coco)
    records = list_images(SourceConfig(root=str(root), test_split="val2017", val_fraction=0.0))
    split_of = {r.image_id: r.split for r in records}
    assert split_of == {
        **{int(p.stem): "train" for p in sample_photos[:6]},
        **{int(p.stem): "test" for p in sample_photos[6:10]},
    }
    assert all(f"/{'train2017' if r.split == 'train' else 'val2017'}/" in r.path for r in records)

    out = tmp_path / "out.zarr"
    manifest = generate(
        GenerateConfig(source=SourceConfig(root=str(root), test_split="val2017", val_fraction=0.0), output=str(out)),
        progress=False,
    )
    data = read_store(out)
    assert manifest["splits"] == {"train": 24, "test": 16, "val": 0}
    train_ids = set(data["image_id"][data["split"] == 0].tolist())
    test_ids = set(data["image_id"][data["split"] == 1].tolist())
    assert train_ids == {int(p.stem) for p in sample_photos[:6]} and not train_ids & test_ids


def test_image_in_both_coco_splits_is_refused(tmp_path, sample_photos, sample_coco):
    root = tmp_path / "coco"
    make_coco(root, "train2017", sample_photos[:3], sample_coco)
    make_coco(root, "val2017", sample_photos[2:4], sample_coco)
    with pytest.raises(SourceError, match="1 image ids are in both train2017 and val2017"):
        list_images(SourceConfig(root=str(root), test_split="val2017"))


def test_folder_split_is_a_stable_hash_of_the_id_not_the_position(tmp_path, sample_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_photos[::2]:
        shutil.copyfile(p, folder / p.name)
    cfg = SourceConfig(root=str(folder), kind="folder", test_fraction=0.4)
    before = {r.image_id: r.split for r in list_images(cfg)}
    assert before == {i: hashed_split(i, 0.4, cfg.val_fraction) for i in before}
    assert {"train", "test"} <= set(before.values())
    for p in sample_photos[1::2]:  # new images interleave with the old ones in id order
        shutil.copyfile(p, folder / p.name)
    after = {r.image_id: r.split for r in list_images(cfg)}
    assert len(after) == 32
    assert {i: after[i] for i in before} == before


def test_hashed_split_takes_about_the_asked_share():
    splits = [hashed_split(i, 0.1) for i in range(20000)]
    assert 0.09 < splits.count("test") / len(splits) < 0.11
    assert all(hashed_split(i, 0.0) == "train" for i in range(1000))


def test_folder_image_ids_are_numeric_stems_or_a_stable_hash_of_the_relative_path():
    assert folder_image_id("000000000009.jpg") == 9
    h = folder_image_id("holiday photo.png")
    assert h == folder_image_id("holiday photo.jpg") and 0 <= h < 2**62
    assert folder_image_id("2019/holiday photo.png") != h


def _touch_tree(root, relpaths, photo):
    for rel in relpaths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, root / rel)


@pytest.mark.parametrize(
    "files",
    [
        ["a.bmp", "a.tif"],
        ["DCIM/100/IMG_0001.jpg", "DCIM/101/IMG_0001.jpg"],
        ["000000000009.jpg", "9.png"],
        ["2019/000000000009.jpg", "2020/000000000009.jpg", "000000000010.jpg"],
    ],
)
def test_files_sharing_a_stem_or_a_number_get_distinct_stable_ids(tmp_path, sample_photos, files):
    _touch_tree(tmp_path, files, sample_photos[0])
    records = list_images(SourceConfig(root=str(tmp_path), kind="folder"))
    by_path = {str(Path(r.path).relative_to(tmp_path).as_posix()): r.image_id for r in records}
    assert sorted(by_path) == sorted(files) and len(set(by_path.values())) == len(files)
    again = {
        str(Path(r.path).relative_to(tmp_path).as_posix()): r.image_id
        for r in list_images(SourceConfig(root=str(tmp_path), kind="folder"))
    }
    assert again == by_path


def test_flat_folders_keep_the_ids_of_earlier_versions(tmp_path, sample_photos):
    """Numeric stems are the id; other stems a SHA-256 hash of the stem (as before nested folders
    had their own ids), so the splits of existing flat folders do not move."""
    _touch_tree(tmp_path, ["000000000036.jpg", "holiday photo.jpg"], sample_photos[0])
    ids = {Path(r.path).name: r.image_id for r in list_images(SourceConfig(root=str(tmp_path), kind="folder"))}
    old_hash = int.from_bytes(hashlib.sha256(b"holiday photo").digest()[:8], "big") >> 2
    assert ids == {"000000000036.jpg": 36, "holiday photo.jpg": old_hash}


def test_category_filter_keeps_exactly_the_images_with_those_categories(sample_coco):
    cat_id = {c["name"]: c["id"] for c in sample_coco["categories"]}
    images_with = lambda name: {a["image_id"] for a in sample_coco["annotations"] if a["category_id"] == cat_id[name]}  # noqa: E731
    dogs = {r.image_id for r in list_images(SourceConfig(categories=("dog",)))}
    assert dogs == images_with("dog") and 0 < len(dogs) < 32
    both = {r.image_id for r in list_images(SourceConfig(categories=("dog", "person")))}
    assert both == images_with("dog") | images_with("person")


def test_unknown_category_is_refused_by_name():
    with pytest.raises(SourceError, match=r"unknown COCO categories \['unicorn'\]"):
        list_images(SourceConfig(categories=("dog", "unicorn")))


def _write_annotations(root, data) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann = root / "annotations" / "instances_train2017.json"
    ann.write_text(json.dumps(data))
    return ann


@pytest.mark.parametrize(
    "entries, fragment",
    [
        (
            [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
            "images[1]: id 1 is also the id of entry 0",
        ),
        (
            [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}],
            "images[1]: file_name 'a.jpg' is also the file of entry 0",
        ),
        ([{"id": "abc", "file_name": "a.jpg"}], "images[0]: id 'abc' is not an integer"),
        ([{"id": float("nan"), "file_name": "a.jpg"}], "images[0]: id nan is not an integer"),
        ([{"id": 1.5, "file_name": "a.jpg"}], "images[0]: id 1.5 is not an integer"),
        ([{"id": True, "file_name": "a.jpg"}], "images[0]: id True is not an integer"),
        ([{"id": -5, "file_name": "a.jpg"}], "images[0]: id -5 is out of range"),
        ([{"id": 2**70, "file_name": "a.jpg"}], f"images[0]: id {2**70} is out of range"),
        ([{"file_name": "a.jpg"}], "images[0]: no 'id'"),
        ([{"id": 3}], "images[0]: no 'file_name'"),
        ([{"id": 3, "file_name": None}], "images[0]: file_name None is not a file name"),
        ([{"id": 3, "file_name": 42}], "images[0]: file_name 42 is not a file name"),
        ([{"id": 3, "file_name": "../../secret.jpg"}], "leaves the split folder"),
        ([{"id": 3, "file_name": "/etc/hosts"}], "leaves the split folder"),
        (["a.jpg"], "images[0]: not an object (str)"),
    ],
)
def test_bad_coco_image_entries_are_refused_by_index_and_reason_before_any_output(tmp_path, entries, fragment):
    good = [{"id": 100 + i, "file_name": f"good{i}.jpg"} for i in range(3)]
    ann = _write_annotations(tmp_path / "coco", {"images": entries + good})
    out = tmp_path / "out.zarr"
    with pytest.raises(SourceError) as err:
        generate(
            GenerateConfig(source=SourceConfig(root=str(tmp_path / "coco"), kind="coco"), output=str(out)),
            progress=False,
        )
    assert fragment in str(err.value) and str(ann) in str(err.value)
    assert "1 unusable image entries" in str(err.value)
    assert not out.exists()


def test_every_bad_entry_is_counted_and_the_first_ten_named(tmp_path):
    entries = [{"id": -i - 1, "file_name": f"{i}.jpg"} for i in range(25)]
    _write_annotations(tmp_path, {"images": entries})
    with pytest.raises(SourceError) as err:
        list_images(SourceConfig(root=str(tmp_path), kind="coco"))
    msg = str(err.value)
    assert "25 unusable image entries" in msg and "images[9]:" in msg and "images[10]:" not in msg


def test_two_categories_with_one_name_are_both_selected_by_that_name(tmp_path, sample_photos, sample_coco):
    """COCO files merged from two sources can carry one name twice (ids 1 and 91, say): the name
    selects the images of both categories, never only one of them."""
    root = make_coco(tmp_path / "coco", "train2017", sample_photos[:8], sample_coco)
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    dog = next(c for c in data["categories"] if c["name"] == "dog")
    person = next(c for c in data["categories"] if c["name"] == "person")
    person_images = {a["image_id"] for a in data["annotations"] if a["category_id"] == person["id"]}
    dog_images = {a["image_id"] for a in data["annotations"] if a["category_id"] == dog["id"]}
    person["name"] = "dog"  # now two categories are called "dog"
    ann.write_text(json.dumps(data))
    chosen = {r.image_id for r in list_images(SourceConfig(root=str(root), categories=("dog",)))}
    assert chosen == dog_images | person_images and person_images - dog_images


def test_a_category_filter_that_matches_no_image_is_an_error(tmp_path, sample_photos, sample_coco):
    root = make_coco(tmp_path / "coco", "train2017", sample_photos[:2], sample_coco)
    present = {
        a["category_id"]
        for a in json.loads((root / "annotations" / "instances_train2017.json").read_text())["annotations"]
    }
    absent = next(c["name"] for c in sample_coco["categories"] if c["id"] not in present)
    with pytest.raises(SourceError, match=rf"no image of .* has the categories \['{absent}'\]"):
        list_images(SourceConfig(root=str(root), categories=(absent,)))


def test_annotations_listing_no_images_are_an_error(tmp_path):
    _write_annotations(tmp_path, {"images": [], "annotations": [], "categories": []})
    with pytest.raises(SourceError, match="lists no images"):
        list_images(SourceConfig(root=str(tmp_path), kind="coco"))


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "is not valid JSON"),
        ('{"images": [', "is not valid JSON"),
        ("[1, 2, 3]", "has no 'images' list"),
        ('{"annotations": []}', "has no 'images' list"),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1}]}',
            "is malformed: missing field 'image_id'",
        ),
    ],
)
def test_malformed_annotations_raise_a_source_error_naming_the_file(tmp_path, content, fragment):
    (tmp_path / "annotations").mkdir()
    ann = tmp_path / "annotations" / "instances_train2017.json"
    ann.write_text(content)
    with pytest.raises(SourceError) as err:
        list_images(SourceConfig(root=str(tmp_path), kind="coco"))
    assert fragment in str(err.value) and str(ann) in str(err.value)


def test_missing_annotations_and_missing_folders_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="instances_val2017.json not found"):
        list_images(SourceConfig(root=str(SAMPLE), test_split="val2017"))
    with pytest.raises(SourceError, match="does not exist"):
        list_images(SourceConfig(root=str(tmp_path / "nowhere"), kind="folder"))
    with pytest.raises(SourceError, match="no images"):
        list_images(SourceConfig(root=str(tmp_path), kind="folder"))


def test_shards_are_fixed_runs_in_stable_order():
    records = list_images(SourceConfig())
    shards = make_shards(records, 10)
    assert [len(s.records) for s in shards] == [10, 10, 10, 2]
    assert [r for s in shards for r in s.records] == records
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]
    assert make_shards(list_images(SourceConfig()), 10) == shards
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        make_shards(records, 0)


def test_annotations_written_by_this_suite_are_real_coco(tmp_path, sample_photos, sample_coco):
    """make_coco (used above) keeps the images' own annotations: pycocotools reads them back."""
    root = make_coco(tmp_path / "c", "train2017", sample_photos[:2], sample_coco)
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert {i["id"] for i in data["images"]} == {int(p.stem) for p in sample_photos[:2]}
    assert {a["image_id"] for a in data["annotations"]} <= {int(p.stem) for p in sample_photos[:2]}


def test_the_command_line_refuses_bad_coco_entries_in_one_line_before_any_output(tmp_path):
    from typer.testing import CliRunner

    from homogen.cli import app

    _write_annotations(tmp_path / "coco", {"images": [{"id": 1.5, "file_name": "a.jpg"}]})
    out = tmp_path / "out.zarr"
    res = CliRunner().invoke(app, ["generate", "--source", str(tmp_path / "coco"), "--output", str(out)])
    assert res.exit_code == 2 and "images[0]: id 1.5 is not an integer" in res.output
    assert "Traceback" not in res.output and not out.exists() and not (tmp_path / "out.zarr.lock").exists()


# ------------------------------------------------- entries that crashed generation, now one line


def _cli_generate(*args: str):
    from typer.testing import CliRunner

    from homogen.cli import app

    return CliRunner().invoke(app, ["generate", *args])


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize(
    "file_name, fragment",
    [
        ("http://example.com/a.jpg", "is a URL"),
        ("s3://bucket/a.jpg", "is a URL"),
        ("file:///etc/passwd", "is a URL"),
        ("a.jpg?X-Amz-Signature=s3cr3tsig&X-Amz-Credential=AKIAXX", "query string"),
        ("a.jpg#frag", "query string"),
    ],
)
def test_a_coco_file_name_that_is_a_url_is_refused_before_any_output_on_every_run(tmp_path, file_name, fragment):
    _write_annotations(tmp_path / "coco", {"images": [{"id": 1, "file_name": file_name}]})
    out = tmp_path / "out.zarr"
    for _ in range(2):  # a re-run says the same, it never crashes mid-generation
        line = _one_error_line(_cli_generate("--source", str(tmp_path / "coco"), "--output", str(out)))
        assert "images[0]" in line and fragment in line and not out.exists()
        assert "s3cr3tsig" not in line and "AKIAXX" not in line


def test_category_annotations_of_images_not_listed_are_one_line(tmp_path):
    _write_annotations(
        tmp_path / "coco",
        {
            "images": [{"id": 1, "file_name": "a.jpg"}],
            "annotations": [{"id": 5, "image_id": 77, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "dog"}],
        },
    )
    line = _one_error_line(
        _cli_generate("--source", str(tmp_path / "coco"), "--category", "dog", "-o", str(tmp_path / "o.zarr"))
    )
    assert "not in its 'images' list (first: [77])" in line


def test_a_folder_file_name_that_is_not_utf8_is_one_line(tmp_path, sample_photos):
    import os

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(sample_photos[0], folder / sample_photos[0].name)
    bad = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    shutil.copyfile(sample_photos[1], bad)
    line = _one_error_line(_cli_generate("--source", str(folder), "--kind", "folder", "-o", str(tmp_path / "o.zarr")))
    assert "caf\\xe9.jpg is not valid UTF-8" in line and "rename it" in line


def test_the_readme_coco_example_on_a_missing_folder_says_the_folder_is_missing(tmp_path):
    missing = tmp_path / "data" / "coco"
    line = _one_error_line(
        _cli_generate(
            "--source", str(missing), "--test-split", "val2017", "--category", "person", "-o", str(tmp_path / "o.zarr")
        )
    )
    assert f"source {missing} does not exist" in line and "--category" not in line


@pytest.mark.timeout(60)
def test_an_annotations_file_that_is_a_fifo_is_refused_without_reading_it(tmp_path):
    import os

    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    os.mkfifo(tmp_path / "coco" / "annotations" / "instances_train2017.json")
    line = _one_error_line(
        _cli_generate("--source", str(tmp_path / "coco"), "--kind", "coco", "-o", str(tmp_path / "o.zarr"))
    )
    assert "is a FIFO (named pipe), not a regular file" in line
