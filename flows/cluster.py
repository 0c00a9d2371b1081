"""Where generation's shards run: :class:`DaskConfig` and the cluster it names or starts (:func:`dask_scheduler`).

The flow process submits plain Dask tasks (:func:`homogen.flows.shards.write_shard`), not Prefect
tasks, so workers never talk to Prefect: they need no Prefect API URL and pay no per-task Prefect
cost. A LocalCluster's workers fork from a forkserver that has imported, once, what the program's
``__main__`` module needs (:func:`worker_start_method`); multiprocessing still re-runs that module
in every worker, so torch-free entry points (``python -m homogen.flows.generate``,
``bench/scaling.py``) keep the workers light.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import ModuleType

import dask
from distributed import LocalCluster
from distributed.utils import get_mp_context
from pydantic import BaseModel, ConfigDict, Field

from homogen.environment import environment
from homogen.flows.forkserver import PRELOAD_ENV

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS", "OPENCV_FOR_THREADS_NUM")
"""Thread-pool sizes of the numerical libraries, set to ``threads_per_worker`` in LocalCluster worker
processes (OpenCV and Blosc would otherwise start a thread per core in every worker)."""

WORKER_DASK_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}
"""Dask config of the LocalCluster's worker processes (measured in docs/BENCHMARKS.md, *Scaling*).

- glibc's own malloc thresholds: Dask's nannies set ``MALLOC_TRIM_THRESHOLD_=65536``, which also
  freezes glibc's mmap threshold at 128 KiB, so every larger buffer (a decoded photograph, a
  shard's arrays) becomes a fresh ``mmap`` zero-filled page by page on first touch: twice the page
  faults, 10-15 % more time for the shards. A shard's arrays are bounded by the config
  (:data:`homogen.config.MAX_SHARD_BYTES`), so the free memory that trimming returns stays small.
- no statistical profiler (the dashboard's *Profile* page): it samples every worker thread's
  stack every 10 ms, about 6 % of the shards' time. The dashboard's task stream and progress stay.
"""

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
    """A LocalCluster of this machine whose sockets listen on loopback only.

    Worker processes get :data:`THREAD_ENV` set to their thread count, so that ``n`` workers of
    one thread use ``n`` cores, not ``n`` times the cores; their Dask config is
    :data:`WORKER_DASK_CONFIG` (workers added later by ``scale`` need it held, as
    :func:`dask_scheduler` does).
    """
    if kwargs.get("processes", True):
        env = dict(kwargs.pop("env", None) or {})
        for var in THREAD_ENV:
            env.setdefault(var, str(kwargs.get("threads_per_worker") or 1))
        kwargs["env"] = env
    else:
        # threads: distributed binds each worker's HTTP server to all interfaces unless told
        kwargs.setdefault("worker_dashboard_address", "127.0.0.1:0")
    if kwargs.get("dashboard_address") is None:
        # the scheduler serves HTTP even without a dashboard, on ':8787' (all interfaces in threads mode)
        kwargs["dashboard_address"] = "127.0.0.1:0"
    with dask.config.set(WORKER_DASK_CONFIG):
        return LocalCluster(**kwargs)


def cluster_kwargs(cfg: DaskConfig) -> dict:
    """The :func:`local_cluster` arguments for ``cfg`` (when it names no address)."""
    return {
        "n_workers": cfg.resolved_workers(),
        "threads_per_worker": cfg.threads_per_worker,
        "processes": cfg.processes,
        "dashboard_address": cfg.dashboard_address,
    }


def worker_start_method(threads_per_worker: int = 1) -> AbstractContextManager:
    """Worker processes started by a *forkserver* that has imported this program once.

    With *spawn* (distributed's default) every worker process re-imports the program's
    ``__main__`` module, Prefect and homogen included: 2-5 CPU s per worker on this 2-core machine,
    more than the shards' work on a small dataset. The forkserver imports them once (while the flow
    plans its shards), then forks each worker from that single-threaded process: later workers
    start in a fraction of a second, and a long-lived process (a served deployment) pays the import
    once for all its runs. Returns the context in which the cluster's workers must be started.

    The forkserver is started here (once per process) with :func:`worker_environ`, which its
    workers inherit when they start. Dask's nannies then set no pre-spawn variables: with a
    forkserver they would reach no worker, only this process (``OMP_NUM_THREADS=1`` left here
    made torch train on one thread after the first generation).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return nullcontext()
    method = {"distributed.worker.multiprocessing-method": "forkserver"}
    with dask.config.set(method):
        # distributed replaces the forkserver's preload list with its own (distributed, numpy, ...)
        # the first time it asks for this context: let it do so now, so that ours is the one kept
        # (without it every worker re-imported the program: ~2 CPU s each, bench/scaling.py)
        context = get_mp_context()
    # no effect once the forkserver runs: it has them. The program's own modules go through
    # homogen.flows.forkserver, which skips any that fails there instead of dying with it
    context.set_forkserver_preload(["distributed", "homogen.flows.shards", "homogen.flows.forkserver"])
    wanted = json.dumps({"modules": forkserver_preload(), "path": sys.path})
    start_forkserver({**worker_environ(threads_per_worker), PRELOAD_ENV: wanted})
    return dask.config.set({**method, "distributed.nanny.pre-spawn-environ": {}})


def worker_environ(threads_per_worker: int = 1) -> dict[str, str | None]:
    """The variables a worker process needs from its start: :data:`THREAD_ENV` at its thread
    count (read when the libraries load), and no ``MALLOC_TRIM_THRESHOLD_`` (:data:`WORKER_DASK_CONFIG`).
    ``None`` means unset."""
    return {**{var: str(threads_per_worker) for var in THREAD_ENV}, "MALLOC_TRIM_THRESHOLD_": None}


def start_forkserver(environ: dict[str, str | None]) -> None:
    """Start this process's forkserver, if it is not running, with ``environ`` over this process's environment.

    Only those variables change here, for the moment the server process starts, and are then
    restored; a forkserver already running is left as it is.
    """
    with environment(environ):
        multiprocessing.forkserver.ensure_running()


def forkserver_preload() -> list[str]:
    """What the forkserver imports once (:mod:`homogen.flows.forkserver`) so that each worker forked
    from it starts at once: the modules the program's ``__main__`` module imported.

    multiprocessing re-runs ``__main__`` in every worker, as ``__mp_main__``: a ``python -m`` module
    by name, a script by path; its imports are then already loaded. The module itself is not
    preloaded: it would run twice in the server (``pkg/__main__.py`` starting the whole program
    again) or warn in each worker. Nothing is re-run, so nothing is added, for ``python -m pkg``
    (``pkg.__main__``) and for an interactive ``__main__`` (a notebook, ``python -c``).
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:  # multiprocessing's own rule (spawn._fixup_main_from_name)
        rerun = name != "__main__" and not name.endswith(".__main__")
    else:
        rerun = bool(getattr(main, "__file__", None))
    needed = []
    for key, value in vars(main).items() if rerun else ():
        if key.startswith("__"):  # __builtins__, __loader__, ...
            continue
        module = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if isinstance(module, str) and module not in ("__main__", "__mp_main__", "builtins", name):
            needed.append(module)
    return list(dict.fromkeys(needed))


@contextmanager
def dask_scheduler(cfg: DaskConfig) -> Iterator[str]:
    """The scheduler address of the cluster ``cfg`` names (or ``$HOMOGEN_DASK_ADDRESS``), else of a new LocalCluster.

    A LocalCluster's workers start in the background (``scale``), so that the caller can plan
    while they spawn (a worker process takes 1-3 s to start on 2 busy cores); shards submitted
    before they are up wait for them. A LocalCluster started here stops when the block ends; an
    existing cluster is left running.
    """
    address = cfg.resolved_address()
    if address:
        yield address
        return
    kwargs = cluster_kwargs(cfg)
    n_workers = kwargs.pop("n_workers")
    if kwargs["processes"]:
        # this process's environment now (storage options set since the forkserver started, for one),
        # applied in each worker as it starts; the variables read at library load come from worker_environ
        environ = worker_environ(cfg.threads_per_worker)
        kwargs["env"] = {k: v for k, v in {**os.environ, **environ}.items() if v is not None}
    with (
        worker_start_method(cfg.threads_per_worker) if kwargs["processes"] else nullcontext(),
        dask.config.set(WORKER_DASK_CONFIG),
        local_cluster(n_workers=0, **kwargs) as cluster,
    ):
        cluster.scale(n_workers)
        yield cluster.scheduler_address
