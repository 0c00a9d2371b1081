"""Refinement: any method's estimate improved by direct alignment started from it.

The Deep Lucas-Kanade idea of the project's sources: an initial homography (from a feature
matcher, ECC or the network) is refined by iterative photometric alignment. Here the iterative
aligner is the direct solver of :mod:`homogen.model.direct`, started from the estimate, on the two
finest pyramid levels only (the estimate is assumed within a few pixels), with NCC (insensitive to
brightness and contrast changes).

Refinement never makes an estimate worse by its own measure: per pair, the refined offsets are
kept only when they pass the failure rule and lower the full-resolution NCC loss; otherwise the
start is returned unchanged. A pair whose method failed starts from the identity (its score) and
stays counted as a failure of the method, whatever refinement makes of it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from homogen.model.direct import Loss, direct_alignment, pair_losses

__all__ = ["REFINE_ITERATIONS", "REFINE_LR", "refine"]

REFINE_ITERATIONS: tuple[int, ...] = (15, 10)
"""Adam steps on the half- and full-resolution patches."""
REFINE_LR: tuple[float, ...] = (0.3, 0.1)
"""Learning rates (full-resolution pixels) of those levels."""


def refine(
    pairs: np.ndarray,
    offsets: np.ndarray,
    failed: np.ndarray | None = None,
    loss: Loss = "ncc",
    iterations: Sequence[int] = REFINE_ITERATIONS,
    lr: Sequence[float] = REFINE_LR,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine estimated offsets of uint8 pairs by direct alignment started from them.

    Args:
        pairs: uint8 :math:`(n, 2, P, P)`, channel 0 = A, 1 = B.
        offsets: :math:`(n, 8)` estimates (failures as zeros, i.e. the identity).
        failed: :math:`(n,)` bool, the pairs where the method returned nothing (default none).

    Returns:
        ``(offsets (n, 8) float32, failed (n,) bool)``: per pair the refined estimate when it is
        valid and aligns better (lower full-resolution ``loss``), else the input unchanged;
        ``failed`` as given.
    """
    pairs = np.asarray(pairs)
    start = np.asarray(offsets, np.float32)
    if start.shape != (len(pairs), 8):
        raise ValueError(f"offsets must have shape ({len(pairs)}, 8), one row per pair, got {start.shape}")
    failed = np.zeros(len(pairs), bool) if failed is None else np.asarray(failed, bool)
    refined, bad = direct_alignment(pairs, init=start, loss=loss, batch_size=batch_size, iterations=iterations, lr=lr)
    x = torch.from_numpy(np.ascontiguousarray(pairs))
    before = pair_losses(x[:, 0], x[:, 1], torch.from_numpy(start), loss).numpy()
    after = pair_losses(x[:, 0], x[:, 1], torch.from_numpy(refined), loss).numpy()
    better = ~bad & (after < before)
    out = np.where(better[:, None], refined, start).astype(np.float32)
    return out, failed
