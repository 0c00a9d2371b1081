"""Evaluate HomographyNet and the classical baselines on the same test pairs.

Every method sees the same pairs; MACE and friends come from :mod:`homogen.model.metrics`. A baseline that
returns no homography is scored as the identity (zero offsets) and counted as a failure
(CONVENTIONS.md). Timings are wall-clock per pair in this process: baselines one pair at a time,
the network in batches of ``batch_size`` on the model's device (``torch.set_num_threads`` decides
how many CPU cores it uses).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from homogen.model.baselines import BASELINES
from homogen.model.metrics import pair_errors, summarize

__all__ = [
    "DEFAULT_METHODS",
    "NETWORK",
    "evaluate_methods",
    "format_table",
    "load_test_pairs",
    "method_label",
    "predict_baseline",
    "predict_network",
]

DEFAULT_METHODS: tuple[str, ...] = ("identity", "orb", "sift", "ecc")
NETWORK = "homographynet"
"""Result key of the network (when ``model`` is given)."""

_LABELS = {
    "identity": "identity",
    "orb": "ORB (500) + RANSAC",
    "sift": "SIFT + ratio + RANSAC",
    "ecc": "ECC (homography)",
    NETWORK: "HomographyNet",
}


def method_label(name: str) -> str:
    """Human-readable name of a method key."""
    return _LABELS.get(name, name)


def load_test_pairs(store: Any, split: str | None = "test", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs uint8 (n,2,P,P), offsets f32 (n,8))`` of ``split`` (None: all), the first ``limit`` in store order.

    ``store``: a path/URL or an opened :class:`homogen.stores.Dataset`. Reads chunk by chunk and
    stops once ``limit`` pairs are in.
    """
    from homogen.stores import open_dataset

    ds = open_dataset(str(store)) if isinstance(store, (str, bytes)) or hasattr(store, "__fspath__") else store
    p = ds.patch_size
    pairs, offsets, n = [np.empty((0, 2, p, p), np.uint8)], [np.empty((0, 8), np.float32)], 0
    for block in ds.iter_chunks(split=split, fields=("pairs", "offsets")):
        take = len(block["pairs"]) if limit is None else min(len(block["pairs"]), limit - n)
        pairs.append(np.asarray(block["pairs"][:take]))
        offsets.append(np.asarray(block["offsets"][:take], dtype=np.float32))
        n += take
        if limit is not None and n >= limit:
            break
    return np.concatenate(pairs), np.concatenate(offsets)


def predict_baseline(
    method: str | Callable, pairs: np.ndarray, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Run one baseline on every pair.

    Returns ``(offsets (n,8) f32 with failures as zeros, failed (n,) bool, seconds)``.
    """
    fn = BASELINES[method] if isinstance(method, str) else method
    n = len(pairs)
    out = np.zeros((n, 8), np.float32)
    failed = np.zeros(n, bool)
    t0 = time.perf_counter()
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
    return out, failed, time.perf_counter() - t0


def predict_network(
    model: Any, pairs: np.ndarray, batch_size: int = 64, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, float]:
    """Offsets (n,8) f32 predicted by a torch module taking uint8 (B,2,P,P); and the seconds it took.

    The model is put in eval mode and run under ``torch.inference_mode`` on its own device.
    """
    import torch

    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    outs = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(pairs), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(pairs[s : s + batch_size])).to(device)
            outs.append(model(x).float().cpu().numpy())
            if progress is not None:
                progress(len(x))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return (np.concatenate(outs) if outs else np.zeros((0, 8), np.float32)).astype(np.float32), seconds


def evaluate_methods(
    pairs: np.ndarray,
    offsets: np.ndarray,
    methods: Iterable[str] = DEFAULT_METHODS,
    model: Any = None,
    batch_size: int = 64,
    progress: bool = False,
    return_predictions: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score every method (and the network, when ``model`` is a torch module) on the same pairs.

    Args:
        pairs: uint8 (n, 2, P, P), channel 0 = A, 1 = B.
        offsets: true offsets (n, 8) in label order.
        methods: baseline keys of :data:`homogen.model.baselines.BASELINES`.
        model: optional torch module (uint8 (B,2,P,P) -> (B,8) offsets); result key ``"homographynet"``.
        batch_size: network batch size.
        progress: show a tqdm bar per method (stderr).
        return_predictions: also put ``"pred"`` (n,8) and ``"errors"`` (n,) arrays in each result.

    Returns:
        ``{name: {"mean", "median", "p95", "failures", "n", "ms_per_pair"}}`` in pixels and
        milliseconds, the network first when present, then ``methods`` in order.
    """
    pairs = np.asarray(pairs)
    offsets = np.asarray(offsets, dtype=np.float32)
    if pairs.ndim != 4 or pairs.shape[1] != 2 or len(pairs) != len(offsets):
        raise ValueError(f"expected pairs (n,2,P,P) and offsets (n,8), got {pairs.shape} and {offsets.shape}")
    methods = list(methods)
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(BASELINES)}")
    n = len(pairs)
    results: dict[str, dict[str, Any]] = {}

    def bar(name: str):
        if not progress:
            return None, None
        from tqdm.auto import tqdm

        b = tqdm(total=n, desc=method_label(name), unit="pair", leave=False)
        return b, b.update

    def record(name: str, pred: np.ndarray, failed: np.ndarray | int, seconds: float) -> None:
        errors = pair_errors(pred, offsets) if n else np.zeros(0)
        r: dict[str, Any] = dict(summarize(errors, failed))
        r["ms_per_pair"] = 1000.0 * seconds / n if n else float("nan")
        if return_predictions:
            r["pred"], r["errors"] = pred, errors
        results[name] = r

    if model is not None:
        b, cb = bar(NETWORK)
        pred, seconds = predict_network(model, pairs, batch_size=batch_size, progress=cb)
        if b is not None:
            b.close()
        record(NETWORK, pred, 0, seconds)
    for m in methods:
        b, cb = bar(m)
        pred, failed, seconds = predict_baseline(m, pairs, progress=cb)
        if b is not None:
            b.close()
        record(m, pred, failed, seconds)
    return results


def format_table(results: dict[str, dict[str, Any]], order: Sequence[str] | None = None) -> str:
    """Markdown table: method | MACE mean | median | p95 | failures | ms/pair (pixels, milliseconds)."""
    rows = [
        "| method | MACE mean (px) | median (px) | p95 (px) | failures | ms / pair |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in order or list(results):
        r = results[name]
        fails = "-" if name in (NETWORK, "identity") else f"{r['failures']}/{r['n']}"
        rows.append(
            f"| {method_label(name)} | {r['mean']:.2f} | {r['median']:.2f} | {r['p95']:.2f} | {fails} | "
            f"{r['ms_per_pair']:.2f} |"
        )
    return "\n".join(rows)
