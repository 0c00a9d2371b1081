"""Helpers shared by test modules (imported as ``from helpers import ...``; tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from homogen.config import SAMPLE_ROOT

PHOTOS = sorted((Path(SAMPLE_ROOT) / "train2017").glob("*.jpg"))


def recipe_pairs(n: int, rho: float, patch: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs cut from the bundled photographs by the recipe of CONVENTIONS.md, written out here
    independently of homogen.generate: uint8 ``(n, 2, P, P)`` and their offsets float32 ``(n, 8)``."""
    rng = np.random.default_rng(seed)
    pairs = np.empty((n, 2, patch, patch), np.uint8)
    offsets = rng.uniform(-rho, rho, size=(n, 8)).astype(np.float32)
    for i in range(n):
        img = cv2.resize(cv2.imread(str(PHOTOS[i % len(PHOTOS)]), cv2.IMREAD_GRAYSCALE), (320, 240), interpolation=cv2.INTER_AREA)
        m = int(np.ceil(rho))
        x, y = int(rng.integers(m, 320 - patch - m + 1)), int(rng.integers(m, 240 - patch - m + 1))
        c = np.float32([[x, y], [x + patch, y], [x + patch, y + patch], [x, y + patch]])
        h_ab = cv2.getPerspectiveTransform(c, c + offsets[i].reshape(4, 2))
        warped = cv2.warpPerspective(img, np.linalg.inv(h_ab), (320, 240))
        pairs[i, 0] = img[y : y + patch, x : x + patch]
        pairs[i, 1] = warped[y : y + patch, x : x + patch]
    return pairs, offsets
