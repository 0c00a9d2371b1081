"""The ``dataset-<version>-models`` artifact: the models trained and tested on a dataset version.

Published by the ``train-model`` flow once a model is registered, from the tracking store itself
(:func:`homogen.model.lineage.dataset_lineage`), so each new version of the artifact lists every
model of every run so far, not only this flow's. Beside ``dataset-<version>-report`` (what the data
is) it says what was learnt from it; the evaluation artifact of each model names both keys.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from homogen.flows.ui import artifact_key
from homogen.redaction import redact

__all__ = ["models_key", "publish_dataset_models"]


def models_key(version: str) -> str:
    """``dataset-<version>-models``."""
    return artifact_key("dataset", version, "models")


def publish_dataset_models(version: str, tracking_uri: str | None) -> str | None:
    """Create the next version of the artifact; returns its Markdown, or None when the tracking store
    could not be read (logged as a warning: the model is registered, only this summary is missing)."""
    from homogen.model.lineage import dataset_lineage

    try:
        markdown = dataset_lineage(version, tracking_uri).to_markdown()
    except Exception as exc:  # noqa: BLE001 - a summary must never fail the training that it summarises
        get_run_logger().warning(
            "could not list the models of dataset %s: %s", version, redact(f"{type(exc).__name__}: {exc}")[:300]
        )
        return None
    create_markdown_artifact(
        markdown, key=models_key(version), description=f"models trained and tested on dataset {version}"
    )
    return markdown
