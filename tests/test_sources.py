"""Sources: COCO layouts (pycocotools) and plain folders, splits, category filters, shards,
malformed annotations, credentials kept out of what is written."""

from __future__ import annotations

import json
import shutil

import pytest

from homogen.config import GenerateConfig, SourceConfig
from homogen.generate import generate
from homogen.sources import (
    SourceError,
    folder_image_id,
    hashed_split,
    list_images,
    make_shards,
    redact,
)

from conftest import SAMPLE, make_coco, read_store


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


def test_folder_image_ids_are_numeric_stems_or_a_stable_hash():
    assert folder_image_id("/x/000000000009.jpg") == 9
    h = folder_image_id("/x/holiday photo.png")
    assert h == folder_image_id("/elsewhere/holiday photo.jpg") and 0 <= h < 2**62


def test_two_files_with_one_id_are_refused(tmp_path, sample_photos):
    shutil.copyfile(sample_photos[0], tmp_path / "000000000009.jpg")
    shutil.copyfile(sample_photos[0], tmp_path / "9.png")
    with pytest.raises(SourceError, match="map to image id 9"):
        list_images(SourceConfig(root=str(tmp_path), kind="folder"))


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


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "is not valid JSON"),
        ("{\"images\": [", "is not valid JSON"),
        ("[1, 2, 3]", "has no 'images' list"),
        ("{\"annotations\": []}", "has no 'images' list"),
        ("{\"images\": [{\"file_name\": \"a.jpg\"}]}", "is malformed: missing field 'id'"),
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


@pytest.mark.parametrize(
    "url, expected",
    [
        ("s3://AKIAKEY:s3cr3t@bucket/coco", "s3://bucket/coco"),
        ("https://user:pw@example.org:8443/data/coco?X-Amz-Signature=abc", "https://example.org:8443/data/coco"),
        ("gs://bucket/coco", "gs://bucket/coco"),
        ("/data/coco", "/data/coco"),
        ("C:\\data\\coco", "C:\\data\\coco"),
    ],
)
def test_redact_removes_credentials_and_query(url, expected):
    assert redact(url) == expected


def test_annotations_written_by_this_suite_are_real_coco(tmp_path, sample_photos, sample_coco):
    """make_coco (used above) keeps the images' own annotations: pycocotools reads them back."""
    root = make_coco(tmp_path / "c", "train2017", sample_photos[:2], sample_coco)
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert {i["id"] for i in data["images"]} == {int(p.stem) for p in sample_photos[:2]}
    assert {a["image_id"] for a in data["annotations"]} <= {int(p.stem) for p in sample_photos[:2]}
