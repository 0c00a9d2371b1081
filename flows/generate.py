"""The ``generate-dataset`` flow: plan, fan the shards out over Dask, commit the manifest.

The flow process holds the output's lock (:meth:`homogen.stores.StoreWriter.lock`) from prepare to
commit: a second run writing the same output is refused at once and the store is left as it was.
The shards run as plain Dask tasks under one Prefect task, ``generate-shards`` (a Prefect task run
on a Dask worker would cost as much as a shard's work): on a ``LocalCluster`` of one
single-threaded worker process per CPU core by default, or on an existing cluster
(``dask.address`` / ``$HOMOGEN_DASK_ADDRESS``). Workers receive configs and paths, not handles,
and never talk to Prefect; with an existing cluster the source and the output must be reachable
from every worker (a shared path or an fsspec URL such as ``s3://bucket/ds.zarr``).

Run directly: ``python -m homogen.flows.generate`` (bundled images, ephemeral Prefect).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import opaque

from homogen.flows.cluster import DaskConfig, dask_scheduler
from homogen.flows.entry import prefect_settings
from homogen.flows.events import dataset_committed
from homogen.flows.tasks import commit_dataset, generate_shards, list_shards, prepare_store, writer_for
from homogen.flows.ui import rename_current_run
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig

QUICK_GENERATE = GenerateConfig(
    source=SourceConfig(),  # the bundled 32-image COCO sample
    sampling=SamplingConfig(pairs_per_image=32),
    shard_size=4,
)
"""Default generation: 1,024 pairs of the recipe from the bundled images, in 8 shards."""


def run_name(rho: int, version: str | None = None) -> str:
    """``generate rho=32`` before planning, ``generate rho=32 v=abc123def456`` after."""
    return f"generate rho={rho}" + (f" v={version}" if version else "")


def _initial_run_name() -> str:
    config = flow_run.parameters.get("config")
    rho = getattr(getattr(config, "sampling", None), "rho", None)
    if rho is None and isinstance(config, dict):
        rho = config.get("sampling", {}).get("rho")
    return run_name(rho if rho is not None else QUICK_GENERATE.sampling.rho)


def dataset_summary(manifest: dict) -> dict:
    """The small result the flow returns: version, store, counts."""
    return {
        "version": manifest["dataset_version"],
        "uri": manifest["config"]["output"],
        "pairs": manifest["num_pairs"],
        "splits": manifest["splits"],
        "images": manifest["num_images"],
        "shards": len(manifest["shards"]),
        "quarantined": len(manifest["quarantine"]),
    }


@flow(name="generate-dataset", flow_run_name=_initial_run_name)
def generate_dataset(config: GenerateConfig = QUICK_GENERATE, dask: DaskConfig = DaskConfig()) -> dict:
    """Generate (or finish) the dataset ``config`` describes, its shards on the Dask cluster ``dask`` describes.

    Returns ``{"version", "uri", "pairs", "splits", "images", "shards", "quarantined"}``.
    """
    log = get_run_logger()
    with dask_scheduler(dask) as scheduler:  # a LocalCluster's workers start while the shards are planned
        p = list_shards(config)
        rename_current_run(run_name(config.sampling.rho, p.version))
        log.info("dataset %s: %d images in %d shards -> %s", p.version, p.num_images, len(p.shards), p.output)
        with writer_for(p).lock():
            # opaque: Prefect links the tasks (the run graph's edges) without walking the plan's
            # thousands of records for every task (0.2 CPU s a task on 2,504 images, bench/scaling.py)
            prepare_store(opaque(p))
            results = generate_shards(opaque(p), scheduler)
            manifest = commit_dataset(opaque(p), opaque(results))
    dataset_committed(manifest)  # the event an automation reacts to (homogen.dataset.committed)
    skipped = sum(r.skipped for r in results)
    log.info(
        "dataset %s complete: %d pairs, %d images quarantined, %d shards generated, %d already complete",
        p.version,
        manifest["num_pairs"],
        len(manifest["quarantine"]),
        len(results) - skipped,
        skipped,
    )
    return dataset_summary(manifest)


if __name__ == "__main__":
    with prefect_settings():
        print(generate_dataset())
