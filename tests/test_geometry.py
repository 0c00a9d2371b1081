"""homogen.geometry (numpy) and its torch twins in homogen.model.geometry: one definition per operation,
checked against the recipe of CONVENTIONS.md and against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import recipe_pairs

from homogen import geometry as g
from homogen.model import geometry as tg

P = 64


def interior(p: int, margin: int) -> tuple[slice, slice]:
    return slice(margin, p - margin), slice(margin, p - margin)


def test_offsets_to_h_maps_each_corner_to_corner_plus_offset_and_back():
    off = np.random.default_rng(0).uniform(-16, 16, 8).astype(np.float32)
    h = g.patch_homography(off, P)
    np.testing.assert_allclose(g.map_points(h, g.patch_corners(P)), g.patch_corners(P) + off.reshape(4, 2), atol=1e-4)
    np.testing.assert_allclose(g.h_to_offsets(h, P), off, atol=1e-4)
    batched = g.map_points(np.stack([h, np.eye(3)]), g.patch_corners(P))
    assert batched.shape == (2, 4, 2) and np.allclose(batched[1], g.patch_corners(P))


def test_warping_a_by_h_gives_b_on_the_interior():
    """B(q) = A(H q): the direction every caller relies on (a wrong direction still looks like a pair)."""
    pairs, offsets = recipe_pairs(3, rho=8, patch=P, seed=1)
    for (a, b), off in zip(pairs, offsets):
        h = g.patch_homography(off, P)
        err = np.abs(g.warp_by_h(a, h).astype(float) - b.astype(float))[interior(P, 10)]
        wrong = np.abs(g.warp_by_h(a, np.linalg.inv(h)).astype(float) - b.astype(float))[interior(P, 10)]
        assert err.mean() < 2.0 < wrong.mean()


def test_convexity_refuses_a_folded_quadrilateral():
    fold = np.zeros(8, np.float32)
    fold[[0, 2]] = [P + 5, -P - 5]  # TL and TR swap sides
    assert g.quads_convex(np.stack([np.zeros(8), fold]), P).tolist() == [True, False]


def test_the_torch_twins_agree_with_numpy():
    off = np.random.default_rng(2).uniform(-16, 16, (4, 8)).astype(np.float32)
    h_t = tg.offsets_to_homography(torch.from_numpy(off), P)
    h_n = np.stack([g.patch_homography(o, P) for o in off])
    np.testing.assert_allclose(h_t.numpy(), h_n, atol=1e-4)
    pts = np.random.default_rng(3).uniform(0, P, (4, 5, 2))
    mapped_t = tg.map_points(torch.from_numpy(h_n), torch.from_numpy(pts)).numpy()
    np.testing.assert_allclose(mapped_t, np.stack([g.map_points(h, p) for h, p in zip(h_n, pts)]), atol=1e-6)
    a = recipe_pairs(4, rho=8, patch=P, seed=4)[0][:, :1].astype(np.float32)
    warped_t = tg.warp_by_h(torch.from_numpy(a), torch.from_numpy(h_n).float()).numpy()[:, 0]
    warped_n = np.stack([g.warp_by_h(x[0], h) for x, h in zip(a, h_n)])
    assert np.abs(warped_t - warped_n)[(slice(None), *interior(P, 4))].max() < 0.5


@pytest.mark.parametrize("bad", [np.full((3, 3), np.nan), np.array([[1, 0, 0], [0, 1, 0], [-1 / 64, 0, 1.0]])])
def test_points_sent_to_infinity_come_out_non_finite_not_wrong(bad):
    with np.errstate(all="ignore"):
        out = g.map_points(bad, g.patch_corners(P))
    assert not np.all(np.isfinite(out))
