"""The ``generate-dataset`` flow: plan, fan the shards out over Dask, commit the manifest.

The flow process holds the output's lock (:meth:`homogen.stores.StoreWriter.lock`) from prepare to
commit: a second run writing the same output is refused at once and the store is left as it was.
Shards run as Prefect tasks on a Dask cluster (prefect-dask's :class:`DaskTaskRunner`): a
``LocalCluster`` of one single-threaded worker process per CPU core by default, or an existing
cluster (``DaskConfig.address`` / ``$HOMOGEN_DASK_ADDRESS``). Workers receive configs and paths,
not handles; with an existing cluster the source and the output must be reachable from every
worker (a shared path or an fsspec URL such as ``s3://bucket/ds.zarr``).

Run directly: ``python -m homogen.flows.generate`` (bundled images, ephemeral Prefect).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from homogen.flows.cluster import DaskConfig, dask_task_runner
from homogen.flows.tasks import commit_dataset, generate_shard_task, list_shards, prepare_store, writer_for
from homogen.flows.ui import artifact_key, rename_current_run, with_progress
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


@flow(name="generate-dataset", flow_run_name=_initial_run_name, task_runner=dask_task_runner(DaskConfig()))
def generate_dataset(config: GenerateConfig = QUICK_GENERATE) -> dict:
    """Generate (or finish) the dataset ``config`` describes, one Dask task per shard.

    Returns ``{"version", "uri", "pairs", "splits", "images", "shards", "quarantined"}``.
    The run's task runner decides where shards run; :func:`generate_dataset_on` picks one per call.
    """
    log = get_run_logger()
    p = list_shards(config)
    rename_current_run(run_name(config.sampling.rho, p.version))
    log.info("dataset %s: %d images in %d shards -> %s", p.version, p.num_images, len(p.shards), p.output)
    with writer_for(p).lock():
        prepare_store(p)
        futures = [
            generate_shard_task.submit(p.output, config.store_format(), config.chunk_size, shard, config.sampling)
            for shard in p.shards
        ]
        results = list(
            with_progress(futures, artifact_key("dataset", p.version, "progress"), f"shards of dataset {p.version} written")
        )
        manifest = commit_dataset(p, results)
    skipped = sum(r.skipped for r in results)
    log.info(
        "dataset %s complete: %d pairs, %d images quarantined, %d shards generated, %d already complete",
        p.version, manifest["num_pairs"], len(manifest["quarantine"]), len(results) - skipped, skipped,
    )
    return dataset_summary(manifest)


def generate_dataset_on(dask: DaskConfig):
    """The ``generate-dataset`` flow with its shards on the cluster ``dask`` describes."""
    return generate_dataset.with_options(task_runner=dask_task_runner(dask))


if __name__ == "__main__":
    print(generate_dataset())
