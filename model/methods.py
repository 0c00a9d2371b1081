"""Every evaluation method by name: one registry, built explicitly, and the one check of method names.

:data:`METHODS` is made by :func:`build_methods` when this module is imported, from what it lists:

- the classical baselines (:data:`homogen.model.baselines.BASELINES`: identity, ORB, SIFT, ECC), one
  pair at a time;
- ``direct-mse``, ``direct-ncc``: :func:`homogen.model.direct.direct_alignment` from the identity,
  batched over pairs;
- ``<method>+refine`` for each of those: the method, then :func:`homogen.model.refine.refine`
  started from its estimate; its time is the method's plus the refinement's.

:data:`NETWORK_REFINE` (``network+refine``) is the network's estimate refined; it needs a model, so
:func:`homogen.model.evaluate.evaluate_methods` runs it after the network (:func:`refine_estimate`).
Importing this module registers nothing anywhere else and imports no other evaluation module:
:mod:`homogen.model.evaluate` imports it, never the reverse. torch is imported when a direct or
refined method runs, not here (the flows check method names without it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from homogen.model.baselines import BASELINES

__all__ = [
    "DIRECT",
    "METHODS",
    "NETWORK_REFINE",
    "REFINE",
    "Method",
    "base_method",
    "build_methods",
    "check_methods",
    "per_pair",
    "prepare",
    "refine_estimate",
]

REFINE = "+refine"
NETWORK_REFINE = "network" + REFINE
DIRECT: dict[str, str] = {"direct-mse": "mse", "direct-ncc": "ncc"}
"""Method name -> loss of the direct aligner."""

LABELS = {
    "identity": "identity",
    "orb": "ORB (500) + RANSAC",
    "sift": "SIFT + ratio + RANSAC",
    "ecc": "ECC (homography)",
}


@dataclass(frozen=True)
class Method:
    """An evaluation method: ``run(pairs, progress) -> (offsets (n,8) f32, failed (n,) bool)``.

    ``pairs`` is uint8 :math:`(n, 2, P, P)`; ``progress(k)`` is called as pairs are done (may be None).
    """

    name: str
    label: str
    run: Callable[[np.ndarray, Callable[[int], None] | None], tuple[np.ndarray, np.ndarray]]


def per_pair(fn: Callable, pairs: np.ndarray, progress: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """``fn(a, b) -> offsets (8,) or None`` on every pair; an exception or None is a failure (zero offsets)."""
    n = len(pairs)
    out = np.zeros((n, 8), np.float32)
    failed = np.zeros(n, bool)
    for i in range(n):
        try:
            r = fn(pairs[i, 0], pairs[i, 1])
        except Exception:  # a method must never take the evaluation down: a failure, scored as identity
            r = None
        if r is None:
            failed[i] = True
        else:
            out[i] = r
        if progress is not None:
            progress(1)
    return out, failed


def method(name: str, fn: Callable, label: str | None = None, batched: bool = False) -> Method:
    """A :class:`Method` called ``name`` from a function.

    Args:
        fn: per pair (``batched=False``): ``fn(a, b) -> offsets (8,) or None`` on two uint8 (P, P)
            patches, None meaning failure; batched: ``fn(pairs (n,2,P,P) uint8) -> offsets (n,8)``
            or ``(offsets (n,8), failed (n,) bool)``.
        label: human-readable name for tables and plots (default ``name``).
    """
    if not batched:
        return Method(name, label or name, lambda pairs, progress=None: per_pair(fn, pairs, progress))

    def run(pairs: np.ndarray, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        out = fn(pairs)
        pred, failed = out if isinstance(out, tuple) else (out, np.zeros(len(pairs), bool))
        if progress is not None:
            progress(len(pairs))
        return np.asarray(pred, np.float32).reshape(len(pairs), 8), np.asarray(failed, bool).reshape(len(pairs))

    return Method(name, label or name, run)


def base_method(name: str) -> str | None:
    """``'sift'`` for ``'sift+refine'``; None for a name without the suffix."""
    return name[: -len(REFINE)] if name.endswith(REFINE) else None


def prepare(methods: Iterable[str]) -> None:
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


def _refined(base: Method) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def run(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pred, failed = base.run(pairs, None)
        out, still, _ = refine_estimate(pairs, pred, failed)
        return out, still

    return run


def build_methods() -> dict[str, Method]:
    """The registry: the baselines, the direct aligners, then each of those refined (module docstring)."""
    methods = {name: method(name, fn, LABELS.get(name)) for name, fn in BASELINES.items()}
    for name, loss in DIRECT.items():
        methods[name] = method(name, _direct(loss), f"direct {loss.upper()} (Adam, pyramid)", batched=True)
    for base in list(methods.values()):
        name = base.name + REFINE
        methods[name] = method(name, _refined(base), f"{base.label} + refine", batched=True)
    return methods


METHODS: Mapping[str, Method] = build_methods()
"""Every method the evaluation knows, by name, in table order."""


def check_methods(names: Iterable[str], network: bool, hint: str = "", needs: str = "with a model") -> list[str]:
    """The one check of method names (CLI, flows, evaluation): ``names`` as a list, each one known.

    Args:
        network: a network is scored too, so :data:`NETWORK_REFINE` is allowed.
        hint: appended to the message after ``network+refine`` is refused (how to give a network).
        needs: what ``network+refine`` needs, in the list of known names (``"with --model"``).

    Raises:
        ValueError: naming the unknown names and listing the known ones.
    """
    names = list(names)
    if NETWORK_REFINE in names and not network:
        raise ValueError(f"method {NETWORK_REFINE} refines a network's estimate, and there is no network{hint}")
    bad = [m for m in names if m not in METHODS and m != NETWORK_REFINE]
    if bad:
        raise ValueError(
            f"unknown method(s) {', '.join(bad)}: choose from {', '.join(METHODS)} or {NETWORK_REFINE} ({needs})"
        )
    return names
