"""The ``generate-and-train`` flow: generate a dataset, validate it, train and register a model on it.

One typed parameter, ``config`` (:class:`homogen.flows.config.PipelineConfig`, partial sections deep-merged
into the defaults), plus flat shortcuts (``rho``, ``epochs``, ... see
:data:`homogen.flows.config.FLAT_OVERRIDES`; ``None`` = not given) that win over it. Invalid parameters
fail the run before any work, naming the parameter.

Subflows: ``generate-dataset`` (shards on Dask), ``validate-dataset`` (a failed check stops the
run before training), ``train-model`` (in-process, or the deployment named by
``config.train_deployment``, e.g. ``train-model/gpu`` on a GPU work pool).

``python -m homogen.flows.generate_and_train`` runs it once in Prefect's ephemeral mode (no server needed)
with the defaults: the 32 bundled images, 1,024 pairs, 2 short epochs, a model registered in
``./work/mlflow.db`` (``$HOMOGEN_WORKDIR`` moves ``./work``). Options: those of ``homogen run``
(``--config JSON|FILE`` and one per flat shortcut), e.g. ``python -m homogen.flows.generate_and_train
--rho 24 --epochs 3``; ``--help`` lists them.

Importing this module reaches no torch: Dask starts its workers with *spawn*, which re-imports the
``__main__`` module (this one, under ``-m``) in every worker. Training is imported when it runs.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from homogen.flows.cluster import SERVED_DASK_ADDRESS_ENV
from homogen.flows.config import (
    InvalidParameters,
    PipelineConfig,
    apply_overrides,
    check_before_work,
    dispatched_train_config,
    flat_parameters,
    shareable_tracking_uri,
)
from homogen.flows.generate import generate_dataset
from homogen.flows.ui import rename_current_run
from homogen.flows.validate import validate_dataset_flow


def run_name(config: PipelineConfig, version: str | None = None) -> str:
    """``generate-and-train rho=32 epochs=2``, then with ``v=<dataset version>``."""
    v = f" v={version}" if version else ""
    return f"generate-and-train rho={config.generate.sampling.rho}{v} epochs={config.train.epochs}"


def _initial_run_name() -> str:
    params = dict(flow_run.parameters)
    config = params.pop("config", None) or PipelineConfig()
    try:
        return run_name(apply_overrides(PipelineConfig.model_validate(config), **params))
    except ValueError:  # invalid parameters: the run itself says why, at once
        return "generate-and-train (invalid parameters)"


def use_storage_secret(name: str) -> list[str]:
    """Load the Secret block ``name`` (fsspec storage options per protocol) into this process and its future workers.

    The options go into fsspec's configuration here (every filesystem this process opens gets them)
    and into ``FSSPEC_<PROTOCOL>`` of this process's environment, which the Dask LocalCluster
    workers started afterwards inherit (so the run starts its own, never a serving process's warm one). Workers of an external cluster need the same variables set
    where they run. Returns the protocols configured (the values are never logged).

    Raises:
        InvalidParameters: the block's value is not ``{protocol: {option: value}}``.
    """
    import fsspec.config
    from prefect.blocks.system import Secret

    options = Secret.load(name).get()
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise InvalidParameters(
            f"storage_secret={name!r}: the Secret's value must be storage options per protocol, "
            'e.g. {"s3": {"key": "...", "secret": "..."}}'
        )
    for protocol, opts in options.items():
        fsspec.config.conf.setdefault(protocol, {}).update(opts)
        os.environ[f"FSSPEC_{protocol.upper()}"] = json.dumps(fsspec.config.conf[protocol])
    # the serving process's warm cluster started without these options: this run starts its own workers
    os.environ.pop(SERVED_DASK_ADDRESS_ENV, None)
    return sorted(options)


def train_remotely(deployment: str, dataset_uri: str, config: PipelineConfig) -> dict:
    """Run ``train-model`` as ``deployment`` (e.g. on a GPU work pool), wait, and read its model from MLflow.

    The training config sent is the deployment's own (``train-model/gpu``: CUDA, full width, 10
    epochs) with only the fields the user set over it (:func:`homogen.flows.config.dispatched_train_config`),
    never the pipeline's quick-start defaults. The tracking URI sent is the one this process
    resolves (checked shareable before generation started), so both machines use the same store.
    The deployment's flow run tags its MLflow run with its id; the registered version is found by
    that tag, so no Prefect result storage has to be shared between the machines.
    """
    from prefect.client.orchestration import get_client

    from homogen.flows.train import FLOW_RUN_TAG
    from homogen.model.tracking import setup_tracking

    tracking_uri = shareable_tracking_uri(config.tracking.uri, f"train_deployment={deployment!r}")
    with get_client(sync_client=True) as client:
        params = client.read_deployment_by_name(deployment).parameters or {}
    train = dispatched_train_config(params.get("config"), config.train)
    get_run_logger().info(
        "training as %s with its settings %s, overridden by the fields set here: %s",
        deployment,
        params.get("config") or "(the train-model defaults)",
        config.train.model_dump(mode="json", exclude_unset=True) or "none",
    )
    run = run_deployment(
        deployment,
        parameters={
            "dataset": dataset_uri,
            "config": train.model_dump(mode="json", exclude_unset=True),
            "evaluate": config.evaluate.model_dump(mode="json"),
            "tracking": {**config.tracking.model_dump(mode="json"), "uri": tracking_uri},
        },
        timeout=None,
    )
    if not run.state or not run.state.is_completed():
        raise RuntimeError(
            f"deployment {deployment} run {run.name} ended {run.state.name if run.state else 'without a state'}"
            + (f": {run.state.message}" if run.state and run.state.message else "")
        )
    import mlflow

    setup_tracking(tracking_uri, experiment=None)
    found = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.{FLOW_RUN_TAG} = '{run.id}'", output_format="list"
    )
    if not found:
        raise RuntimeError(
            f"deployment {deployment} run {run.name} completed but no MLflow run carries {FLOW_RUN_TAG}={run.id}: "
            f"do both machines use the same tracking server (tracking.uri / MLFLOW_TRACKING_URI)?"
        )
    tags = found[0].data.tags
    return {
        "model_name": config.tracking.model_name,
        "model_version": tags.get("model_version"),
        "run_id": found[0].info.run_id,
        "champion": tags.get("champion") == "true",
        "flow_run": run.name,
    }


def generate_and_train(config: PipelineConfig = PipelineConfig(), **flat: Any) -> dict:
    """Generate, validate, train, register. Returns the dataset version and the registered model version.

    The flat shortcuts (:data:`homogen.flows.config.FLAT_OVERRIDES`) are keyword parameters of their
    own, typed from their fields (:func:`_signature`); ``None`` = not given.

    Returns:
        ``{"dataset_version", "dataset_uri", "pairs", "model_name", "model_version", "champion", ...}``.
    """
    cfg = apply_overrides(config, **flat)
    check_before_work(cfg)
    log = get_run_logger()
    if cfg.storage_secret:
        protocols = use_storage_secret(cfg.storage_secret)
        log.info("storage options for %s from Secret block %r", ", ".join(protocols), cfg.storage_secret)
    dataset = generate_dataset(cfg.generate, cfg.dask)
    rename_current_run(run_name(cfg, dataset["version"]))
    validate_dataset_flow(dataset["uri"], regenerate=cfg.validate_regenerate)
    if cfg.train_deployment:
        log.info("training as deployment %s", cfg.train_deployment)
        model = train_remotely(cfg.train_deployment, dataset["uri"], cfg)
    else:
        # torch: imported here, not by the Dask workers that re-import this module
        from homogen.flows.train import train_model

        model = train_model(dataset["uri"], cfg.train, cfg.evaluate, cfg.tracking)
    log.info("dataset %s -> %s version %s", dataset["version"], model["model_name"], model["model_version"])
    return {
        "dataset_version": dataset["version"],
        "dataset_uri": dataset["uri"],
        "pairs": dataset["pairs"],
        **model,
    }


def _signature() -> inspect.Signature:
    """``(config, *, rho=None, epochs=None, ...)``: one keyword per flat shortcut, typed from its field."""
    params = [
        inspect.Parameter(
            "config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=PipelineConfig(), annotation=PipelineConfig
        )
    ]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind)
        for name, (kind, _) in flat_parameters().items()
    ]
    return inspect.Signature(params, return_annotation=dict)


# The function keeps its name (deployments' entrypoints are module.function) and becomes the flow.
generate_and_train.__signature__ = _signature()
generate_and_train.__doc__ += (
    "\n    Args:\n        config: the whole pipeline (partial sections keep the defaults).\n"
    + "".join(f"        {name}: {text}\n" for name, (_, text) in flat_parameters().items())
)  # the parameters' descriptions in Prefect's UI
generate_and_train = flow(name="generate-and-train", flow_run_name=_initial_run_name)(generate_and_train)


def main(args: list[str] | None = None) -> None:
    """``python -m homogen.flows.generate_and_train [OPTIONS]``: the command ``homogen run`` (one parser, made
    from the config's fields by :mod:`homogen.flows.cli`): every value checked before the flow starts,
    ``--help`` lists the options, a refused value prints one ``error:`` line and exits 2. Exits when done."""
    import typer

    from homogen.flows.cli import register

    app = typer.Typer(add_completion=False)
    register(app)
    app(args=args, prog_name="python -m homogen.flows.generate_and_train")


if __name__ == "__main__":
    main()
