"""Evaluate HomographyNet and the other methods on the same test pairs.

Every method sees the same pairs; MACE and friends come from :mod:`homogen.model.metrics`. A method
that returns no homography is scored as the identity (zero offsets) and counted as a failure
(CONVENTIONS.md). Timings are wall-clock per pair in this process: per-pair methods one pair at a
time, batch methods and the network in batches on their device (``torch.set_num_threads`` decides
how many CPU cores they use).

Methods are looked up by name in :data:`homogen.model.methods.METHODS` (the one registry, built
explicitly there; re-exported here), and every list of names goes through
:func:`homogen.model.methods.check_methods`. :func:`predict_network` is the one predict loop of the
package (training's validation, the test scoring, the champion's scoring and ``homogen predict``).

:func:`score_test` is the one scoring of a run's test split: the network and every method on the
same pairs, once, after training (model selection having used ``val`` only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from homogen.model.methods import METHODS, NETWORK_REFINE, Method, check_methods, per_pair, prepare, refine_estimate
from homogen.model.metrics import pair_errors, summarize

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "NETWORK",
    "Method",
    "TestScores",
    "evaluate_methods",
    "format_table",
    "method_label",
    "predict_baseline",
    "predict_network",
    "score_test",
]

DEFAULT_METHODS: tuple[str, ...] = ("identity", "orb", "sift", "ecc")
NETWORK = "homographynet"
"""Result key of the network (when ``model`` is given)."""


def method_label(name: str) -> str:
    """Human-readable name of a method key."""
    if name == NETWORK:
        return "HomographyNet"
    if name == NETWORK_REFINE:
        return "HomographyNet + refine"
    return METHODS[name].label if name in METHODS else name


def predict_baseline(
    method: str | Callable, pairs: np.ndarray, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Run one method (a :data:`METHODS` name, or a per-pair function) on every pair.

    Returns ``(offsets (n,8) f32 with failures as zeros, failed (n,) bool, seconds)``.
    """
    t0 = time.perf_counter()
    if isinstance(method, str):
        pred, failed = METHODS[method].run(pairs, progress)
    else:
        pred, failed = per_pair(method, pairs, progress)
    return pred, failed, time.perf_counter() - t0


def predict_network(
    model: Any,
    pairs: np.ndarray | Iterable,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    *,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    channels_last: bool = False,
) -> tuple[np.ndarray, float]:
    """Offsets (n,8) f32 predicted by a torch module taking uint8 (B,2,P,P); and the seconds it took.

    The one predict loop of the package (training's validation uses it too). ``pairs``: a uint8
    array (n,2,P,P), cut into batches of ``batch_size``, or an iterable of batches (arrays or
    tensors (B,2,P,P), or ``(pairs, offsets)`` tuples of a loader, whose offsets are ignored).
    The model is put in eval mode and run under ``torch.inference_mode`` on its own device, with
    autocast (``amp``) and NHWC input (``channels_last``) when asked.
    """
    import contextlib

    import torch

    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if isinstance(pairs, np.ndarray):
        batches: Iterable = (pairs[s : s + batch_size] for s in range(0, len(pairs), batch_size))
    else:
        batches = pairs
    autocast = torch.autocast(device.type, dtype=getattr(torch, amp_dtype)) if amp else contextlib.nullcontext()
    outs = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
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
        methods: names in :data:`METHODS`.
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
    methods = check_methods(methods, network=model is not None, hint=": give a model")
    prepare(methods)  # direct alignment's imports happen before any timing
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
        net_pred, net_seconds = pred, seconds
    for m in methods:
        b, cb = bar(m)
        if m == NETWORK_REFINE:  # the network's estimate above, refined: its time plus the refinement's
            pred, failed, seconds = refine_estimate(pairs, net_pred)
            seconds += net_seconds
        else:
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


@dataclass
class TestScores:
    """The test split of one run, scored once: the pairs, their true offsets, every method's result.

    ``results``: ``{name: {"mean", "median", "p95", "failures", "n", "ms_per_pair", "pred", "errors"}}``
    (see :func:`evaluate_methods`), the network first under :data:`NETWORK`.
    """

    __test__ = False  # not a pytest class

    pairs: np.ndarray
    offsets: np.ndarray
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """``results`` without the per-pair arrays (what tables, JSON and the flow's artifacts show)."""
        return {k: {kk: vv for kk, vv in r.items() if kk not in ("pred", "errors")} for k, r in self.results.items()}


def score_test(
    dataset: Any,
    model: Any,
    methods: Iterable[str] = DEFAULT_METHODS,
    limit: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    version: str | None = None,
) -> TestScores:
    """Score ``model`` and ``methods`` on the ``test`` split of ``dataset`` (its first ``limit`` pairs), once.

    ``version``: the dataset version the model was trained on; the store must still hold it,
    before and after the test pairs are read (:mod:`homogen.model.dataset_pin`).

    Raises:
        ValueError: the store has no test pairs (the message names the store and the fix).
        DatasetChanged: the store holds another version than ``version``.
    """
    from homogen.model.data import as_dataset, load_split
    from homogen.model.dataset_pin import check_unchanged
    from homogen.redaction import redact

    ds = as_dataset(dataset)
    if version is not None:
        check_unchanged(ds, version, "test scoring")
    pairs, offsets = load_split(ds, "test", limit=limit)
    if version is not None:  # regenerated while the pairs were read: they may be of either version
        check_unchanged(ds, version, "test scoring")
    if not len(pairs):
        raise ValueError(
            f"store {redact(str(ds.uri))} has no test pairs to evaluate on: generate it from more images "
            f"or with a larger test_fraction"
        )
    results = evaluate_methods(
        pairs, offsets, methods=methods, model=model, batch_size=batch_size, progress=progress, return_predictions=True
    )
    return TestScores(pairs, offsets, results)
