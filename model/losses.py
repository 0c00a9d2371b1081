"""The unsupervised photometric loss of Nguyen et al. (2018), "Unsupervised Deep Homography".

The network's 4-point offsets become H by kornia's differentiable DLT, A is warped by that H with
a spatial transformer (kornia's ``warp_perspective``, :func:`homogen.model.direct.warp_a`, the same
warp the direct aligners use), and the loss is the L1 difference with B on the valid region (the
pixels q of B whose ``H q`` falls inside A). Only the pairs are read: the labels never enter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from homogen.model.direct import warp_a

__all__ = ["photometric_criterion", "photometric_loss"]


def photometric_loss(offsets: Tensor, pairs: Tensor) -> Tensor:
    """Mean over pairs of the mean absolute difference between ``A(H q)`` and ``B(q)`` on the valid region.

    Args:
        offsets: :math:`(N, 8)` predicted offsets in pixels (H maps B-points to A-points).
        pairs: :math:`(N, 2, P, P)` uint8 or float in [0, 255]; channel 0 = A, 1 = B.

    Returns:
        Scalar, in [0, 1] (intensities scaled to [0, 1]); differentiable in ``offsets``.
    """
    if pairs.ndim != 4 or pairs.shape[1] != 2 or offsets.shape != (len(pairs), 8):
        raise ValueError(
            f"expected offsets (N, 8) and pairs (N, 2, P, P), got {tuple(offsets.shape)} and {tuple(pairs.shape)}"
        )
    x = pairs.to(torch.float32) / 255.0
    a, b = x[:, :1], x[:, 1:]
    warped, valid = warp_a(a, offsets.to(torch.float32), pairs.shape[-1])
    count = valid.sum(dim=(1, 2, 3)).clamp_min(1.0)
    return ((warped - b).abs() * valid).sum(dim=(1, 2, 3)).div(count).mean()


def photometric_criterion(pred: Tensor, offsets: Tensor, pairs: Tensor) -> Tensor:
    """The training criterion ``TrainConfig(loss="photometric")``: :func:`photometric_loss` of
    ``pred`` :math:`(B, 8)` on ``pairs`` :math:`(B, 2, P, P)`; ``offsets`` (the labels) are not read."""
    return photometric_loss(pred, pairs)
