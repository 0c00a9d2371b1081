"""The unsupervised photometric loss on real photographs: it measures misalignment, and one training
step on it lowers it without reading a label."""

import numpy as np
import pytest
import torch

from helpers import recipe_pairs
from homogen.model.config import TrainConfig
from homogen.model.losses import photometric_loss
from homogen.model.network import HomographyNet
from homogen.model.train import make_criterion, train_one_epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def batch():
    pairs, offsets = recipe_pairs(8, rho=16, seed=2)
    return torch.from_numpy(pairs), torch.from_numpy(offsets)


def test_photometric_loss_is_lowest_at_the_true_offsets_and_differentiable(batch):
    pairs, offsets = batch
    true = photometric_loss(offsets, pairs)
    zero = photometric_loss(torch.zeros_like(offsets), pairs)
    wrong = photometric_loss(-offsets, pairs)
    assert true < 0.5 * zero and true < 0.5 * wrong
    pred = torch.zeros_like(offsets, requires_grad=True)
    photometric_loss(pred, pairs).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_one_photometric_training_step_lowers_the_loss_without_reading_labels(batch):
    pairs, _ = batch
    assert TrainConfig(loss="photometric").loss == "photometric"
    labels = torch.full((len(pairs), 8), float("nan"))  # any use of a label makes the loss NaN

    torch.manual_seed(0)
    net = HomographyNet(width=0.125, dropout=0.0)
    criterion = make_criterion("photometric")

    def loss_now() -> float:  # train mode (batch statistics), as the step sees it
        net.train()
        with torch.no_grad():
            return float(criterion(net(pairs).float(), labels, pairs))

    before = loss_now()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_one_epoch(net, criterion, opt, [(pairs, labels)], torch.device("cpu"), scaler)
    after = loss_now()
    assert np.isfinite(stats["train_loss"]) and stats["train_loss"] == pytest.approx(before, rel=1e-4)
    assert after < before


def test_a_supervised_criterion_would_read_the_nan_labels(batch):
    # The counter-test: the NaN labels above do reach a loss that reads them.
    pairs, _ = batch
    labels = torch.full((len(pairs), 8), float("nan"))
    assert torch.isnan(make_criterion("smooth_l1")(torch.zeros(len(pairs), 8), labels, pairs))
