"""Torch twins of :mod:`homogen.geometry` for what runs on tensors (the network's output, direct
alignment, the photometric loss): same conventions, batched, differentiable (kornia's DLT and warp).

``H`` maps B-points to A-points (``B(q) = A(H q)``); offsets are :math:`(B, 8)` in label order.
"""

from __future__ import annotations

import torch
from kornia.geometry.transform import get_perspective_transform, warp_perspective
from torch import Tensor

from homogen import geometry

__all__ = ["map_points", "offsets_to_homography", "patch_corners", "warp_by_h"]


def patch_corners(patch_size: int, batch: int = 1, dtype=torch.float32, device=None) -> Tensor:
    """:func:`homogen.geometry.patch_corners` as a tensor :math:`(B, 4, 2)` of ``(x, y)`` (one row, expanded)."""
    return torch.from_numpy(geometry.patch_corners(patch_size)).to(dtype=dtype, device=device).expand(batch, 4, 2)


def offsets_to_homography(offsets: Tensor, patch_size: int) -> Tensor:
    """Offsets -> H by kornia's DLT (:func:`homogen.geometry.patch_homography` batched), ``H[2, 2] = 1``.

    Args:
        offsets: :math:`(B, 8)` or :math:`(B, 4, 2)` offsets in pixels, label order.
    Returns:
        :math:`(B, 3, 3)`, float64 if ``offsets`` is float64 else float32.
    """
    dtype = torch.float64 if offsets.dtype == torch.float64 else torch.float32
    d = offsets.to(dtype).reshape(-1, 4, 2)
    src = patch_corners(patch_size, len(d), dtype=dtype, device=d.device)
    h = get_perspective_transform(src, src + d)
    return h / h[:, 2:3, 2:3]


def map_points(h: Tensor, pts: Tensor) -> Tensor:
    """Points through homographies: :math:`(B, 3, 3)` x :math:`(B, K, 2)` -> :math:`(B, K, 2)`."""
    hom = torch.cat([pts, torch.ones_like(pts[..., :1])], -1) @ h.transpose(-1, -2)
    return hom[..., :2] / hom[..., 2:]


def warp_by_h(image: Tensor, h: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """``out(q) = image(h q)`` (:func:`homogen.geometry.warp_by_h` batched): :math:`(B, C, H, W)`, size (h, w).

    kornia's ``warp_perspective`` maps output pixels from input ones by the matrix it is given, so
    it gets ``inv(h)``; ``align_corners=True`` keeps pixel centres at integer coordinates.
    """
    size = size or (image.shape[-2], image.shape[-1])
    return warp_perspective(image, torch.linalg.inv(h), size, align_corners=True)
