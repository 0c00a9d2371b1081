"""The ``train-model`` flow: train HomographyNet on a store, evaluate it against the baselines, register it.

A flow of its own so that it can run where the GPU is: the parent ``generate-and-train`` calls it
in-process by default, or as the deployment ``train-model/gpu`` on a GPU work pool
(``PipelineConfig.train_deployment``; see ``deployments/gpu.py``). Then the store must be
reachable from the GPU machine (a shared path or an fsspec URL) and MLflow must be a shared
tracking server, not a local SQLite file.

The MLflow run opens before training and closes after registration: its metrics appear epoch by
epoch while the flow runs (:mod:`homogen.model.mlflow_run`); its Source is ``homogen flow train-model``.
Model selection uses the store's ``val`` split; the ``test`` split is scored once, after training.

Artifacts: one per registered model version, ``model-<name>-v<version>-evaluation`` (markdown: MACE of
the network and every method on the same test pairs, the version and the champion decision, the
dataset's artifact keys), and a new version of ``dataset-<version>-models`` (:mod:`homogen.flows.lineage`).

Run directly: ``python -m homogen.flows.train STORE``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import tempfile
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.utilities.annotations import opaque

from homogen.config import workdir
from homogen.flows.config import QUICK_TRAIN, EvaluateConfig, InvalidParameters, TrackingConfig, shareable_tracking_uri
from homogen.flows.entry import prefect_settings
from homogen.flows.events import model_registered
from homogen.flows.lineage import models_key, publish_dataset_models
from homogen.flows.model_tasks import evaluate_task, register_task, train_task
from homogen.flows.tasks import open_store
from homogen.flows.ui import artifact_key, rename_current_run
from homogen.model.config import TrainConfig
from homogen.model.evaluate import NETWORK, format_table
from homogen.redaction import redact

FLOW_RUN_TAG = "prefect_flow_run_id"
"""MLflow run tag holding the ``train-model`` flow run id (how a parent finds a remote run's model)."""

GPU_LIMIT = "gpu"
"""Prefect global concurrency limit held while a run trains and evaluates (one slot): with the limit
created (``python -m homogen.deployments.automations`` makes it, limit 1), two runs never train on
one GPU at once, the second waits. Without it (ephemeral mode), training does not wait."""


def gpu_slot():
    """One slot of the global concurrency limit ``gpu`` while training, where the server has it.

    Without it (ephemeral mode; a server where ``python -m homogen.deployments.automations`` never ran)
    training does not wait for other runs, and says so in one INFO line: Prefect's own answer is a
    WARNING on every run ("Concurrency limits ['gpu'] do not exist - skipping acquisition").
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.logging import get_run_logger

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            get_run_logger().info(
                "no %r concurrency limit on this Prefect server: this training does not wait for other runs "
                "(python -m homogen.deployments.automations creates it)",
                GPU_LIMIT,
            )
            return contextlib.nullcontext()
    return concurrency(GPU_LIMIT, occupy=1)


def not_registered(exc: Exception, result) -> RuntimeError:
    """The error of a run that trained but could not register: it says where the trained weights are."""
    ckpt = result.best_checkpoint or result.last_checkpoint
    return RuntimeError(
        f"trained, but not registered ({type(exc).__name__}: {redact(str(exc))[:400]}); "
        f"the checkpoint is at {ckpt} on {socket.gethostname()}"
    )


def run_name(config: TrainConfig, version: str | None = None) -> str:
    """``train epochs=2 width=0.25``, then ``train v=abc123def456 epochs=2 width=0.25``."""
    return "train" + (f" v={version}" if version else "") + f" epochs={config.epochs} width={config.width:g}"


def _initial_run_name() -> str:
    config = flow_run.parameters.get("config")
    if isinstance(config, dict):
        config = TrainConfig.model_validate(config)
    return run_name(config if isinstance(config, TrainConfig) else QUICK_TRAIN)


def _run_from_a_deployment() -> bool:
    """Whether this very flow run was created from a deployment (``train-model/gpu``), not called as a
    subflow in-process (``prefect.runtime.deployment.id`` would answer the parent's deployment there)."""
    ctx = FlowRunContext.get()
    return bool(ctx is not None and ctx.flow_run is not None and ctx.flow_run.deployment_id)


def check_worker_keeps_model(config: TrainConfig, tracking: TrackingConfig) -> None:
    """Refuse, before training, a dispatched run that would lose its model: a tracking store on this
    machine only, or checkpoints in the temporary folder a Prefect process worker removes after the run.

    Raises:
        InvalidParameters: naming what to set on the worker.
    """
    shareable_tracking_uri(tracking.uri, "this deployment")
    here, temp = Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve()
    where = Path(config.checkpoint_dir or workdir()).resolve()
    # a process worker runs each flow in a fresh temporary folder (its cwd) and removes it afterwards
    if temp in here.parents and (where == here or here in where.parents):
        raise InvalidParameters(
            f"checkpoints would go to {where}, inside this worker's temporary folder, which is removed when the "
            f"run ends: start the worker with HOMOGEN_WORKDIR set to a lasting folder (e.g. "
            f"HOMOGEN_WORKDIR=/data/homogen prefect worker start --pool gpu), or set config.checkpoint_dir"
        )


def evaluation_markdown(
    version: str, results: dict, registered, run_id: str, model_name: str, noise: str = "none"
) -> str:
    """Evaluation table (with the store's photometric noise level and any refinement gains) plus the registry outcome."""
    from homogen.model.report import refinement_report

    gains = refinement_report(results)
    return "\n".join(
        [
            f"# {model_name} v{registered.model_version} on dataset `{version}` (test split, photometric noise: {noise})",
            "",
            format_table(results),
            *(["", "Refinement:", *gains] if gains else []),
            "",
            f"Registered **{registered.model_uri}** as `models:/{model_name}/{registered.model_version}`"
            f" (MLflow run `{run_id}`); champion: **{registered.champion}** ({registered.promotion}).",
            "",
            f"Dataset `{version}`: artifacts `{artifact_key('dataset', version, 'report')}` (the data) and "
            f"`{models_key(version)}` (every model on it); `homogen lineage {version}`.",
        ]
    )


@flow(name="train-model", flow_run_name=_initial_run_name)
def train_model(
    dataset: str,
    config: TrainConfig = QUICK_TRAIN,
    evaluate: EvaluateConfig = EvaluateConfig(),
    tracking: TrackingConfig = TrackingConfig(),
) -> dict:
    """Train on the store ``dataset`` (path or URL), select on its val split, score its test split once, register.

    Returns ``{"model_name", "model_version", "model_uri", "run_id", "champion", "promotion",
    "dataset_version", "test_mace"}``.
    """
    from homogen.model.mlflow_run import TrainingRun

    if _run_from_a_deployment():  # dispatched to a worker: refuse now what would lose the model after training
        check_worker_keeps_model(config, tracking)
    ds = open_store(dataset)  # once: every task below reads this handle (the pins reread only the manifest)
    version = ds.version
    rename_current_run(run_name(config, version))
    tags = {FLOW_RUN_TAG: str(flow_run.id)} if flow_run.id else {}
    with TrainingRun(
        ds,
        config,
        tracking_uri=tracking.uri,
        experiment=tracking.experiment,
        run_name=f"{tracking.model_name} on {version}",
        model_name=tracking.model_name,
        tags=tags,
        source="homogen flow train-model",
    ) as run:
        with gpu_slot():
            # opaque(ds), as the plan in generate-dataset: the run graph links these tasks to open-store,
            # and Prefect does not walk into the handle
            result = train_task(
                opaque(ds), config, progress_key=artifact_key("train", version, "epochs"), on_epoch=run.log_epoch
            )
            try:
                scores = evaluate_task(
                    opaque(ds), result.model, evaluate.methods, evaluate.limit, result.dataset_version
                )
            except Exception as exc:  # the run fails saying where the trained weights are
                raise not_registered(exc, result) from exc
        try:
            registered = register_task(run, result, scores)
        except Exception as exc:
            raise not_registered(exc, result) from exc
    test_mace = float(scores.results[NETWORK]["mean"])
    model_registered(
        tracking.model_name,
        registered.model_version,
        version,
        registered.champion,
        model_uri=registered.model_uri,
        run_id=run.run_id,
        test_mace=test_mace,
        promotion=registered.promotion,
    )
    create_markdown_artifact(
        evaluation_markdown(
            version,
            scores.summary(),
            registered,
            run.run_id,
            tracking.model_name,
            noise=str(ds.sampling.get("photometric", "none")),
        ),
        key=artifact_key("model", tracking.model_name, f"v{registered.model_version}", "evaluation"),
        description=f"{tracking.model_name} v{registered.model_version} on dataset {version}",
    )
    publish_dataset_models(version, tracking.uri)
    return {
        "model_name": tracking.model_name,
        "model_version": registered.model_version,
        "model_uri": registered.model_uri,
        "run_id": run.run_id,
        "champion": registered.champion,
        "promotion": registered.promotion,
        "dataset_version": version,
        "test_mace": test_mace,
    }


if __name__ == "__main__":
    with prefect_settings():
        print(train_model(sys.argv[1]))
