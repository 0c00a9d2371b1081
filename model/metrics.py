"""Corner-error metrics (MACE), as defined in CONVENTIONS.md.

All functions take numpy arrays (callers convert torch tensors with ``.detach().cpu().numpy()``).
Offsets are in the label order [dx_TL, dy_TL, dx_TR, dy_TR, dx_BR, dy_BR, dx_BL, dy_BL], in
pixels. Because predicted and true corners share the same unperturbed corner, the distance between
predicted and true corner positions equals the distance between predicted and true offsets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["corner_errors", "pair_errors", "mace", "summarize"]


def _as_offsets(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim == 3 and a.shape[1:] == (4, 2):
        a = a.reshape(len(a), 8)
    if a.ndim != 2 or a.shape[1] != 8:
        raise ValueError(f"offsets must have shape (N, 8) or (N, 4, 2), got {np.shape(x)}")
    return a


def corner_errors(pred_offsets: Any, true_offsets: Any) -> np.ndarray:
    """Euclidean distance per corner between predicted and true corners, shape (N, 4), pixels."""
    p, t = _as_offsets(pred_offsets), _as_offsets(true_offsets)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs true {t.shape}")
    d = (p - t).reshape(len(p), 4, 2)
    return np.sqrt((d**2).sum(axis=2))


def pair_errors(pred_offsets: Any, true_offsets: Any) -> np.ndarray:
    """Average corner error of each pair, shape (N,): mean over the 4 corners."""
    return corner_errors(pred_offsets, true_offsets).mean(axis=1)


def mace(pred_offsets: Any, true_offsets: Any) -> float:
    """Mean Average Corner Error: mean over pairs of the mean over corners of the corner distance."""
    e = pair_errors(pred_offsets, true_offsets)
    if e.size == 0:
        raise ValueError("mace of zero pairs is undefined")
    return float(e.mean())


def summarize(errors: Any, failures: int | Any = 0) -> dict[str, float | int]:
    """Summary of per-pair errors.

    ``errors``: per-pair average corner errors (N,), or per-corner errors (N, 4) which are averaged
    over corners first. ``failures``: a count, or a boolean mask (N,) of pairs where the method
    returned no homography (already scored as identity by the caller).

    Returns ``{"mean", "median", "p95", "failures", "n"}`` (pixels; NaN statistics when n == 0).
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim == 2:
        e = e.mean(axis=1)
    e = e.reshape(-1)
    f = np.asarray(failures)
    n_fail = int(f.sum()) if f.ndim > 0 else int(f)
    if e.size == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "p95": nan, "failures": n_fail, "n": 0}
    return {
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "p95": float(np.percentile(e, 95)),
        "failures": n_fail,
        "n": int(e.size),
    }
