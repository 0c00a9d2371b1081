"""The evaluation methods beyond the classical baselines: direct alignment and refinement.

Importing this module registers, in :data:`homogen.model.evaluate.METHODS`:

- ``direct-mse``, ``direct-ncc``: :func:`homogen.model.direct.direct_alignment` from the identity,
  batched over pairs;
- ``<method>+refine`` for every method registered before it (``sift+refine``, ``direct-ncc+refine``,
  ...): the method, then :func:`homogen.model.refine.refine` started from its estimate; its time
  is the method's plus the refinement's;
- :data:`NETWORK_REFINE` (``network+refine``) is the network's estimate refined; it needs a model,
  so :func:`homogen.model.evaluate.evaluate_methods` runs it after the network
  (:func:`refine_estimate`).

torch is imported when a method runs, not here (the flows import the evaluation without it).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from homogen.model.evaluate import METHODS, register_method

__all__ = ["DIRECT", "NETWORK_REFINE", "REFINE", "base_method", "prepare", "refine_estimate"]

REFINE = "+refine"
NETWORK_REFINE = "network" + REFINE
DIRECT: dict[str, str] = {"direct-mse": "mse", "direct-ncc": "ncc"}
"""Method name -> loss of the direct aligner."""


def base_method(name: str) -> str | None:
    """``'sift'`` for ``'sift+refine'``; None for a name without the suffix."""
    return name[: -len(REFINE)] if name.endswith(REFINE) else None


def prepare(methods: list[str] | tuple[str, ...]) -> None:
    """Import torch and kornia now if ``methods`` align directly, so that no method's timing pays for it."""
    if any(m in DIRECT or base_method(m) is not None for m in methods):
        import homogen.model.direct  # noqa: F401
        import homogen.model.refine  # noqa: F401


def _direct(loss: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def run(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from homogen.model.direct import direct_alignment

        return direct_alignment(pairs, loss=loss)

    return run


def refine_estimate(
    pairs: np.ndarray, pred: np.ndarray, failed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(offsets (n,8), failed (n,), seconds)`` of :func:`homogen.model.refine.refine` from ``pred``."""
    from homogen.model.refine import refine

    t0 = time.perf_counter()
    out, still = refine(pairs, pred, failed)
    return out, still, time.perf_counter() - t0


def _refined(base: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def run(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred, failed = METHODS[base].run(pairs, None)
        out, still, _ = refine_estimate(pairs, pred, failed)
        return out, still

    return run


for _name, _loss in DIRECT.items():
    register_method(_name, _direct(_loss), f"direct {_loss.upper()} (Adam, pyramid)", batched=True)
for _base in list(METHODS):
    if base_method(_base) is None:
        register_method(_base + REFINE, _refined(_base), f"{METHODS[_base].label} + refine", batched=True)
