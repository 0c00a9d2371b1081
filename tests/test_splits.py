"""The three-way split: train, val and test never share a source image; val is carved out of the
training images by a stable hash of the id; the same ids always give the same splits."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, plan
from homogen.schema import SPLIT_CODES
from homogen.sources import list_images
from homogen.splits import hashed_split, training_split
from homogen.validate import validate_dataset

from helpers import SAMPLE, make_coco, read_store, with_sources


def ids_by_split(records) -> dict[str, set[int]]:
    out = {s: set() for s in SPLIT_CODES}
    for r in records:
        out[r.split].add(r.image_id)
    return out


def assert_disjoint(by_split: dict[str, set[int]]) -> None:
    names = list(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not by_split[a] & by_split[b], f"{a} and {b} share images {sorted(by_split[a] & by_split[b])}"


def test_coco_with_a_test_split_gives_three_disjoint_splits_and_val_only_from_train(
    tmp_path, sample_photos, sample_coco
):
    root = tmp_path / "coco"
    make_coco(root, "train2017", sample_photos[:24], sample_coco)
    make_coco(root, "val2017", sample_photos[24:], sample_coco)
    records = list_images(SourceConfig(root=str(root), test_split="val2017", val_fraction=0.25))
    by = ids_by_split(records)
    assert_disjoint(by)
    assert by["test"] == {int(p.stem) for p in sample_photos[24:]}  # test is exactly val2017
    assert by["train"] | by["val"] == {int(p.stem) for p in sample_photos[:24]}
    assert by["val"] and by["train"]
    assert by["val"] == {i for i in by["train"] | by["val"] if training_split(i, 0.25) == "val"}

    out = tmp_path / "ds.zarr"
    m = generate(
        GenerateConfig(
            source=SourceConfig(root=str(root), test_split="val2017", val_fraction=0.25),
            output=str(out),
            sampling=SamplingConfig(pairs_per_image=2),
        ),
        progress=False,
    )
    data = read_store(out)
    stored = {name: set(data["image_id"][data["split"] == code].tolist()) for name, code in SPLIT_CODES.items()}
    assert stored == by
    assert m["splits"] == {name: 2 * len(ids) for name, ids in by.items()}
    assert validate_dataset(str(out), progress=False).check("split_disjoint").passed is True


def test_hash_split_of_the_bundled_coco_sample_is_three_way_and_disjoint():
    records = list_images(SourceConfig(test_fraction=0.2, val_fraction=0.2))
    by = ids_by_split(records)
    assert_disjoint(by)
    assert all(by.values()) and sum(map(len, by.values())) == 32
    assert all(r.split == hashed_split(r.image_id, 0.2, 0.2) for r in records)


def test_folder_splits_are_disjoint_and_stay_put_when_images_are_added(tmp_path, sample_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_photos[::2]:
        shutil.copyfile(p, folder / p.name)
    source = SourceConfig(root=str(folder), kind="folder", test_fraction=0.25, val_fraction=0.25)
    before = {r.image_id: r.split for r in list_images(source)}
    for p in sample_photos[1::2]:  # new ids interleave with the old ones
        shutil.copyfile(p, folder / p.name)
    records = list_images(source)
    after = {r.image_id: r.split for r in records}
    assert {i: after[i] for i in before} == before
    by = ids_by_split(records)
    assert_disjoint(by)
    assert all(by.values())


def test_val_fraction_is_about_respected_with_and_without_a_hash_test_split():
    ids = range(40_000)
    hashed = [hashed_split(i, 0.1, 0.05) for i in ids]
    train_pool = len(ids) - hashed.count("test")
    assert abs(hashed.count("test") / len(ids) - 0.1) < 0.005  # 3.3 binomial standard deviations
    assert abs(hashed.count("val") / train_pool - 0.05) < 0.004  # ~3.5 standard deviations of 36k draws
    coco = [training_split(i, 0.05) for i in ids]
    assert abs(coco.count("val") / len(ids) - 0.05) < 0.004
    assert all(hashed_split(i, 0.1, 0.0) != "val" for i in range(2000))


def test_raising_val_fraction_moves_images_from_train_to_val_and_never_touches_test():
    ids = range(5_000)
    small = {i: hashed_split(i, 0.1, 0.05) for i in ids}
    large = {i: hashed_split(i, 0.1, 0.2) for i in ids}
    assert {i for i, s in small.items() if s == "test"} == {i for i, s in large.items() if s == "test"}
    assert {i for i, s in small.items() if s == "val"} < {i for i, s in large.items() if s == "val"}
    # the test split is the one made before val existed: hash < test_fraction
    assert all((s == "test") == (hashed_split(i, 0.1) == "test") for i, s in small.items())


def test_default_val_fraction_gives_the_bundled_sample_a_val_split():
    by = ids_by_split(list_images(SourceConfig()))
    assert_disjoint(by)
    assert len(by["val"]) >= 1 and len(by["test"]) >= 1


def test_val_fraction_is_part_of_the_version():
    assert plan(GenerateConfig(source=SourceConfig(val_fraction=0.1))).version != plan(GenerateConfig()).version


@pytest.mark.parametrize("bad", ["1", "-0.1"])
def test_impossible_val_fraction_is_refused_naming_it(bad, tmp_path):
    result = CliRunner().invoke(app, ["generate", "--val-fraction", bad, "-o", str(tmp_path / "ds.zarr")])
    assert result.exit_code == 2
    assert "val_fraction" in result.output
    assert not (tmp_path / "ds.zarr").exists()


def test_cli_val_fraction_reaches_the_store_and_info_shows_val_counts(tmp_path):
    out = str(tmp_path / "ds.zarr")
    gen = CliRunner().invoke(
        app, ["generate", "--max-images", "12", "--val-fraction", "0.3", "--pairs-per-image", "1", "-o", out]
    )
    assert gen.exit_code == 0, gen.output
    records = list_images(SourceConfig(root=str(SAMPLE), max_images=12, val_fraction=0.3))
    counts = {s: sum(r.split == s for r in records) for s in SPLIT_CODES}
    assert counts["val"] >= 1
    assert f"val {counts['val']}," in gen.output
    info = CliRunner().invoke(app, ["info", out])
    assert f"train {counts['train']}  val {counts['val']}  test {counts['test']}" in info.output
    data = read_store(out)
    assert int(np.count_nonzero(data["split"] == SPLIT_CODES["val"])) == counts["val"]


def test_flow_config_carries_val_fraction_into_generation():
    from homogen.flows.config import PipelineConfig

    config = PipelineConfig.model_validate({"generate": {"source": {"val_fraction": 0.2}}})
    assert config.generate.source.val_fraction == 0.2
    assert plan(config.generate).config.source.val_fraction == 0.2


# ------------------------------------------------------------------- the same bytes, one split


def _name_in_another_split(folder_split: str, test_fraction: float) -> str:
    from homogen.sources import folder_image_id

    for k in range(1000):
        name = f"copy{k}.jpg"
        if hashed_split(folder_image_id(name), test_fraction, 0.05) != folder_split:
            return name
    raise AssertionError("no name hashes into another split")


@pytest.mark.parametrize("how", ["copy", "symlink"])
def test_a_photo_under_two_names_lands_in_one_split(tmp_path, sample_photos, how):
    """A copy or a symlink of a photo under a name whose id hashes into another split: every copy
    takes the split of the lowest id, the manifest records the group, and validate passes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_photos[:6]:
        shutil.copyfile(p, folder / p.name)
    first = sample_photos[0]
    cfg = GenerateConfig(
        source=SourceConfig(root=str(folder), kind="folder", test_fraction=0.5), output=str(tmp_path / "o.zarr")
    )
    split_of_first = hashed_split(int(first.stem), 0.5, 0.05)
    twin = folder / _name_in_another_split(split_of_first, 0.5)
    if how == "copy":
        shutil.copyfile(first, twin)
    else:
        twin.symlink_to(folder / first.name)
    generate(cfg, progress=False)
    m = with_sources(tmp_path / "o.zarr")
    files = m["source"]["files"]
    group = m["source"]["same_bytes"]
    assert len(group) == 1 and group[0][0] == int(first.stem) and len(group[0]) == 2
    split_by_id = dict(zip(files["image_id"], files["split"]))
    assert {split_by_id[i] for i in group[0]} == {split_of_first}
    arrays = read_store(tmp_path / "o.zarr")
    stored = {int(i): int(s) for i, s in zip(arrays["image_id"], arrays["split"])}
    assert {stored[i] for i in group[0]} == {SPLIT_CODES[split_of_first]}
    report = validate_dataset(str(tmp_path / "o.zarr"), progress=False)
    assert report.passed, report.to_markdown()


def test_coco_names_in_two_spellings_are_one_file_and_refused_as_a_duplicate(tmp_path, sample_photos, sample_coco):
    from homogen.sources import SourceError

    root = make_coco(tmp_path / "coco", "train2017", sample_photos[:1], sample_coco)
    ann = root / "annotations" / "instances_train2017.json"
    data = __import__("json").loads(ann.read_text())
    name = sample_photos[0].name
    data["images"].append({**data["images"][0], "id": 99, "file_name": f".//{name}"})
    data["images"].append({**data["images"][0], "id": 98, "file_name": f"./{name}"})
    ann.write_text(__import__("json").dumps(data))
    with pytest.raises(SourceError, match=r"images\[1\]: file_name '\.//.*' is also the file of entry 0.*images\[2\]"):
        list_images(SourceConfig(root=str(root)))


def test_coco_files_with_the_same_bytes_under_two_names_share_a_split(tmp_path, sample_photos, sample_coco):
    import json

    root = make_coco(tmp_path / "coco", "train2017", sample_photos[:4], sample_coco)
    first = sample_photos[0]
    shutil.copyfile(first, root / "train2017" / "again.jpg")
    ann = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    base = int(first.stem)
    other = next(i for i in range(10**6, 10**6 + 1000) if hashed_split(i, 0.5, 0.05) != hashed_split(base, 0.5, 0.05))
    data["images"].append({**data["images"][0], "id": other, "file_name": "again.jpg"})
    ann.write_text(json.dumps(data))
    p = plan(GenerateConfig(source=SourceConfig(root=str(root), test_fraction=0.5)))
    assert p.same_bytes == [[base, other]]
    splits = {r.image_id: r.split for s in p.shards for r in s.records}
    assert splits[other] == splits[base] == hashed_split(base, 0.5, 0.05)
