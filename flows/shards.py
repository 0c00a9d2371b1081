"""Shards on Dask: the function a worker runs, and the loop that submits, retries and collects them.

One Dask task per shard, submitted from the flow process by the ``generate-shards`` Prefect task
(:func:`homogen.flows.tasks.generate_shards`). A Dask task costs about a millisecond; a Prefect
task run on a Dask worker costs 0.4-0.7 s, as much as a 64-image shard's work (docs/BENCHMARKS.md),
so the shards are plain Dask tasks and Prefect sees one task for all of them.

Workers import this module only: neither Prefect nor torch.

Retries: a shard whose attempt raises (an I/O error, a worker lost more often than Dask's
``allowed-failures``) is submitted again after :data:`SHARD_RETRY_DELAYS_S` seconds, once per
delay; each failed attempt is reported to ``on_retry`` (the flow logs it). A worker that dies is
also handled by Dask itself, which reruns its tasks on the other workers. A failed attempt leaves
nothing behind (the library writes a shard under a temporary name and renames it).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator

import cv2
import fsspec.config
from distributed import Client, Future, as_completed

from homogen.config import SamplingConfig
from homogen.generate import ShardResult, generate_shard
from homogen.sources import Shard
from homogen.stores import open_writer

SHARD_RETRY_DELAYS_S = (2.0, 4.0, 8.0)
"""Seconds before each new attempt at a failed shard (exponential back-off): 3 retries after the first attempt."""

RETRY_JITTER = 0.5
"""Each delay is drawn uniformly in ``delay * [1 - RETRY_JITTER, 1 + RETRY_JITTER]`` (failing shards do not retry in step)."""


def write_shard(output: str, store_format: str, chunk_size: int, shard: Shard, sampling: SamplingConfig) -> ShardResult:
    """Generate and atomically write one shard on a worker; a shard already complete is skipped."""
    if "OPENCV_FOR_THREADS_NUM" in os.environ:  # a forked worker inherits OpenCV's pool size from its forkserver
        cv2.setNumThreads(int(os.environ["OPENCV_FOR_THREADS_NUM"]))
    # storage options (FSSPEC_<PROTOCOL>...) that reached this worker's environment after fsspec was
    # imported: its forkserver imported it, maybe before the flow loaded a Secret block
    fsspec.config.set_conf_env(fsspec.config.conf)
    return generate_shard(open_writer(output, store_format, chunk_size), shard, sampling)


def shard_results(
    client: Client,
    output: str,
    store_format: str,
    chunk_size: int,
    shards: list[Shard],
    sampling: SamplingConfig,
    on_retry: Callable[[Shard, int, BaseException, float], None] | None = None,
) -> Iterator[ShardResult]:
    """Run :func:`write_shard` for every shard on ``client``'s cluster; yield results as they finish.

    ``on_retry(shard, attempt, error, delay_s)`` is called before each new attempt. Raises the
    error of a shard that failed every attempt (the shards still running are cancelled; those
    written stay in the store for the next run).
    """
    token = uuid.uuid4().hex[:8]  # keys unique to this call (the output URL stays out of the dashboard)
    live: dict[str, tuple[Shard, Future]] = {}
    attempts: dict[int, int] = {}

    def submit(shard: Shard) -> Future:
        attempts[shard.index] = n = attempts.get(shard.index, 0) + 1
        future = client.submit(
            write_shard,
            output,
            store_format,
            chunk_size,
            shard,
            sampling,
            key=f"shard-{shard.index}-{token}-attempt-{n}",
            pure=False,
        )
        live[future.key] = (shard, future)
        return future

    pending = as_completed([submit(s) for s in shards], loop=client.loop)
    try:
        for future in pending:
            shard, _ = live.pop(future.key)
            if future.status == "finished":
                yield future.result()
                continue
            n = attempts[shard.index]
            if n > len(SHARD_RETRY_DELAYS_S):
                future.result()  # raises the last attempt's error, with the worker's traceback
            delay = SHARD_RETRY_DELAYS_S[n - 1] * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
            if on_retry is not None:
                on_retry(shard, n, future.exception(), delay)
            time.sleep(delay)
            pending.add(submit(shard))
    finally:
        if live:
            client.cancel([f for _, f in live.values()])
