"""The evaluation files of a run: what a person opens to see how the model did on the test split.

:func:`write_evaluation` writes, into one folder (logged as the run's ``evaluation/`` artifacts):

- ``test_pairs.png``: the first test pairs with the true (green) and predicted (red)
  quadrilaterals, drawn by :func:`homogen.render.sample_grid` (the dataset preview's renderer);
- ``corner_errors.png``: histogram of per-corner errors, one curve per method;
- ``methods/errors_<method>.png``, ``methods/overlay_<method>.png``: per method, its MACE histogram
  and a few pairs with A warped onto B (:mod:`homogen.model.plots`);
- ``evaluation.md`` / ``evaluation.json``: MACE mean, median, p95, failures and ms/pair per method
  (and what ``<method>+refine`` gained and cost);
- ``dataset_manifest.json``: the store's manifest (credentials removed).

Everything comes from one :class:`~homogen.model.evaluate.TestScores`: nothing is scored here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from homogen.redaction import redact

__all__ = ["error_histogram_png", "split_indices", "test_pairs_png", "write_evaluation"]


def split_indices(ds: Any, split: str, n: int | None = None) -> np.ndarray:
    """Store indices of the first ``n`` pairs of ``split``, in store order (the order of ``load_split``)."""
    from homogen.schema import SPLIT_CODES

    codes = ds.read(0, len(ds), ("split",))["split"]
    idx = np.flatnonzero(codes == SPLIT_CODES[split])
    return idx if n is None else idx[:n]


def test_pairs_png(
    ds: Any, predicted: np.ndarray, path: str | os.PathLike, n: int = 8, indices: np.ndarray | None = None
) -> str:
    """The first ``n`` test pairs of ``ds`` with predicted offsets ``predicted`` ((>=n, 8), store order) drawn in red.

    ``indices``: the store indices of the test pairs, when the caller has them (:func:`split_indices`).
    """
    from homogen.render import sample_grid, save_png

    n = min(n, len(predicted))  # a run scored on fewer pairs shows those
    idx = split_indices(ds, "test", n) if indices is None else np.asarray(indices)[:n]
    return save_png(sample_grid(ds, indices=idx, predicted_offsets=np.asarray(predicted)[: len(idx)]), os.fspath(path))


def error_histogram_png(
    corner_errors_by_method: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "corner errors (test)"
) -> str:
    """Histogram PNG of per-corner errors (pixels), one step curve per method. Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from homogen.model.evaluate import NETWORK, method_label

    vals = {k: np.asarray(v, np.float64).reshape(-1) for k, v in corner_errors_by_method.items()}
    hi = max([float(np.percentile(v, 99)) for v in vals.values() if v.size] + [1.0])
    bins = np.linspace(0, hi, 41)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)
    for k, v in vals.items():
        if v.size:
            ax.hist(
                np.clip(v, 0, hi),
                bins=bins,
                histtype="step",
                linewidth=1.6 if k == NETWORK else 1.0,
                label=f"{method_label(k)} (mean {v.mean():.2f} px)",
            )
    ax.set_xlabel("corner error (px)")
    ax.set_ylabel("corners")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(os.fspath(path))
    plt.close(fig)
    return os.fspath(path)


def write_evaluation(folder: str | os.PathLike, ds: Any, scores: Any, grid_pairs: int = 8) -> list[str]:
    """Write the evaluation files of the module docstring for ``scores`` (a ``TestScores`` of ``ds``); returns their paths."""
    from homogen.model.evaluate import NETWORK, format_table
    from homogen.model.metrics import corner_errors

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    summary = scores.summary()
    paths = []
    idx = split_indices(ds, "test", len(scores.pairs))  # the scored pairs' store indices, read once
    if NETWORK in scores.results:
        pred = scores.results[NETWORK]["pred"]
        paths.append(test_pairs_png(ds, pred, out / "test_pairs.png", n=grid_pairs, indices=idx))
    errs = {k: corner_errors(r["pred"], scores.offsets) for k, r in scores.results.items() if "pred" in r}
    paths.append(
        error_histogram_png(errs, out / "corner_errors.png", title=f"test corner errors, dataset {ds.version}")
    )
    from homogen.model.plots import write_plots  # per method: MACE histogram, A warped onto B (issue 12)
    from homogen.model.report import refinement_report

    paths += write_plots(out / "methods", ds, scores.results, scores.pairs, idx)
    gains = refinement_report(summary)
    (out / "evaluation.md").write_text(
        format_table(summary) + "\n" + ("\nRefinement:\n" + "\n".join(gains) + "\n" if gains else "")
    )
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2))
    (out / "dataset_manifest.json").write_text(redact(json.dumps(ds.manifest, indent=2, default=str)))
    return paths + [str(out / n) for n in ("evaluation.md", "evaluation.json", "dataset_manifest.json")]
