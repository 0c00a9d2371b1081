"""Direct alignment and refinement on real photographs: known homographies recovered, exact estimates kept."""

import numpy as np
import pytest
import torch

from helpers import recipe_pairs
from homogen.model.direct import align, checked_offsets, direct_alignment, pair_losses, warp_a
from homogen.model.metrics import pair_errors
from homogen.model.refine import refine

P = 128

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rho16():
    return recipe_pairs(8, rho=16, seed=1)


def test_warp_of_a_by_the_true_offsets_reproduces_b(rho16):
    pairs, offsets = rho16
    x = torch.from_numpy(pairs).float()
    warped, valid = warp_a(x[:, :1], torch.from_numpy(offsets), P)
    wrong, _ = warp_a(x[:, :1], -torch.from_numpy(offsets), P)  # the other direction
    inside = valid.bool()
    good = (warped - x[:, 1:]).abs()[inside].mean()
    assert valid.mean() > 0.5 and good < 6
    assert (wrong - x[:, 1:]).abs()[inside].mean() > 3 * good


@pytest.mark.parametrize("loss", ["mse", "ncc"])
def test_direct_alignment_recovers_a_known_homography_to_under_a_pixel_on_most_pairs(rho16, loss):
    pairs, offsets = rho16
    pred, failed = direct_alignment(pairs, loss=loss)
    errors = pair_errors(pred, offsets)
    assert not failed.any()
    assert np.mean(errors < 1.0) >= 0.75, errors.round(2)
    assert np.median(errors) < 0.5
    assert pair_errors(np.zeros_like(offsets), offsets).min() > 5  # the identity was far off


def test_direct_alignment_lowers_its_loss_and_stays_put_with_no_steps(rho16):
    pairs, _ = rho16
    x = torch.from_numpy(pairs[:4])
    est = align(x[:, 0], x[:, 1], loss="ncc", iterations=(20, 10), lr=(2.0, 0.5))
    zero = torch.zeros(4, 8)
    assert (pair_losses(x[:, 0], x[:, 1], est, "ncc") < pair_losses(x[:, 0], x[:, 1], zero, "ncc")).all()
    assert torch.equal(align(x[:, 0], x[:, 1], zero, iterations=(0,), lr=(1.0,)), zero)


def test_bad_inputs_are_refused_with_the_shape_received():
    with pytest.raises(ValueError, match=r"\(n, 2, P, P\)"):
        direct_alignment(np.zeros((3, 128, 128), np.uint8))
    with pytest.raises(ValueError, match="unknown loss"):
        align(torch.zeros(1, 128, 128), torch.zeros(1, 128, 128), loss="l1")
    with pytest.raises(ValueError, match="not divisible"):
        align(torch.zeros(1, 100, 100), torch.zeros(1, 100, 100), iterations=(1, 1, 1, 1), lr=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"init must have shape \(2, 8\)"):
        direct_alignment(np.zeros((2, 2, 128, 128), np.uint8), init=np.zeros((3, 8)))


def test_failure_rule_flags_folded_and_non_finite_estimates():
    fold = np.array([[80, 0, -80, 0, -80, 0, 80, 0]], np.float32)  # TL and TR swap sides
    out, failed = checked_offsets(np.concatenate([fold, np.full((1, 8), np.nan), np.ones((1, 8))]), P)
    assert failed.tolist() == [True, True, False]
    assert np.array_equal(out[:2], np.zeros((2, 8))) and np.allclose(out[2], 1.0, atol=1e-4)


def test_refinement_does_not_make_an_exact_estimate_worse(rho16):
    pairs, offsets = rho16
    out, failed = refine(pairs, offsets)
    errors = pair_errors(out, offsets)
    assert not failed.any()
    assert errors.mean() < 0.25 and errors.max() < 0.75, errors.round(3)


def test_refinement_improves_a_rough_estimate_and_keeps_failures_counted(rho16):
    pairs, offsets = rho16
    rough = offsets + np.random.default_rng(0).uniform(-2, 2, offsets.shape).astype(np.float32)
    failed = np.zeros(len(pairs), bool)
    failed[0] = True
    out, still = refine(pairs, rough, failed)
    assert pair_errors(out, offsets).mean() < 0.5 * pair_errors(rough, offsets).mean()
    assert still.tolist() == failed.tolist()
