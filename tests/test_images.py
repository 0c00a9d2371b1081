"""Decoding: the reduced decode of real photographs, and every kind of bad image refused with a
reason, quarantined by generation, which goes on."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
from PIL import Image

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.images import BadImage, decode_gray, load_gray

from conftest import BAD_KINDS, BAD_SUFFIX, bad_image_bytes, encode, read_store


@pytest.fixture(scope="module")
def jpeg_bytes(sample_photos) -> bytes:
    return sample_photos[0].read_bytes()


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_image_is_refused_with_its_reason(kind, jpeg_bytes, rgb_photo):
    with pytest.raises(BadImage) as err:
        decode_gray(bad_image_bytes(kind, jpeg_bytes, rgb_photo), 320, 240, min_side=128)
    assert BAD_KINDS[kind] in err.value.reason


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImage, match="missing file"):
        load_gray(str(tmp_path / "absent.jpg"), 320, 240)


@pytest.mark.parametrize("mode", ["P", "L", "RGB"])
def test_palette_gray_and_rgb_pngs_are_accepted(mode, rgb_photo):
    im = Image.fromarray(rgb_photo).convert(mode)
    gray = decode_gray(encode(im, "PNG"), 320, 240, min_side=128)
    assert gray.shape == (240, 320) and gray.dtype == np.uint8
    # the same picture as the JPEG it came from, to within the palette's quantisation
    ref = cv2.resize(cv2.cvtColor(rgb_photo, cv2.COLOR_RGB2GRAY), (320, 240), interpolation=cv2.INTER_AREA)
    assert np.abs(gray.astype(np.int16) - ref).mean() < 8


def test_a_640x480_jpeg_decodes_straight_to_320x240(sample_photos):
    photo = next(p for p in sample_photos if Image.open(p).size == (640, 480))
    data = photo.read_bytes()
    reduced = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    assert np.array_equal(decode_gray(data, 320, 240), reduced)
    # and it is the recipe's frame: full decode + area resize, to within JPEG's DCT-scaling rounding
    full = cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE), (320, 240),
                      interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(np.int16) - full).mean() < 1.0


def test_a_6000x6000_jpeg_decodes_reduced_in_bounded_memory(tmp_path, rgb_photo):
    """A 36-megapixel JPEG is decoded at 1/8 scale: a few MB at peak, where a full grayscale
    decode takes 36 MB (108 MB in colour). OpenCV's output buffers are numpy's, so tracemalloc
    sees them."""
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), cv2.resize(rgb_photo, (6000, 6000), interpolation=cv2.INTER_LINEAR))
    data = big.read_bytes()
    tracemalloc.start()
    try:
        frame = decode_gray(data, 320, 240, min_side=128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frame.shape == (240, 320)
    assert peak < 4e6, f"decoding a 6000x6000 JPEG peaked at {peak / 1e6:.1f} MB"


def test_generation_quarantines_every_bad_image_and_goes_on(tmp_path, sample_photos, jpeg_bytes, rgb_photo):
    src = tmp_path / "src"
    src.mkdir()
    good = sample_photos[:3]
    for p in good:
        (src / p.name).write_bytes(p.read_bytes())
    bad_ids = {}
    for n, kind in enumerate(sorted(BAD_KINDS)):
        image_id = 900000 + n
        (src / f"{image_id}{BAD_SUFFIX[kind]}").write_bytes(bad_image_bytes(kind, jpeg_bytes, rgb_photo))
        bad_ids[image_id] = kind
    cfg = GenerateConfig(source=SourceConfig(root=str(src), kind="folder", test_fraction=0.0),
                         output=str(tmp_path / "out.zarr"), shard_size=4)
    manifest = generate(cfg, progress=False)

    reasons = {q["image_id"]: q["reason"] for q in manifest["quarantine"]}
    assert set(reasons) == set(bad_ids)
    for image_id, kind in bad_ids.items():
        assert BAD_KINDS[kind] in reasons[image_id]
    assert all(q["path"].endswith(tuple(BAD_SUFFIX.values())) for q in manifest["quarantine"])
    assert manifest["num_images"] == len(good)
    assert manifest["num_pairs"] == 4 * len(good) == sum(s["pairs"] for s in manifest["shards"])
    data = read_store(cfg.output)
    assert sorted(set(data["image_id"].tolist())) == sorted(int(p.stem) for p in good)


def test_missing_images_named_by_annotations_are_quarantined(tmp_path, sample_photos, sample_coco):
    from conftest import make_coco

    absent = {"id": 999999, "file_name": "000000999999.jpg", "width": 640, "height": 480}
    root = make_coco(tmp_path / "coco", "train2017", sample_photos[:4], sample_coco, extra_images=[absent])
    manifest = generate(GenerateConfig(source=SourceConfig(root=str(root)), output=str(tmp_path / "o.zarr")),
                        progress=False)
    assert [(q["image_id"], q["reason"]) for q in manifest["quarantine"]] == [
        (999999, "missing file: the source lists it but it does not exist")
    ]
    assert manifest["num_images"] == 4 and manifest["num_pairs"] == 16


def test_small_images_are_refused_only_below_the_patch(rgb_photo):
    """An image smaller than the 320x240 frame but not than the patch is resized up and used."""
    ok = encode(Image.fromarray(rgb_photo).resize((200, 150)), "JPEG")
    assert decode_gray(ok, 320, 240, min_side=128).shape == (240, 320)
    with pytest.raises(BadImage, match="too small: 200x127"):
        decode_gray(encode(Image.fromarray(rgb_photo).resize((200, 127)), "JPEG"), 320, 240, min_side=128)


def test_sampling_defaults_refuse_nothing_from_the_bundled_sample(sample_photos):
    cfg = SamplingConfig()
    for p in sample_photos:
        assert load_gray(str(p), cfg.image_width, cfg.image_height, min_side=cfg.patch_size).shape == (240, 320)
