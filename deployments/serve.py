"""``python -m homogen.deployments.serve``: serve ``generate-and-train/local`` and ``generate-and-train/regenerate``.

Why ``prefect.serve`` rather than ``prefect.yaml`` + a process work pool + a worker: one command,
no pool to create, no code storage to configure; the serving process registers both deployments
(with their schedules) and runs their flow runs as subprocesses of itself, with the package
already importable. The flows fan generation out to Dask themselves, so the serving process
needs no scaling of its own. A work pool is the right tool where the code must run on another
machine: that is why ``train-model/gpu`` (training on a GPU machine) is a work-pool deployment
(``python -m homogen.deployments.gpu``), not a served one.

The serving process keeps one Dask LocalCluster (one single-threaded worker process per core, as a
run's own would be) for all its runs: a run whose ``dask`` section is the default one sends its
shards there (``$HOMOGEN_SERVED_DASK_ADDRESS``, :meth:`homogen.flows.cluster.DaskConfig.resolved_address`),
so it pays no worker start. A run with its own ``dask`` settings, or with storage credentials from
a Secret block (the warm workers started without them), starts its own cluster. ``--no-cluster``:
every run starts its own.

Stop with Ctrl-C: served deployments are paused on shutdown (their schedules stop creating runs)
and resume when served again.

Needs a Prefect API: ``prefect server start --host 127.0.0.1`` in another terminal and
``prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api``.
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

from prefect import serve

from homogen.deployments.definitions import served_deployments
from homogen.flows.cluster import SERVED_DASK_ADDRESS_ENV, DaskConfig, cluster_kwargs, local_cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=1, help="flow runs at once (default 1: runs share the CPU cores)")
    parser.add_argument("--no-cluster", action="store_true", help="no shared Dask cluster: each run starts its own")
    args = parser.parse_args(argv)
    deployments = served_deployments()
    with nullcontext() if args.no_cluster else local_cluster(**cluster_kwargs(DaskConfig())) as cluster:
        if cluster is not None:  # the runs are subprocesses of this one: they inherit the address
            os.environ[SERVED_DASK_ADDRESS_ENV] = cluster.scheduler_address
            print(f"Dask cluster for the runs at {cluster.scheduler_address}", flush=True)
        serve(*deployments, limit=args.limit)


if __name__ == "__main__":
    main()
