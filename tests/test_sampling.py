"""The recipe's geometry on real photographs: direction of H, labels against two independent DLTs,
label order, sampling bounds, refused parameters, per-pair randomness."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kornia.geometry.transform import get_perspective_transform
from pydantic import ValidationError

from homogen.config import SamplingConfig
from homogen.images import load_gray
from homogen.sampling import pair_rng, patch_corners, patch_homography, sample_geometry
from homogen.warping import cut_pair, cut_pair_full_frame

from helpers import read_store

P = 128
CFG = SamplingConfig()


def real_pairs(photos, n_images=12):
    """(A, B, H) for 4 pairs of each of the first ``n_images`` photographs."""
    for image_id, path in enumerate(photos[:n_images]):
        frame = load_gray(str(path), CFG.image_width, CFG.image_height)
        for k in range(4):
            g = sample_geometry(pair_rng(7, image_id, k), CFG)
            h = patch_homography(g.offsets, P)
            a, b = cut_pair(frame, g.x, g.y, h, P)
            yield frame, g, h, a, b


def warp_a_by(a: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A(h q) for every q of the patch, and the mask of q whose h q lies inside A (1 px margin)."""
    warped = cv2.warpPerspective(a, h, (P, P), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    ys, xs = np.mgrid[0:P, 0:P].astype(np.float32)
    hq = cv2.perspectiveTransform(np.stack([xs, ys], -1).reshape(-1, 1, 2), h).reshape(P, P, 2)
    inside = (hq[..., 0] >= 1) & (hq[..., 0] <= P - 2) & (hq[..., 1] >= 1) & (hq[..., 1] <= P - 2)
    return warped, inside


def test_b_is_a_seen_through_h_on_real_photographs(sample_photos):
    """B(q) = A(H q) on the interior; the opposite direction misses by tens of grey levels."""
    for _, _, h, a, b in real_pairs(sample_photos):
        right, inside = warp_a_by(a, h)
        assert inside.mean() > 0.5
        diff = np.abs(right.astype(np.int16) - b)[inside]
        assert diff.max() <= 1 and diff.mean() < 0.01  # OpenCV's fixed-point bilinear: 1 level at most
        wrong, inside_w = warp_a_by(a, np.linalg.inv(h))
        assert np.abs(wrong.astype(np.int16) - b)[inside_w].mean() > 5.0


def test_stored_pairs_satisfy_b_equals_a_through_stored_h(small_store):
    """What a user reads back obeys the convention: B(q) = A(H q) with the stored H."""
    data = read_store(small_store[0])
    for (a, b), h in zip(data["pairs"], data["homography"]):
        right, inside = warp_a_by(a, h)
        assert np.abs(right.astype(np.int16) - b)[inside].max() <= 1
        wrong, inside_w = warp_a_by(a, np.linalg.inv(h))
        assert np.abs(wrong.astype(np.int16) - b)[inside_w].mean() > 5.0


def test_one_window_warp_gives_the_recipes_full_frame_pixels(sample_photos):
    """cut_pair (one PxP warp) equals warping the whole frame by H_BA and cropping, to 1 level on
    a tiny share of pixels (OpenCV's fixed-point coordinates differ between the two matrices)."""
    differing, total = 0, 0
    for frame, g, h, a, b in real_pairs(sample_photos, n_images=32):
        a_ref, b_ref = cut_pair_full_frame(frame, g.x, g.y, h, P)
        assert np.array_equal(a, a_ref)
        diff = np.abs(b.astype(np.int16) - b_ref)
        assert diff.max() <= 1
        differing += int(np.count_nonzero(diff))
        total += diff.size
    assert differing / total < 1e-3


def test_stored_labels_agree_with_opencv_and_kornia_dlt(small_store):
    data = read_store(small_store[0])
    src = patch_corners(P)
    dst = src[None] + data["offsets"].reshape(-1, 4, 2)
    h_kornia = get_perspective_transform(
        torch.from_numpy(np.repeat(src[None], len(dst), 0)).double(), torch.from_numpy(dst).double()
    ).numpy()
    for h, h_cv, h_k in zip(data["homography"], (cv2.getPerspectiveTransform(src, d) for d in dst), h_kornia):
        assert h[2, 2] == 1.0
        np.testing.assert_allclose(h, h_cv / h_cv[2, 2], atol=1e-9)
        np.testing.assert_allclose(h, h_k / h_k[2, 2], atol=1e-6)


def test_label_order_is_tl_tr_br_bl(small_store):
    """H moves corner i of the patch (TL, TR, BR, BL) by offsets[2i:2i+2]; corners are that order."""
    data = read_store(small_store[0])
    local = patch_corners(P).reshape(-1, 1, 2)
    for h, off, corners in zip(data["homography"], data["offsets"], data["corners"]):
        moved = cv2.perspectiveTransform(local.astype(np.float64), h).reshape(4, 2)
        np.testing.assert_allclose(moved, local.reshape(4, 2) + off.reshape(4, 2), atol=1e-3)
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = corners
        assert (x1 - x0, y1 - y0) == (P, 0) and (x2 - x1, y2 - y1) == (0, P) and (x3, y3) == (x0, y2)


def test_corners_locate_patch_a_in_the_resized_image(small_store, sample_photos):
    data = read_store(small_store[0])
    by_id = {int(p.stem): p for p in sample_photos}
    for i in range(0, len(data["image_id"]), 3):
        frame = load_gray(str(by_id[int(data["image_id"][i])]), CFG.image_width, CFG.image_height)
        x, y = data["corners"][i][0].astype(int)
        assert np.array_equal(data["pairs"][i, 0], frame[y : y + P, x : x + P])


geometry = st.integers(8, 96).flatmap(
    lambda p: st.tuples(
        st.just(p),
        st.integers(p, 400),  # width
        st.integers(p, 300),  # height
    ).flatmap(
        lambda pwh: st.tuples(
            st.just(pwh),
            st.integers(0, min((min(pwh[1], pwh[2]) - pwh[0]) // 2, pwh[0] // 4)),
            st.integers(1, 8),
            st.integers(0, 2**31),
        )
    )
)


@settings(max_examples=150, deadline=None)
@given(geometry)
def test_every_perturbed_corner_stays_inside_the_image(params):
    (p, w, h), rho, ppi, seed = params
    cfg = SamplingConfig(image_width=w, image_height=h, patch_size=p, rho=rho, pairs_per_image=ppi, seed=seed)
    for k in range(ppi):
        g = sample_geometry(pair_rng(seed, 12345, k), cfg)
        assert g.offsets.dtype == np.float32 and g.offsets.shape == (8,)
        assert np.all(np.abs(g.offsets) <= rho)
        moved = patch_corners(p, g.x, g.y) + g.offsets.reshape(4, 2)
        assert np.all(moved >= 0) and np.all(moved[:, 0] <= w) and np.all(moved[:, 1] <= h)


@settings(max_examples=100, deadline=None)
@given(st.integers(8, 300), st.integers(1, 300), st.integers(1, 300), st.integers(-20, 150))
def test_impossible_parameters_are_refused_naming_parameter_and_limit(p, w, h, rho):
    kwargs = dict(image_width=w, image_height=h, patch_size=p, rho=rho)
    possible = rho >= 0 and p <= min(w, h) and 4 * rho <= p and p + 2 * rho <= min(w, h)
    if possible:
        SamplingConfig(**kwargs)
        return
    with pytest.raises(ValidationError) as err:
        SamplingConfig(**kwargs)
    msg = str(err.value)
    if rho < 0:
        assert "rho must be >= 0" in msg
    elif p > min(w, h):
        assert f"patch_size={p}" in msg and f"patch_size <= {min(w, h)}" in msg
    else:
        assert (f"rho={rho} exceeds patch_size/4" if 4 * rho > p else "patch_size + 2*rho") in msg
        check_suggested_fixes(msg, p, w, h, rho)


def valid(**kwargs) -> bool:
    try:
        SamplingConfig(**kwargs)
    except ValidationError:
        return False
    return True


def check_suggested_fixes(msg: str, p: int, w: int, h: int, rho: int) -> None:
    """Every fix a refusal of rho suggests is accepted, and the limits it names are the limits."""
    frame = dict(image_width=w, image_height=h)
    (best,) = re.findall(rf"use rho <= (\d+) at patch_size={p}\b", msg)
    assert valid(**frame, patch_size=p, rho=int(best)) and not valid(**frame, patch_size=p, rho=int(best) + 1), msg
    sizes = re.search(rf"or (?:patch_size=(\d+)|a patch_size from (\d+) to (\d+)) for rho={rho}\b", msg)
    fits = [q for q in range(8, min(w, h) + 1) if valid(**frame, patch_size=q, rho=rho)]
    if sizes:
        low, high = (int(sizes[1]), int(sizes[1])) if sizes[1] else (int(sizes[2]), int(sizes[3]))
        assert fits == list(range(low, high + 1)), msg
    else:
        assert fits == [], msg
        most, q = map(int, re.search(r"the largest rho it takes is (\d+), with patch_size (\d+)", msg).groups())
        assert valid(**frame, patch_size=q, rho=most), msg
        assert not any(valid(**frame, patch_size=k, rho=most + 1) for k in range(8, min(w, h) + 1)), msg


@pytest.mark.parametrize("rho", [500, 41, 40, 33])
def test_a_large_rho_suggests_only_values_that_are_valid_for_the_frame(rho):
    """`--rho 500` suggested `a patch_size >= 2000` in a 320x240 frame: every value a refusal names is valid."""
    with pytest.raises(ValidationError) as err:
        SamplingConfig(rho=rho)
    msg = str(err.value)
    assert "2000" not in msg and f"patch_size >= {4 * rho}" not in msg
    check_suggested_fixes(msg, 128, 320, 240, rho)


def test_default_parameters_are_the_recipe():
    assert (CFG.image_width, CFG.image_height, CFG.patch_size, CFG.rho, CFG.pairs_per_image) == (320, 240, 128, 32, 4)
    assert CFG.photometric == "none"


def test_each_pair_draws_from_its_own_stream():
    """A pair depends on (seed, image id, pair index) only, and each of the three matters."""
    base = sample_geometry(pair_rng(3, 42, 1), CFG)
    again = sample_geometry(pair_rng(3, 42, 1), CFG)
    assert (base.x, base.y) == (again.x, again.y) and np.array_equal(base.offsets, again.offsets)
    for other in [(4, 42, 1), (3, 43, 1), (3, 42, 2)]:
        assert not np.array_equal(sample_geometry(pair_rng(*other), CFG).offsets, base.offsets)
