"""HomographyNet (DeTone et al. 2016) and the 4-point -> 3x3 conversion.

The network regresses the 8 corner offsets of CONVENTIONS.md, in pixels, in the label order
``[dx_TL, dy_TL, dx_TR, dy_TR, dx_BR, dy_BR, dx_BL, dy_BL]``. :func:`offsets_to_homography` turns
them into the patch-local homography H that maps B-points to A-points (``a = H b``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from homogen.model.geometry import offsets_to_homography, patch_corners  # noqa: F401  (re-exported)

__all__ = ["HomographyNet", "offsets_to_homography", "patch_corners"]

CONV_CHANNELS = (64, 64, 64, 64, 128, 128, 128, 128)
"""Output channels of the eight 3x3 convolutions of the seed architecture."""
POOL_AFTER = (1, 3, 5)
"""0-based indices of the convolutions followed by a 2x2 max-pool (the 2nd, 4th and 6th)."""
HIDDEN = 1024
BN_EPS = 5e-3


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # The convolution has no bias: the BatchNorm that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
        nn.LeakyReLU(0.2, inplace=True),
    )


class HomographyNet(nn.Module):
    r"""Regress the 4-point homography between two grayscale patches.

    Eight 3x3 conv layers (64, 64, 64, 64, 128, 128, 128, 128 channels), each
    Conv -> BatchNorm2d(eps=5e-3) -> LeakyReLU(0.2), with a 2x2 max-pool after the 2nd, 4th and 6th;
    then dropout 0.5, a fully connected layer to 1024 units (LeakyReLU), dropout 0.5, and a final
    linear layer to the 8 offsets.

    Args:
        width: multiplier on every channel count and on the 1024 hidden units (1.0 = the paper's
            network; e.g. 0.125 for fast tests).
        patch_size: side P of the input patches; must be divisible by 8.
        dropout: dropout probability before each fully connected layer.

    Shape:
        - Input: :math:`(B, 2, P, P)`, ``uint8`` or float in ``[0, 255]``; channel 0 is patch A,
          channel 1 patch B. It is normalised inside :meth:`forward`, on the input's device, to
          ``[-1, 1]`` as ``(x / 255 - 0.5) / 0.5``.
        - Output: :math:`(B, 8)` corner offsets in pixels, ``[dx_TL, dy_TL, dx_TR, dy_TR, dx_BR,
          dy_BR, dx_BL, dy_BL]``.

    Example:
        >>> net = HomographyNet(width=0.125).eval()
        >>> net(torch.zeros(3, 2, 128, 128, dtype=torch.uint8)).shape
        torch.Size([3, 8])
    """

    def __init__(self, width: float = 1.0, patch_size: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if patch_size % 8:
            raise ValueError(f"patch_size must be divisible by 8 (three 2x2 pools), got {patch_size}")
        self.width = float(width)
        self.patch_size = int(patch_size)
        layers: list[nn.Module] = []
        c_in = 2
        for i, c in enumerate(CONV_CHANNELS):
            c_out = _scaled(c, width)
            layers.append(_conv_block(c_in, c_out))
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = patch_size // 8
        hidden = _scaled(HIDDEN, width)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c_in * side * side, hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 8),
        )

    @staticmethod
    def normalize(x: Tensor) -> Tensor:
        """Map ``[0, 255]`` to ``[-1, 1]`` in float32, keeping device and memory format.

        Shape: :math:`(B, 2, P, P)` -> :math:`(B, 2, P, P)`.
        """
        return x.to(torch.float32) / 127.5 - 1.0

    def forward(self, x: Tensor) -> Tensor:
        """Predict offsets. Shape: :math:`(B, 2, P, P)` -> :math:`(B, 8)`."""
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[-2:] != (self.patch_size, self.patch_size):
            raise ValueError(
                f"expected input of shape (B, 2, {self.patch_size}, {self.patch_size}), got {tuple(x.shape)}"
            )
        return self.head(self.features(self.normalize(x)))
