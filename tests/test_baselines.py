"""Classical baselines on real photographs: accuracy, direction, failures, evaluation table."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from homogen.model.baselines import (
    BASELINES,
    ecc,
    identity,
    offsets_from_homography,
    orb_ransac,
    sift_ransac,
)
from homogen.model.data import load_split
from homogen.model.evaluate import evaluate_methods, format_table
from homogen.model.metrics import mace
from homogen.sampling import patch_homography

from helpers import PHOTOS

P = 128


def make_pair(photo: Path, x: int, y: int, offsets, patch: int = P):
    """One pair by the recipe of CONVENTIONS.md, written out here independently of homogen.generate."""
    img = cv2.resize(cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE), (320, 240), interpolation=cv2.INTER_AREA)
    c = np.float32([[x, y], [x + patch, y], [x + patch, y + patch], [x, y + patch]])
    off = np.asarray(offsets, np.float32).reshape(4, 2)
    h_ab = cv2.getPerspectiveTransform(c, c + off)
    warped = cv2.warpPerspective(img, np.linalg.inv(h_ab), (320, 240))
    a = img[y : y + patch, x : x + patch].copy()
    b = warped[y : y + patch, x : x + patch].copy()
    return a, b, off.reshape(8)


OFFSETS = [[-20, 12, 25, -7, 14, 22, -9, -26], [11, -28, -17, 5, 30, 9, -4, 18], [-5, -5, 8, 19, -22, -13, 27, 3]]


@pytest.fixture(scope="module")
def pairs():
    return [make_pair(PHOTOS[i], 60 + 17 * k, 40 + 11 * k, OFFSETS[k]) for k, i in enumerate((4, 5, 8))]


def test_recipe_pair_satisfies_b_equals_a_of_hq(pairs):
    # The test helper itself: B(q) = A(H q) on the interior (photometric check of the direction).
    a, b, off = pairs[0]
    h = patch_homography(off, P)
    a_at_hq = cv2.warpPerspective(a, h, (P, P), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
    a_at_hinv_q = cv2.warpPerspective(a, np.linalg.inv(h), (P, P), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR)
    inner = (slice(40, 88), slice(40, 88))
    good = np.abs(a_at_hq[inner].astype(float) - b[inner]).mean()
    bad = np.abs(a_at_hinv_q[inner].astype(float) - b[inner]).mean()
    assert good < 6 and bad > 3 * good


def test_homography_offsets_round_trip_and_degenerate_cases():
    off = np.array(OFFSETS[1], np.float32)
    np.testing.assert_allclose(offsets_from_homography(patch_homography(off, P), P), off, atol=1e-3)
    np.testing.assert_array_equal(offsets_from_homography(np.eye(3), P), np.zeros(8))
    assert offsets_from_homography(None, P) is None
    assert offsets_from_homography(np.zeros((3, 3)), P) is None  # singular
    assert offsets_from_homography(np.array([[1, 2, 0], [2, 4, 0], [0, 0, 1.0]]), P) is None  # rank 2
    assert offsets_from_homography(np.full((3, 3), np.nan), P) is None
    flip = np.array([[-1, 0, P], [0, 1, 0], [0, 0, 1.0]])  # mirror image: folds the patch
    assert offsets_from_homography(flip, P) is None
    far = np.array([[1, 0, 3 * P], [0, 1, 0], [0, 0, 1.0]])  # a corner moved 3 patch sides
    assert offsets_from_homography(far, P) is not None
    assert offsets_from_homography(far, P, max_offset=P) is None


def test_sift_recovers_known_homography_on_real_photos(pairs):
    for a, b, off in pairs:
        pred = sift_ransac(a, b)
        assert pred is not None
        assert mace(pred, off) < 1.5


def test_swapped_direction_gives_large_error(pairs):
    for a, b, off in pairs:
        right = sift_ransac(a, b)
        swapped = sift_ransac(b, a)  # estimates H^-1: the classic direction bug
        assert mace(right, off) < 1.5
        assert swapped is not None and mace(swapped, off) > 20
        # Interpreting the right estimate in the wrong direction (offsets of H^-1) is as wrong.
        inv = offsets_from_homography(np.linalg.inv(patch_homography(right, P)), P)
        assert mace(inv, off) > 20


def test_orb_beats_identity_on_textured_photo(pairs):
    a, b, off = pairs[0]
    pred = orb_ransac(a, b)
    assert pred is not None
    assert mace(pred, off) < 8 < mace(np.zeros(8), off)


def test_ecc_warp_direction_small_motion():
    a, b, off = make_pair(PHOTOS[5], 90, 50, [3, -4, -5, 2, 4, 5, -2, -3])
    pred = ecc(a, b)
    assert pred is not None and mace(pred, off) < 0.5
    # ECC with the images swapped converges to the inverse map: clearly off the labels.
    swapped = ecc(b, a)
    assert swapped is not None and mace(swapped, off) > 4 * mace(pred, off) + 1


def test_identity_mace_is_mean_corner_offset_norm(pairs):
    offs = np.stack([o for _, _, o in pairs])
    by_hand = np.mean([np.mean([np.hypot(o[2 * k], o[2 * k + 1]) for k in range(4)]) for o in offs])
    assert mace(np.stack([identity(a, b) for a, b, _ in pairs]), offs) == pytest.approx(by_hand, rel=1e-6)


def test_blank_pair_fails_and_is_scored_as_identity():
    a = np.full((P, P), 120, np.uint8)
    assert sift_ransac(a, a) is None and orb_ransac(a, a) is None and ecc(a, a) is None
    off = np.array(OFFSETS[0], np.float32)
    res = evaluate_methods(np.stack([np.stack([a, a])]), off[None], methods=("sift", "orb", "ecc", "identity"))
    for m in ("sift", "orb", "ecc"):
        assert res[m]["failures"] == 1
        assert res[m]["mean"] == pytest.approx(res["identity"]["mean"])
    assert res["identity"]["failures"] == 0


def test_evaluate_methods_on_generated_store(tmp_path):
    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.generate import generate

    out = tmp_path / "ds.zarr"
    generate(
        GenerateConfig(output=str(out), sampling=SamplingConfig(pairs_per_image=4), source=SourceConfig(max_images=8))
    )
    pairs, offsets = load_split(str(out), None)
    assert pairs.shape == (32, 2, P, P) and pairs.dtype == np.uint8
    few, few_off = load_split(str(out), None, limit=5)
    assert len(few) == 5 and np.array_equal(few_off, offsets[:5])

    res = evaluate_methods(pairs, offsets, methods=tuple(BASELINES))
    assert list(res) == ["identity", "orb", "sift", "ecc"]
    norms = np.linalg.norm(offsets.reshape(-1, 4, 2), axis=2).mean()
    assert res["identity"]["mean"] == pytest.approx(norms, rel=1e-5)
    assert res["sift"]["median"] < 1.5  # store labels agree with the matcher's direction
    assert res["sift"]["mean"] < res["identity"]["mean"] / 2
    assert res["ecc"]["median"] < 1.0
    for r in res.values():
        assert r["n"] == 32 and r["ms_per_pair"] >= 0 and r["p95"] >= r["median"]
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0].startswith("| method | MACE mean") and len(lines) == 2 + 4
    assert "SIFT" in table and f"{res['sift']['failures']}/32" in table
    with pytest.raises(ValueError):
        evaluate_methods(pairs, offsets, methods=("nope",))


def test_one_convexity_rule_flags_folded_and_mirrored_quadrilaterals():
    from homogen.sampling import quads_convex

    ok = np.array(OFFSETS, np.float32)
    fold = np.array([[P, 0, -P, 0, 0, 0, 0, 0]], np.float32)  # TL and TR swap places
    mirror = np.array([[P, 0, -P, 0, -P, 0, P, 0]], np.float32)  # the patch flipped left-right
    assert quads_convex(ok, P).tolist() == [True] * 3
    assert not quads_convex(fold, P)[0] and not quads_convex(mirror, P)[0]
    assert offsets_from_homography(patch_homography(mirror[0], P), P) is None
