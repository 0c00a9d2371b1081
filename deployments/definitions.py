"""The deployment objects, built without a server (``flow.to_deployment``).

``generate-and-train/local``: on demand, the defaults of :class:`homogen.flows.config.PipelineConfig`.

``generate-and-train/regenerate``: one weekly schedule per perturbation range (:data:`REGENERATE_CYCLE`),
each carrying its own parameters (Prefect 3 per-schedule parameters, ``Cron(..., parameters=...)``):
rho 16 on Mondays, 24 on Wednesdays, 32 on Fridays at 03:00 UTC. Each range makes its own dataset
version and each run registers a new model version, so MLflow compares models across ranges.
A schedule's parameters are laid over the deployment's (``--param`` on a manual run likewise).

``train-model/gpu``: the ``train-model`` flow on a work pool (default ``gpu``) served by a worker on
a GPU machine; entrypoint by module path (``homogen.flows.train.train_model``), so the worker needs the
package installed, not this checkout.

Entrypoints are module paths, so serving works from any directory once the package is installed.
"""

from __future__ import annotations

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron
from prefect.utilities.callables import ParameterSchema

from homogen.flows.config import FLAT_OVERRIDES, URL_FIELDS, URL_WITH_CREDENTIALS
from homogen.flows.generate_and_train import generate_and_train

TAGS = ["homogen"]

REGENERATE_CYCLE: tuple[tuple[int, str], ...] = (
    (16, "0 3 * * 1"),  # Mondays 03:00
    (24, "0 3 * * 3"),  # Wednesdays 03:00
    (32, "0 3 * * 5"),  # Fridays 03:00
)
"""(rho, cron) of the ``regenerate`` deployment's weekly schedules."""

GPU_POOL = "gpu"
"""Default work pool of ``train-model/gpu``."""

GPU_TRAIN = {"device": "cuda", "width": 1.0, "epochs": 10, "batch_size": 64, "num_workers": 4, "nproc_per_node": 1}
"""``train-model/gpu``'s default training parameters (full-width network on CUDA; ``nproc_per_node``:
training processes, one GPU each, through torch's elastic launcher; ``batch_size`` is per process)."""


CREDENTIALS_REFUSED = {
    "description": "no credentials in a URL parameter (Prefect stores parameters in plain text): name a Secret "
    "block holding the storage options in config.storage_secret, or set them in the environment "
    "(FSSPEC_<PROTOCOL>_<OPTION>, AWS_ACCESS_KEY_ID, MLFLOW_TRACKING_USERNAME/PASSWORD); see the README",
    "type": "string",
    "pattern": URL_WITH_CREDENTIALS,
}
"""What a URL parameter must not be (JSON schema ``not``). The server's refusal quotes this schema,
so it names the fix first (a plain ``pattern`` refusal would quote only the regular expression)."""


def refuse_credentials(deployment: RunnerDeployment) -> RunnerDeployment:
    """``deployment`` whose parameter schema refuses URLs with credentials (``not``: :data:`CREDENTIALS_REFUSED`).

    The server validates a run's parameters against this schema before it stores the run, so
    ``--param source=s3://KEY:SECRET@bucket/coco`` is refused with nothing written to its database
    (the flow's own check, :class:`homogen.flows.config.PipelineConfig`, would come too late: the
    parameters are stored when the run is created).
    """
    schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
    defs = schema.get("definitions", {})

    def field(properties: dict, path: tuple[str, ...]) -> dict:
        node = properties[path[0]]
        if len(path) == 1:
            return node
        ref = node["$ref"].rsplit("/", 1)[-1]  # "#/definitions/GenerateConfig"
        return field(defs[ref]["properties"], path[1:])

    for path in URL_FIELDS:
        field(schema["properties"], ("config", *path))["not"] = CREDENTIALS_REFUSED
    for name, path in FLAT_OVERRIDES.items():
        if path in URL_FIELDS:
            schema["properties"][name]["not"] = CREDENTIALS_REFUSED
    deployment._parameter_openapi_schema = ParameterSchema(**schema)
    return deployment


def local_deployment() -> RunnerDeployment:
    """``generate-and-train/local``: run on demand with the defaults (override with ``--param``)."""
    return refuse_credentials(
        generate_and_train.to_deployment(
            name="local",
            description="Generate a dataset on Dask, validate it, train and register HomographyNet (defaults: bundled images, short training).",
            tags=TAGS,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    )


def regenerate_schedules(cycle=REGENERATE_CYCLE, timezone: str = "UTC") -> list:
    """One cron schedule per (rho, cron), each with its own ``{"rho": rho}`` parameters and slug ``rho-<rho>``."""
    return [Cron(cron, timezone=timezone, parameters={"rho": rho}, slug=f"rho-{rho}") for rho, cron in cycle]


def regenerate_deployment() -> RunnerDeployment:
    """``generate-and-train/regenerate``: the weekly cycle of perturbation ranges."""
    return refuse_credentials(
        generate_and_train.to_deployment(
            name="regenerate",
            description="Weekly: a new dataset per perturbation range (rho 16, 24, 32), a new model version on each.",
            schedules=regenerate_schedules(),
            tags=TAGS + ["scheduled"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    )


def gpu_deployment(pool: str = GPU_POOL, train: dict | None = None) -> RunnerDeployment:
    """``train-model/gpu``: training on the work pool ``pool`` (a worker on a GPU machine).

    ``train``: its training settings (default :data:`GPU_TRAIN`); a dispatched run uses them, with
    only the fields the user set in the parent's ``config.train`` laid over them.
    """
    from homogen.flows.train import train_model  # torch: not in the serving process, nor its Dask workers

    return train_model.to_deployment(
        name="gpu",
        description="Train, evaluate and register HomographyNet on a GPU machine (store and MLflow must be shared).",
        work_pool_name=pool,
        parameters={"config": dict(GPU_TRAIN if train is None else train)},
        tags=TAGS + ["gpu"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def served_deployments() -> list[RunnerDeployment]:
    """What ``python -m homogen.deployments.serve`` serves."""
    return [local_deployment(), regenerate_deployment()]
