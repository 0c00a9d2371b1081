"""The ``train-model`` flow: train HomographyNet on a store, evaluate it against the baselines, register it.

A flow of its own so that it can run where the GPU is: the parent ``generate-and-train`` calls it
in-process by default, or as the deployment ``train-model/gpu`` on a GPU work pool
(``PipelineConfig.train_deployment``; see ``deployments/gpu.py``). Then the store must be
reachable from the GPU machine (a shared path or an fsspec URL) and MLflow must be a shared
tracking server, not a local SQLite file.

Artifact: ``model-<name>-evaluation`` (markdown: MACE of the network and every baseline on the
same test pairs, the registered version and the champion decision).

Run directly: ``python -m homogen.flows.train STORE``.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from homogen.flows.config import QUICK_TRAIN, EvaluateConfig, TrackingConfig
from homogen.flows.model_tasks import evaluate_task, register_task, train_task
from homogen.flows.ui import artifact_key, rename_current_run
from homogen.stores import open_dataset
from homogen.model.evaluate import NETWORK, format_table
from homogen.model.config import TrainConfig

FLOW_RUN_TAG = "prefect_flow_run_id"
"""MLflow run tag holding the ``train-model`` flow run id (how a parent finds a remote run's model)."""


def run_name(config: TrainConfig, version: str | None = None) -> str:
    """``train epochs=2 width=0.25``, then ``train v=abc123def456 epochs=2 width=0.25``."""
    return "train" + (f" v={version}" if version else "") + f" epochs={config.epochs} width={config.width:g}"


def _initial_run_name() -> str:
    config = flow_run.parameters.get("config")
    if isinstance(config, dict):
        config = TrainConfig.model_validate(config)
    return run_name(config if isinstance(config, TrainConfig) else QUICK_TRAIN)


def evaluation_markdown(version: str, results: dict, tracked) -> str:
    """Evaluation table plus the registry outcome."""
    return "\n".join([
        f"# HomographyNet on dataset `{version}`",
        "",
        format_table(results),
        "",
        f"Registered **{tracked.model_uri or '-'}** as version **{tracked.model_version}**"
        f" (MLflow run `{tracked.run_id}`); champion: **{tracked.champion}** ({tracked.promotion}).",
    ])


@flow(name="train-model", flow_run_name=_initial_run_name)
def train_model(
    dataset: str,
    config: TrainConfig = QUICK_TRAIN,
    evaluate: EvaluateConfig = EvaluateConfig(),
    tracking: TrackingConfig = TrackingConfig(),
) -> dict:
    """Train on the store ``dataset`` (path or URL), evaluate on its test split, register in MLflow.

    Returns ``{"model_name", "model_version", "model_uri", "run_id", "champion", "promotion",
    "dataset_version", "test_mace"}``.
    """
    version = open_dataset(dataset).version
    rename_current_run(run_name(config, version))
    result = train_task(dataset, config, progress_key=artifact_key("train", version, "epochs"))
    evaluation = evaluate_task(dataset, result.model, evaluate.methods, evaluate.limit)
    tags = {FLOW_RUN_TAG: str(flow_run.id)} if flow_run.id else {}
    tracked = register_task(
        result, dataset, evaluation, config, tracking.uri, tracking.experiment, tracking.model_name,
        run_name=f"{tracking.model_name} on {version}", tags=tags,
    )
    create_markdown_artifact(
        evaluation_markdown(version, evaluation["results"], tracked),
        key=artifact_key("model", tracking.model_name, "evaluation"),
        description=f"{tracking.model_name} v{tracked.model_version} on dataset {version}",
    )
    return {
        "model_name": tracking.model_name,
        "model_version": tracked.model_version,
        "model_uri": tracked.model_uri,
        "run_id": tracked.run_id,
        "champion": tracked.champion,
        "promotion": tracked.promotion,
        "dataset_version": version,
        "test_mace": evaluation["results"][NETWORK]["mean"],
    }


if __name__ == "__main__":
    print(train_model(sys.argv[1]))
