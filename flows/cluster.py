"""Where generation's shard tasks run: :class:`DaskConfig` and the prefect-dask task runner it makes.

Torch-free on purpose: Dask starts worker processes with multiprocessing's *spawn*, which
re-imports the parent's ``__main__`` module in every worker, so an entry point that imports only
this module (``python -m homogen.flows.generate``, ``bench/scaling.py``) keeps its workers light.
"""

from __future__ import annotations

import os

from distributed import LocalCluster
from prefect.client.orchestration import get_client
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel, ConfigDict, Field

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS", "OPENCV_FOR_THREADS_NUM")
"""Thread-pool sizes of the numerical libraries, set to ``threads_per_worker`` in LocalCluster worker
processes (OpenCV and Blosc would otherwise start a thread per core in every worker)."""

DASK_ADDRESS_ENV = "HOMOGEN_DASK_ADDRESS"
"""Environment variable with a Dask scheduler address (``tcp://host:8786``) to use instead of a LocalCluster."""


class DaskConfig(BaseModel):
    """Where generation's shard tasks run: an existing Dask cluster, or a LocalCluster of this machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        None,
        description=f"scheduler address of an existing cluster (tcp://host:8786); None: ${DASK_ADDRESS_ENV} "
        "if set, else a LocalCluster on this machine",
    )
    n_workers: int | None = Field(None, ge=1, description="LocalCluster worker processes; None: one per CPU core")
    threads_per_worker: int = Field(1, ge=1, description="threads in each LocalCluster worker")
    processes: bool = Field(True, description="LocalCluster workers as processes (False: threads of this process)")
    dashboard_address: str | None = Field(
        "127.0.0.1:8787",
        description="LocalCluster dashboard (this machine only; ':8787' opens it to the network); "
        "None: no fixed port (the scheduler still serves HTTP, on a free loopback port)",
    )

    def resolved_address(self) -> str | None:
        """The scheduler address to connect to, or None for a LocalCluster (read at run time)."""
        return self.address or os.environ.get(DASK_ADDRESS_ENV) or None

    def resolved_workers(self) -> int:
        """LocalCluster size: ``n_workers``, else the CPU cores this process may use."""
        if self.n_workers:
            return self.n_workers
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            return os.cpu_count() or 1



def local_cluster(**kwargs) -> LocalCluster:
    """A LocalCluster whose worker processes report task runs to this process's Prefect API.

    The workers get the API URL this flow run uses in their environment: in Prefect's ephemeral
    mode (no ``PREFECT_API_URL``) each worker process would otherwise start a server of its own.
    Worker processes also get :data:`THREAD_ENV` set to their thread count, so that ``n`` workers
    of one thread use ``n`` cores, not ``n`` times the cores.
    """
    if kwargs.get("processes", True):
        env = dict(kwargs.pop("env", None) or {})
        env.setdefault("PREFECT_API_URL", str(get_client(sync_client=True).api_url))
        for var in THREAD_ENV:
            env.setdefault(var, str(kwargs.get("threads_per_worker") or 1))
        kwargs["env"] = env
    else:
        # threads: distributed binds each worker's HTTP server to all interfaces unless told
        kwargs.setdefault("worker_dashboard_address", "127.0.0.1:0")
    if kwargs.get("dashboard_address") is None:
        # the scheduler serves HTTP even without a dashboard, on ':8787' (all interfaces in threads mode)
        kwargs["dashboard_address"] = "127.0.0.1:0"
    return LocalCluster(**kwargs)


def dask_task_runner(cfg: DaskConfig) -> DaskTaskRunner:
    """A Dask task runner for ``cfg``: the given (or ``$HOMOGEN_DASK_ADDRESS``) cluster, else a LocalCluster.

    The cluster starts at the first submitted shard and stops with the flow run.
    """
    address = cfg.resolved_address()
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class=local_cluster,
        cluster_kwargs={
            "n_workers": cfg.resolved_workers(),
            "threads_per_worker": cfg.threads_per_worker,
            "processes": cfg.processes,
            "dashboard_address": cfg.dashboard_address,
        },
    )
