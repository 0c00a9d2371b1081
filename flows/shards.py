"""Shards on Dask: the function a worker runs, and the loop that submits, retries and collects them.

One Dask task per shard, submitted from the flow process by the ``generate-shards`` Prefect task
(:func:`homogen.flows.tasks.generate_shards`). A Dask task costs about a millisecond; a Prefect
task run on a Dask worker costs 0.4-0.7 s, as much as a 64-image shard's work (docs/BENCHMARKS.md),
so the shards are plain Dask tasks and Prefect sees one task for all of them.

Workers import this module only: neither Prefect nor torch.

Retries: Dask's own (``client.submit(..., retries=SHARD_RETRIES)``): a shard whose attempt raises
(an I/O error) is run again by the scheduler, up to :data:`SHARD_RETRIES` times, and the last
attempt's error is raised, with the worker's traceback. A worker that dies is handled by Dask as
well, which reruns its tasks on the other workers (``distributed.scheduler.allowed-failures``). A
failed attempt leaves nothing behind (the library writes a shard under a temporary name and renames it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from distributed import Client, as_completed

from homogen.config import SamplingConfig
from homogen.generate import ShardResult, generate_shard
from homogen.sources import Shard
from homogen.stores import open_writer

SHARD_RETRIES = 3
"""Attempts at a failed shard after the first (Dask's ``retries``)."""


def write_shard(output: str, store_format: str, chunk_size: int, shard: Shard, sampling: SamplingConfig) -> ShardResult:
    """Generate and atomically write one shard on a worker; a shard already complete is skipped."""
    return generate_shard(open_writer(output, store_format, chunk_size), shard, sampling)


def shard_results(
    client: Client,
    output: str,
    store_format: str,
    chunk_size: int,
    shards: list[Shard],
    sampling: SamplingConfig,
) -> Iterator[ShardResult]:
    """Run :func:`write_shard` for every shard on ``client``'s cluster; yield results as they finish.

    Each shard is retried by Dask up to :data:`SHARD_RETRIES` times. Raises the error of a shard
    that failed every attempt (the shards still running are cancelled; those written stay in the
    store for the next run).
    """
    token = uuid.uuid4().hex[:8]  # keys unique to this call (the output URL stays out of the dashboard)
    futures = [
        client.submit(
            write_shard,
            output,
            store_format,
            chunk_size,
            shard,
            sampling,
            key=f"shard-{shard.index}-{token}",
            pure=False,
            retries=SHARD_RETRIES,
        )
        for shard in shards
    ]
    try:
        for future in as_completed(futures):
            yield future.result()  # raises the last attempt's error, with the worker's traceback
    finally:
        client.cancel([f for f in futures if not f.done()])
