"""Direct alignment: the 8 corner offsets found by gradient descent on a photometric loss.

The image-alignment write-up of the project's sources warps A with a spatial transformer, compares
it with B (MSE or normalized cross-correlation, NCC) and descends the loss's gradient with respect
to the warp's parameters. Here the parameters are the 4-point offsets of CONVENTIONS.md, so the
warp is a full homography: kornia's DLT (``get_perspective_transform``) turns the offsets into H,
kornia's ``warp_perspective`` resamples ``A(H q)`` on B's pixel grid, and torch autograd gives the
gradient. Adam takes a fixed number of steps per level of an image pyramid, coarse to fine, for
every pair of a batch at once (each pair's loss depends on its own offsets only, and Adam's steps
are element-wise, so the pairs of a batch do not interact).

Geometry: the parameters stay the offsets of the full-resolution patch at every level. A pixel
centre ``x`` of the full patch sits at ``(x + 0.5) / f - 0.5`` in the level reduced ``f`` times by
2x2 averaging; with ``S`` that scaling, the level's homography is ``S H S^-1``.

The loss is taken on the valid region only: the pixels q of B whose ``H q`` falls inside A.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import get_perspective_transform, warp_perspective
from torch import Tensor

from homogen.model.baselines import offsets_from_homography
from homogen.model.network import offsets_to_homography, patch_corners

__all__ = [
    "LOSSES",
    "align",
    "aligned_loss",
    "checked_offsets",
    "direct_alignment",
    "level_scaling",
    "pair_losses",
    "warp_a",
]

Loss = Literal["mse", "ncc"]
LOSSES: tuple[str, ...] = ("mse", "ncc")

DEFAULT_ITERATIONS: tuple[int, ...] = (40, 40, 25, 10)
"""Adam steps per pyramid level, coarsest first (the 1/8, 1/4, 1/2 and full-resolution patches)."""
DEFAULT_LR: tuple[float, ...] = (4.0, 2.0, 0.5, 0.15)
"""Adam learning rate per level, in full-resolution pixels; each level anneals it to a tenth."""
BETAS = (0.3, 0.9)
"""Adam's momentum terms: little momentum, so the offsets settle instead of orbiting the optimum."""
BLUR_SIGMA = 1.0
"""Gaussian blur (pixels of the level) on both patches: widens the basin of the loss."""
VALID = 0.999
"""A pixel of B is compared when the warped all-ones image is at least this (bilinear weights)."""


def level_scaling(factor: int, dtype=torch.float32, device=None) -> Tensor:
    """``S`` (3, 3): full-resolution pixel centres to those of a level reduced ``factor`` times."""
    f = float(factor)
    t = 0.5 / f - 0.5
    return torch.tensor([[1 / f, 0.0, t], [0.0, 1 / f, t], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def warp_a(a: Tensor, offsets: Tensor, patch_size: int, factor: int = 1) -> tuple[Tensor, Tensor]:
    """``A(H q)`` on B's pixel grid, and where it is valid, at pyramid level ``factor``.

    Args:
        a: :math:`(N, 1, P/f, P/f)` float patch A at the level.
        offsets: :math:`(N, 8)` full-resolution offsets (H maps B-points to A-points).
        patch_size: full-resolution side P.
        factor: the level's reduction f (1, 2, 4, ...).

    Returns:
        ``(warped, valid)``: :math:`(N, 1, P/f, P/f)` float each; ``valid`` is 1.0 where ``H q``
        falls inside A (no gradient flows through it), else 0.0.
    """
    n = len(offsets)
    c = patch_corners(patch_size, n, dtype=offsets.dtype, device=offsets.device)
    h_inv = get_perspective_transform(c + offsets.reshape(n, 4, 2), c)  # A-points to B-points
    if factor != 1:
        s = level_scaling(factor, offsets.dtype, offsets.device)
        h_inv = s @ h_inv @ torch.linalg.inv(s)
    # One warp of (A, 1): kornia builds the sampling grid once for the image and its valid mask.
    both = warp_perspective(
        torch.cat([a, torch.ones_like(a)], 1), h_inv, (a.shape[-2], a.shape[-1]), align_corners=True
    )
    warped = both[:, :1]
    valid = (both[:, 1:].detach() >= VALID).to(a.dtype)
    return warped, valid


def aligned_loss(warped: Tensor, b: Tensor, valid: Tensor, loss: Loss = "mse") -> Tensor:
    """Per-pair loss of ``warped`` A against B on ``valid``: :math:`(N, 1, h, w)` x3 -> :math:`(N,)`.

    ``"mse"``: mean squared difference. ``"ncc"``: 1 - normalized cross-correlation (zero-mean,
    over the valid pixels), insensitive to brightness and contrast changes. A pair with no valid
    pixel has loss 0 (and no gradient).
    """
    count = valid.sum(dim=(1, 2, 3)).clamp_min(1.0)
    if loss == "mse":
        return ((warped - b) ** 2 * valid).sum(dim=(1, 2, 3)) / count
    if loss == "ncc":
        mw = (warped * valid).sum(dim=(1, 2, 3), keepdim=True) / count[:, None, None, None]
        mb = (b * valid).sum(dim=(1, 2, 3), keepdim=True) / count[:, None, None, None]
        dw, db = (warped - mw) * valid, (b - mb) * valid
        num = (dw * db).sum(dim=(1, 2, 3))
        den = torch.sqrt((dw**2).sum(dim=(1, 2, 3)) * (db**2).sum(dim=(1, 2, 3)) + 1e-8)
        return 1.0 - num / den
    raise ValueError(f"unknown loss {loss!r}: use one of {LOSSES}")


def _pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """``levels`` blurred images, finest first, each half the side of the previous (2x2 mean)."""
    out = [x]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1], 2))
    return [gaussian_blur2d(im, (5, 5), (BLUR_SIGMA, BLUR_SIGMA)) if BLUR_SIGMA > 0 else im for im in out]


def _as_patches(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """A and B as float :math:`(N, 1, P, P)` in [0, 1]; one shape, square."""
    a4, b4 = (t.reshape(len(t), 1, t.shape[-2], t.shape[-1]).to(torch.float32) / 255.0 for t in (a, b))
    if a4.shape != b4.shape or a4.shape[-1] != a4.shape[-2]:
        raise ValueError(f"expected A and B of one shape (N, P, P), got {tuple(a.shape)} and {tuple(b.shape)}")
    return a4, b4


@torch.no_grad()
def pair_losses(a: Tensor, b: Tensor, offsets: Tensor, loss: Loss = "mse") -> Tensor:
    """The full-resolution loss that :func:`align` descends, at ``offsets``: :math:`(N,)`.

    Args:
        a, b: :math:`(N, P, P)` patches, uint8 or float in [0, 255].
        offsets: :math:`(N, 8)`.
    """
    a4, b4 = _as_patches(a, b)
    (pa,), (pb,) = _pyramid(a4, 1), _pyramid(b4, 1)
    warped, valid = warp_a(pa, torch.as_tensor(offsets, dtype=torch.float32).reshape(-1, 8), a4.shape[-1])
    return aligned_loss(warped, pb, valid, loss)


def align(
    a: Tensor,
    b: Tensor,
    init: Tensor | None = None,
    loss: Loss = "mse",
    iterations: Sequence[int] = DEFAULT_ITERATIONS,
    lr: Sequence[float] = DEFAULT_LR,
) -> Tensor:
    """Offsets that align A onto B, by Adam on ``loss``, coarse to fine.

    Args:
        a, b: :math:`(N, P, P)` or :math:`(N, 1, P, P)` patches, uint8 or float in [0, 255].
        init: :math:`(N, 8)` starting offsets (default zeros: the identity).
        loss: ``"mse"`` or ``"ncc"`` (:func:`aligned_loss`).
        iterations: Adam steps per level, coarsest first; its length is the number of levels
            (level k of L is reduced ``2 ** (L - 1 - k)`` times). A level may have 0 steps.
        lr: learning rate per level (full-resolution pixels), annealed to a tenth within a level.

    Returns:
        :math:`(N, 8)` float32 offsets (H maps B-points to A-points), detached.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: use one of {LOSSES}")
    if len(iterations) != len(lr) or not iterations:
        raise ValueError(f"iterations {tuple(iterations)} and lr {tuple(lr)} need one entry per pyramid level")
    a4, b4 = _as_patches(a, b)
    n, p = a4.shape[0], a4.shape[-1]
    levels = len(iterations)
    if p % (2 ** (levels - 1)):
        raise ValueError(f"patch side {p} is not divisible by 2**{levels - 1}: use fewer pyramid levels")
    start = torch.zeros(n, 8) if init is None else torch.as_tensor(init, dtype=torch.float32).reshape(n, 8)
    offsets = start.clone().requires_grad_(True)
    pyr_a, pyr_b = _pyramid(a4, levels), _pyramid(b4, levels)
    with torch.enable_grad():
        for k, (steps, rate) in enumerate(zip(iterations, lr)):
            if steps <= 0:
                continue
            level = levels - 1 - k
            factor = 2**level
            opt = torch.optim.Adam([offsets], lr=rate, betas=BETAS)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=rate / 10)
            for _ in range(steps):
                warped, valid = warp_a(pyr_a[level], offsets, p, factor)
                total = aligned_loss(warped, pyr_b[level], valid, loss).sum()
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                sched.step()
    return offsets.detach()


def checked_offsets(estimates: Tensor | np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The project's failure rule on estimated offsets :math:`(n, 8)`.

    An estimate that is not finite, folds the patch or moves a corner by more than P (the rule of
    :func:`homogen.model.baselines.offsets_from_homography`) is a failure: zeros, flagged.

    Returns:
        ``(offsets (n, 8) float32, failed (n,) bool)``.
    """
    est = torch.as_tensor(estimates).double().reshape(-1, 8)
    out = np.zeros((len(est), 8), np.float32)
    failed = np.zeros(len(est), bool)
    finite = torch.isfinite(est).all(dim=1)
    hs = offsets_to_homography(torch.where(finite[:, None], est, torch.zeros_like(est)), patch_size).numpy()
    for j, h in enumerate(hs):
        off = offsets_from_homography(h, patch_size, max_offset=patch_size) if finite[j] else None
        if off is None:
            failed[j] = True
        else:
            out[j] = off
    return out, failed


def direct_alignment(
    pairs: np.ndarray,
    init: np.ndarray | None = None,
    loss: Loss = "mse",
    batch_size: int = 64,
    **kw,
) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`align` over uint8 pairs :math:`(n, 2, P, P)` in batches; failures by :func:`checked_offsets`.

    Args:
        init: :math:`(n, 8)` starting offsets (default: the identity).
        kw: ``iterations`` and ``lr`` of :func:`align`.

    Returns:
        ``(offsets (n, 8) float32, failed (n,) bool)``.
    """
    pairs = np.asarray(pairs)
    if pairs.ndim != 4 or pairs.shape[1] != 2:
        raise ValueError(f"expected pairs of shape (n, 2, P, P), got {pairs.shape}")
    if init is not None and np.shape(init) != (len(pairs), 8):
        raise ValueError(f"init must have shape ({len(pairs)}, 8), one row per pair, got {np.shape(init)}")
    estimates = []
    for s in range(0, len(pairs), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(pairs[s : s + batch_size]))
        start = None if init is None else torch.from_numpy(np.asarray(init[s : s + batch_size], np.float32))
        estimates.append(align(x[:, 0], x[:, 1], start, loss=loss, **kw))
    if not estimates:
        return np.zeros((0, 8), np.float32), np.zeros(0, bool)
    return checked_offsets(torch.cat(estimates), pairs.shape[-1])
