"""What people see in the Prefect UI: run names, the progress artifact, the dataset report.

Artifact keys (the Artifacts page groups the versions of a key across runs):
``dataset-<version>-progress`` (shards done, updated as shards finish), ``dataset-<version>-report``
(markdown: counts, quarantine, label statistics, every check, the sample grid),
``dataset-<version>-samples`` (markdown: the grid alone) and ``model-<name>-v<version>-evaluation``
(one per registered model version, made by :mod:`homogen.flows.train`).

Rendering rules, checked in the Prefect 3.8 UI (headless Chromium): the grid is a markdown image
of a ``data:`` URL (an image artifact prints its URL as text under the picture: 400 KB of base64),
2 pairs a row so that it shows at its own size (~850 px) in the artifact pane, where wider images
are shrunk and their captions become unreadable; table cells do not wrap, so long text (a check's
detail) goes in a list under its table, never in a table column.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError

from homogen.check_report import format_example, one_line

R = TypeVar("R")


def artifact_key(*parts: Any) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) from ``parts``: ``dataset-abc123-report``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run; the ``flows`` logger when a task's ``.fn`` is called directly."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("flows")


def rename_current_run(name: str) -> None:
    """Rename the running flow run (once facts known only inside the run, like the version, are in)."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, name=name)


PROGRESS_INTERVAL_S = 2.0
"""Least time between two updates of a progress artifact (each is an API call the flow waits for)."""


def with_progress(
    results: Iterable[R], total: int, key: str, description: str, interval_s: float = PROGRESS_INTERVAL_S
) -> Iterator[R]:
    """``results`` passed through as they come, while a progress artifact ``key`` shows the share of ``total`` done.

    The artifact is updated at most once every ``interval_s`` seconds, and always at the end (100 %),
    so that many short shards do not cost an API round trip each. Outside a Prefect run (a task's
    ``.fn`` called directly) there is no artifact.
    """
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        yield from results
        return
    artifact = create_progress_artifact(0.0, key=key, description=description)
    last = time.monotonic()
    for done, result in enumerate(results, start=1):
        now = time.monotonic()
        if done == total or now - last >= interval_s:
            update_progress_artifact(artifact, 100.0 * done / max(1, total))
            last = now
        yield result


def markdown_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """A markdown table (cells rendered with ``str``; pipes escaped)."""
    head = list(header)
    lines = ["| " + " | ".join(one_line(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(one_line(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_summary_markdown(manifest: dict) -> str:
    """Version, counts, recipe and quarantined images (with reasons) of a finished store's manifest."""
    s = manifest["config"]["sampling"]
    splits = manifest.get("splits", {})
    rows = [
        ("dataset version", f"`{manifest['dataset_version']}`"),
        ("store", f"`{manifest['config']['output']}` ({manifest['format']})"),
        (
            "pairs",
            f"{manifest['num_pairs']} ({', '.join(f'{k} {splits[k]}' for k in sorted(splits, key=_split_order))})",
        ),
        ("images", f"{manifest['num_images']} used, {len(manifest['quarantine'])} quarantined"),
        ("shards", len(manifest["shards"])),
        (
            "recipe",
            f"{s['image_width']}x{s['image_height']}, P={s['patch_size']}, rho={s['rho']}, "
            f"{s['pairs_per_image']} pairs/image, seed {s['seed']}, photometric {s['photometric']}",
        ),
        ("source", f"`{manifest['source']['root']}` (digest {manifest['source']['digest'][:16]})"),
    ]
    out = [f"# Dataset `{manifest['dataset_version']}`", ""]
    out += [f"- **{name}**: {one_line(value)}" for name, value in rows]
    quarantine = manifest.get("quarantine", [])
    out += ["", f"## Quarantined images ({len(quarantine)})", ""]
    out += [f"- image {q['image_id']} `{one_line(q['path'])}`: {one_line(q['reason'])}" for q in quarantine] or ["none"]
    return "\n".join(out)


def _split_order(name: str) -> tuple[int, str]:
    return (("train", "val", "test").index(name) if name in ("train", "val", "test") else 3, name)


def label_statistics_markdown(stats: list[dict] | None, rho: float) -> str:
    """The label statistics table; a uniform law on [-rho, rho] has mean 0 and std rho/sqrt(3).
    ``stats`` None: not computed, the store has chunks that cannot be read (the check ``readable``)."""
    expected = f"uniform on [-{rho:g}, {rho:g}]: mean 0, std {rho / 3**0.5:.2f}"
    if stats is None:
        return f"## Label statistics (px; {expected})\n\nNot computed: chunks of the store cannot be read (`readable`)."
    rows = ((s["label"], f"{s['mean']:.2f}", f"{s['std']:.2f}", f"{s['min']:.2f}", f"{s['max']:.2f}") for s in stats)
    return "\n".join(
        [f"## Label statistics (px; {expected})", "", markdown_table(("label", "mean", "std", "min", "max"), rows)]
    )


def checks_markdown(report) -> str:
    """A validation report (:class:`homogen.validate.ValidationReport`) for the UI: verdict, a table of
    counts (check, result, samples checked, failed), then each check's detail and failing examples as lists."""
    verdict = "PASSED" if report.passed else f"FAILED ({', '.join(report.failed_checks)})"
    results = {True: "pass", False: "**FAIL**", None: "n/a"}
    lines = [
        f"## Validation of dataset {report.dataset_version}: {verdict}",
        "",
        f"Store `{report.uri}`, {report.num_pairs} pairs.",
        "",
        markdown_table(
            ("check", "result", "samples checked", "failed"),
            ((c.name, results[c.passed], c.checked, c.failed) for c in report.checks),
        ),
        "",
        "### What each check found",
        "",
    ]
    lines += [f"- **{c.name}** ({results[c.passed]}): {one_line(c.detail)}" for c in report.checks]
    for c in report.checks:
        if c.passed is False and c.examples:
            lines += ["", f"Examples for **{c.name}**:", ""]
            lines += [f"- {one_line(format_example(e))}" for e in c.examples]
    return "\n".join(lines)


SAMPLES_LEGEND = (
    "Each tile: pair number, source image id and split, then patch A and patch B. On A, the perturbed "
    "quadrilateral in green is the part of A that B shows (A sits on a dark margin where its corners "
    "can fall); on B, the same quadrilateral is B's own border."
)


def samples_markdown(grid_url: str) -> str:
    """The sample grid as a markdown image (renders in the Prefect UI; no URL printed), with its legend."""
    return "\n".join(
        ["## Sample pairs (true quadrilateral in green)", "", SAMPLES_LEGEND, "", f"![sample pairs]({grid_url})"]
    )


def dataset_report_markdown(manifest: dict, checks: str, stats: list[dict] | None, grid_url: str | None) -> str:
    """The dataset report: summary and quarantine, label statistics, ``checks`` (:func:`checks_markdown`), the sample grid."""
    parts = [
        dataset_summary_markdown(manifest),
        "",
        label_statistics_markdown(stats, manifest["config"]["sampling"]["rho"]),
        "",
        checks,
    ]
    if grid_url:
        parts += ["", samples_markdown(grid_url)]
    return "\n".join(parts)
