"""The ``validate-dataset`` flow: every check on a finished store, the report as an artifact.

The run fails (:class:`ValidationFailed`) when any check fails, after the report is attached, so
the reason is one click away in the UI. Artifacts: ``dataset-<version>-report`` (markdown: summary,
quarantined images and why, label statistics, every check with its counts and detail, the sample
grid) and ``dataset-<version>-samples`` (markdown: the grid alone, 2 pairs a row).

Run directly: ``python -m homogen.flows.validate STORE``.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import opaque

from homogen.flows.entry import prefect_settings
from homogen.flows.tasks import data_url, label_statistics, open_store, sample_grid_png, validate_task
from homogen.flows.ui import (
    artifact_key,
    checks_markdown,
    dataset_report_markdown,
    rename_current_run,
    samples_markdown,
)
from homogen.store import Dataset


class ValidationFailed(RuntimeError):
    """A dataset failed at least one check; the message names them and where the report is."""


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(ds: Dataset, report) -> str:
    """Attach the dataset report and the sample grid of the opened store ``ds`` (markdown artifacts) to this
    run; returns the report.

    The pairs are read only when the report found every chunk readable: ``ds`` is opened without the
    chunk check, and a chunk file linked to ``/dev/zero`` would be read until memory runs out.
    """
    readable = report.check("readable").passed is not False
    stats = label_statistics(ds) if readable else None
    grid = data_url(sample_grid_png(ds, n=8)) if readable and len(ds) else None
    markdown = dataset_report_markdown(ds.manifest, checks_markdown(report), stats, grid)
    verdict = "passed" if report.passed else "FAILED: " + ", ".join(report.failed_checks)
    create_markdown_artifact(
        markdown,
        key=artifact_key("dataset", ds.version, "report"),
        description=f"dataset {ds.version}: validation {verdict}",
    )
    if grid:
        create_markdown_artifact(
            samples_markdown(grid),
            key=artifact_key("dataset", ds.version, "samples"),
            description=f"sample pairs of dataset {ds.version}",
        )
    return markdown


@flow(name="validate-dataset", flow_run_name="validate {uri}")
def validate_dataset_flow(uri: str, regenerate: int = 8, source_root: str | None = None) -> dict:
    """Validate the store at ``uri``; returns the report as a dict, fails the run if a check fails.

    Args:
        uri: a finished store (path or fsspec URL).
        regenerate: pairs remade from the source images and compared byte for byte (0: skip).
        source_root: where the source images are now, if not where the manifest says.
    """
    # opened once, without the chunk check: the validation lists the chunks and reports each damaged one
    with open_store(uri, check_chunks=False) as ds:
        report = validate_task(opaque(ds), regenerate, source_root)
        rename_current_run(f"validate v={report.dataset_version}")
        publish_report(opaque(ds), report)
    log = get_run_logger()
    if not report.passed:
        raise ValidationFailed(
            f"dataset {report.dataset_version} at {report.uri} failed checks {report.failed_checks}: "
            f"see the artifact {artifact_key('dataset', report.dataset_version, 'report')}"
        )
    log.info("dataset %s passed every check (%d pairs)", report.dataset_version, report.num_pairs)
    return report.to_dict()


if __name__ == "__main__":
    with prefect_settings():
        print(validate_dataset_flow(sys.argv[1])["passed"])
