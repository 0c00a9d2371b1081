"""Where generation's shards run: :class:`DaskConfig` and the cluster it names or starts (:func:`dask_scheduler`).

The flow process submits plain Dask tasks (:func:`homogen.flows.shards.write_shard`), not Prefect
tasks, so workers never talk to Prefect: they need no Prefect API URL and pay no per-task Prefect
cost. A LocalCluster's workers are started the way distributed starts them by default (*spawn*),
configured through its public settings only (:func:`worker_dask_config`): each is a fresh
interpreter that re-runs the program's ``__main__`` module (multiprocessing's rule), so torch-free
entry points (``python -m homogen.flows.generate``, ``bench/scaling.py``) keep the workers light,
and a script that starts the flow outside ``if __name__ == "__main__":`` is refused at once
(:func:`unguarded_main_call`) rather than left to start the flow again in every worker.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import LocalCluster
from pydantic import BaseModel, ConfigDict, Field

from homogen.environment import environment

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS", "OPENCV_FOR_THREADS_NUM")
"""Thread-pool sizes of the numerical libraries, set to ``threads_per_worker`` in LocalCluster worker
processes (OpenCV and Blosc would otherwise start a thread per core in every worker)."""


def worker_dask_config(threads_per_worker: int = 1, env: dict[str, str] | None = None) -> dict:
    """Dask config of the LocalCluster's worker processes (measured in docs/BENCHMARKS.md, *Scaling*).

    - the variables the numerical libraries read when they load (:data:`THREAD_ENV`, at
      ``threads_per_worker``; ``env`` wins) as Dask's *pre-spawn* environment: the only public
      route by which a variable reaches a spawned worker before it imports anything. Dask sets them
      in this process to do so (its documented cost): :func:`dask_scheduler` and
      :func:`local_cluster` put this process's own values back once the workers are started.
    - glibc's own malloc thresholds: Dask's default pre-spawn ``MALLOC_TRIM_THRESHOLD_=65536`` also
      freezes glibc's mmap threshold at 128 KiB, so every larger buffer (a decoded photograph, a
      shard's arrays) becomes a fresh ``mmap`` zero-filled page by page on first touch: twice the
      page faults, 10-15 % more time for the shards. A shard's arrays are bounded by the config
      (:data:`homogen.config.MAX_SHARD_BYTES`), so the free memory that trimming returns stays small.
    - no statistical profiler (the dashboard's *Profile* page): it samples every worker thread's
      stack every 10 ms, about 6 % of the shards' time. The dashboard's task stream and progress stay.
    """
    pre_spawn = {var: str(threads_per_worker) for var in THREAD_ENV} | dict(env or {})
    return {
        "distributed.worker.multiprocessing-method": "spawn",  # the default; pre-spawn variables need it
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        **{f"distributed.nanny.pre-spawn-environ.{var}": value for var, value in pre_spawn.items()},
        "distributed.worker.profile.enabled": False,
    }


@contextmanager
def own_environment() -> Iterator[None]:
    """This process's pre-spawn variables (those Dask's nannies set here) as they were, after the block."""
    touched = (*THREAD_ENV, "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED")
    with environment({var: os.environ.get(var) for var in touched}):
        yield


DASK_ADDRESS_ENV = "HOMOGEN_DASK_ADDRESS"
"""Environment variable with a Dask scheduler address (``tcp://host:8786``) to use instead of a LocalCluster."""

SERVED_DASK_ADDRESS_ENV = "HOMOGEN_SERVED_DASK_ADDRESS"
"""The scheduler of the LocalCluster a serving process (``python -m homogen.deployments.serve``) keeps for
its runs, set in their environment: used by a run whose ``dask`` section is the default one
(:meth:`DaskConfig.resolved_address`)."""


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
        """The scheduler address to connect to, or None for a LocalCluster of its own (read at run time).

        ``address``, else ``$HOMOGEN_DASK_ADDRESS``, else, when this config is the default one, the
        serving process's warm cluster (``$HOMOGEN_SERVED_DASK_ADDRESS``).
        """
        found = self.address or os.environ.get(DASK_ADDRESS_ENV)
        if not found and self == DaskConfig():
            found = os.environ.get(SERVED_DASK_ADDRESS_ENV)
        return found or None

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

    Worker processes get :data:`THREAD_ENV` set to their thread count (``env`` wins), so that ``n``
    workers of one thread use ``n`` cores, not ``n`` times the cores, and the rest of
    :func:`worker_dask_config`; this process's environment is left as it was. Workers added later
    by ``scale`` need that config held, as :func:`dask_scheduler` does.
    """
    config = worker_dask_config(kwargs.get("threads_per_worker") or 1, kwargs.pop("env", None))
    if not kwargs.get("processes", True):
        # threads: distributed binds each worker's HTTP server to all interfaces unless told
        kwargs.setdefault("worker_dashboard_address", "127.0.0.1:0")
    if kwargs.get("dashboard_address") is None:
        # the scheduler serves HTTP even without a dashboard, on ':8787' (all interfaces in threads mode)
        kwargs["dashboard_address"] = "127.0.0.1:0"
    with own_environment(), dask.config.set(config):
        return LocalCluster(**kwargs)


def cluster_kwargs(cfg: DaskConfig) -> dict:
    """The :func:`local_cluster` arguments for ``cfg`` (when it names no address)."""
    return {
        "n_workers": cfg.resolved_workers(),
        "threads_per_worker": cfg.threads_per_worker,
        "processes": cfg.processes,
        "dashboard_address": cfg.dashboard_address,
    }


def is_main_guard(node: ast.AST) -> bool:
    """``node`` is ``if __name__ == "__main__":`` (either side)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.comparators) != 1:
        return False
    sides = [node.test.left, node.test.comparators[0]]
    names = {n.id for n in sides if isinstance(n, ast.Name)}
    values = {n.value for n in sides if isinstance(n, ast.Constant)}
    return isinstance(node.test.ops[0], ast.Eq) and names == {"__name__"} and values == {"__main__"}


def unguarded_main_call() -> str | None:
    """Why this program's workers could not start, when it is a main script that starts the flow
    outside ``if __name__ == "__main__":``; None otherwise.

    multiprocessing re-runs the main module in each worker process it starts (a script by path, a
    ``python -m`` module by name; never ``pkg.__main__``, ``python -c`` or a notebook), so such a
    call would start the flow again in every worker, and no worker would ever join. Found by
    reading the script's code (``ast``) at the line of its module-level frame on this call stack.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    name = getattr(getattr(main, "__spec__", None), "name", None)
    rerun = (name != "__main__" and not name.endswith(".__main__")) if name is not None else bool(path)
    if not rerun or not path or not os.path.isfile(path):
        return None
    frame = inspect.currentframe()
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:  # not called from the script's own top level (a thread, a callback)
        return None
    line = frame.f_lineno
    try:
        tree = ast.parse(open(path, "rb").read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    if any(is_main_guard(node) and node.lineno <= line <= node.end_lineno for node in ast.walk(tree)):
        return None
    return (
        f"{path}, line {line}, starts the flow when the file is imported: Dask's worker processes import the "
        "main script again (Python's multiprocessing does), so each would start the flow too and none would "
        'ever join. Put that call under `if __name__ == "__main__":`'
    )


@contextmanager
def dask_scheduler(cfg: DaskConfig) -> Iterator[str]:
    """The scheduler address of the cluster ``cfg`` names (or ``$HOMOGEN_DASK_ADDRESS``), else of a new LocalCluster.

    A LocalCluster's workers start in the background (``scale``), so that the caller can plan
    while they spawn (a worker process takes 1-3 s to start on 2 busy cores); shards submitted
    before they are up wait for them. Each worker starts with this process's environment as it is
    then (storage options loaded from a Secret block included). A LocalCluster started here stops
    when the block ends; an existing cluster is left running.

    Raises:
        RuntimeError: worker processes would re-run a script that starts the flow unguarded
            (:func:`unguarded_main_call`): at once, naming the line and the fix.
    """
    address = cfg.resolved_address()
    if address:
        yield address
        return
    kwargs = cluster_kwargs(cfg)
    n_workers = kwargs.pop("n_workers")
    if kwargs["processes"] and (problem := unguarded_main_call()):
        raise RuntimeError(problem)
    with (
        own_environment(),
        dask.config.set(worker_dask_config(cfg.threads_per_worker)),
        local_cluster(n_workers=0, **kwargs) as cluster,
    ):
        cluster.scale(n_workers)
        yield cluster.scheduler_address
