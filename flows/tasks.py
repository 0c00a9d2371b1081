"""Prefect tasks over the dataset library: plan, prepare, the shards, commit, open, validate, report.

Each task calls one ``homogen`` function and adds only orchestration (logging, artifacts). They
run in the flow's process; ``generate-shards`` hands the shards to Dask as plain Dask tasks
(:mod:`homogen.flows.shards`, retried by Dask), which receive configs and paths, never open
handles, so a shard runs the same on any worker that can reach the source and the output (local
paths or fsspec URLs). ``task.fn`` is the plain function (the unit tests call it).

This module imports no torch (``python -m`` entry points that import it are re-imported by
Dask's spawned workers).

Retries: declared on the decorators (``retries``, ``retry_delay_seconds``, ``retry_jitter_factor``),
for the errors a second attempt can cure (:func:`transient_error`): a flaky network or object
store. Bad input (a missing source, a store of another version, a held lock) fails at once.

A finished store is opened once per flow run (:func:`open_store`) and the opened
:class:`~homogen.store.Dataset` is handed to the tasks that read it (each open reads the manifest and
every array's metadata, and lists the chunks: several LIST and GET calls on object storage). The
flows pass it as ``opaque(ds)``, as the plan: Prefect links the tasks in the run graph without
walking into it; the tasks run in the flow's process and the handle is never serialised (no result
cache, results not persisted), so a retried task reuses it.

Caching: the store is the cache. A shard that is already complete is skipped by the library
(:func:`homogen.generate.generate_shard`), whatever run wrote it, so Prefect's result cache is
off (``NO_CACHE``): it would only duplicate that bookkeeping and hash large inputs.
"""

from __future__ import annotations

import base64
import errno
import os
from dataclasses import replace

import cv2
import numpy as np
from distributed import Client
from prefect import task
from prefect.cache_policies import NO_CACHE

from homogen.config import GenerateConfig
from homogen.flows.shards import shard_results
from homogen.flows.ui import artifact_key, run_logger, with_progress
from homogen.generate import Plan, ShardResult, plan
from homogen.schema import LABEL_NAMES
from homogen.stores import Dataset, StoreWriter, is_local, local_path, open_dataset, open_writer


PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
"""OS errors that name a path problem: another attempt would fail the same way."""

PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG})
"""Full disk, quota, read-only file system, name too long: seconds later, the same."""


def transient_error(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry only an I/O error a second attempt can cure (network, storage)."""
    error = state.result(raise_on_failure=False)
    if not isinstance(error, OSError) or isinstance(error, PERMANENT_OS_ERRORS):
        return False
    return error.errno not in PERMANENT_ERRNOS


RETRIES = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": transient_error,
}
"""The declared retries of the tasks that touch storage (back-off with jitter; transient errors only)."""


def absolute_output(p: Plan) -> Plan:
    """``p`` with a relative local output made absolute, so that every worker writes the same place."""
    if is_local(p.output) and not os.path.isabs(local_path(p.output)):
        return replace(p, output=os.path.abspath(local_path(p.output)))
    return p


def writer_for(p: Plan) -> StoreWriter:
    """A writer of ``p``'s output (format and chunking from its config)."""
    return open_writer(p.output, p.config.store_format(), p.config.chunk_size)


@task(name="list-shards", cache_policy=NO_CACHE, **RETRIES)
def list_shards(config: GenerateConfig) -> Plan:
    """List the source, compute the dataset version and cut the shards (no decoding)."""
    return absolute_output(plan(config))


@task(name="prepare-store", cache_policy=NO_CACHE, **RETRIES)
def prepare_store(p: Plan) -> str:
    """Create ``p``'s output, or resume it when it holds the same version; returns the output."""
    writer_for(p).prepare(p, overwrite=p.config.overwrite)
    return p.output


WORKERS_WAIT_S = 180.0
"""Longest wait for the first Dask worker (a LocalCluster's spawn on a busy machine, an external cluster's)."""


@task(name="generate-shards", cache_policy=NO_CACHE)
def generate_shards(p: Plan, scheduler: str) -> list[ShardResult]:
    """Generate every shard of ``p`` on the Dask cluster at ``scheduler`` (``tcp://host:port``); results in shard order.

    One Dask task per shard (:func:`homogen.flows.shards.shard_results`): a shard already complete
    in the store is skipped, a failed attempt is retried by Dask (:data:`homogen.flows.shards.SHARD_RETRIES`),
    and the progress artifact ``dataset-<version>-progress`` shows the share of shards done. Raises the error of a
    shard that failed every attempt; the shards written stay in the store for the next run.
    """
    log = run_logger()
    cfg = p.config
    key = artifact_key("dataset", p.version, "progress")
    log.info("%d shards on the Dask cluster at %s", len(p.shards), scheduler)
    with Client(scheduler) as client:
        try:
            client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
        except TimeoutError as exc:
            raise RuntimeError(
                f"no Dask worker joined the scheduler {scheduler} in {WORKERS_WAIT_S:g} s: "
                "see the workers' logs (or start workers for that scheduler)"
            ) from exc
        results = shard_results(client, p.output, cfg.store_format(), cfg.chunk_size, p.shards, cfg.sampling)
        done = list(with_progress(results, len(p.shards), key, f"shards of dataset {p.version} written"))
    return sorted(done, key=lambda r: r.index)


@task(name="commit-dataset", cache_policy=NO_CACHE, **RETRIES)
def commit_dataset(p: Plan, results: list[ShardResult]) -> dict:
    """Write the final manifest once every shard is complete; returns it."""
    return writer_for(p).commit(p, results)


def as_dataset(store: str | Dataset) -> Dataset:
    """``store`` opened (a path or URL), or as is when already open: the report opens the store once."""
    return store if isinstance(store, Dataset) else open_dataset(store)


@task(name="open-store", cache_policy=NO_CACHE, **RETRIES)
def open_store(uri: str, check_chunks: bool = True) -> Dataset:
    """Open the finished store at ``uri`` (path or URL) for the tasks of this flow run.

    ``check_chunks``: refuse a store with a missing or linked chunk file (False for validation,
    which reports every damaged chunk itself). Raises :class:`homogen.store.StoreError` in one line.
    """
    return open_dataset(uri, check_chunks=check_chunks)


SAMPLE_GRID_COLUMNS = 2
"""Pairs a row in the UI's sample grid: 848 px wide, shown at its own size in the Prefect UI's artifact
pane (about 850 px in a 1400 px window); 4 a row (1,684 px) were shrunk to half, captions unreadable."""


def sample_grid_png(store: str | Dataset, n: int = 8) -> bytes:
    """PNG bytes of the library's sample grid of ``n`` pairs spread over a finished store (path, URL or opened), :data:`SAMPLE_GRID_COLUMNS` a row."""
    from homogen.render import sample_grid

    ds = as_dataset(store)
    grid = sample_grid(ds, n=n, cols=SAMPLE_GRID_COLUMNS)
    ok, buf = cv2.imencode(".png", grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"could not encode the sample grid of {ds.uri} as PNG")
    return np.asarray(buf).tobytes()


def data_url(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URL of PNG bytes (shows inline in the Prefect UI, no file server needed)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@task(name="validate", cache_policy=NO_CACHE, **RETRIES)
def validate_task(store: str | Dataset, regenerate: int = 0, source_root: str | None = None):
    """Every check of :func:`homogen.validation.validate_dataset` on a finished store (path, URL or opened
    without the chunk check: :func:`open_store` with ``check_chunks=False``); returns the report."""
    from homogen.validation import validate_dataset

    return validate_dataset(store, regenerate=regenerate, source_root=source_root, progress=False)


def label_statistics(store: str | Dataset) -> list[dict]:
    """Per label column (dx_TL ... dy_BL): mean, std, min, max of the offsets of a finished store (path, URL or opened), pixels."""
    ds = as_dataset(store)
    blocks = [b["offsets"] for b in ds.iter_chunks(fields=("offsets",))]
    off = np.concatenate(blocks).astype(np.float64) if blocks else np.zeros((0, 8))
    if not len(off):
        return [
            {"label": n, "mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
            for n in LABEL_NAMES
        ]
    return [
        {
            "label": n,
            "mean": float(off[:, k].mean()),
            "std": float(off[:, k].std()),
            "min": float(off[:, k].min()),
            "max": float(off[:, k].max()),
        }
        for k, n in enumerate(LABEL_NAMES)
    ]
