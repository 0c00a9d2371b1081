"""Generation throughput: the ``generate-dataset`` flow on 1 and 2 Dask workers vs the library in one process.

    python bench/scaling.py                  # 10,016 pairs: 2,504 image records x 4 pairs, 64 images a shard
    python bench/scaling.py --images 500 --repeats 3
    python bench/scaling.py --source /data/coco --pairs-per-image 4

A realistic job: the recipe's 4 pairs per image over 2,504 distinct image records (hard links to the
32 bundled photographs under distinct numeric names, ``bench/generation.py``'s ``link_farm``, so
each is a distinct image id, decoded on its own), cut in shards of the default 64 images (40
shards). Every variant makes the same dataset (same config, separate outputs, checked equal by
version and count). Timings are wall clock; the Prefect API is started before timing (a warm-up
flow). Everything runs one thread per process (OpenCV, OpenMP, Blosc), the direct call included,
so that 1 worker and the direct call do the same work on one core.

- *direct*: ``homogen.generate.generate`` in this process (the baseline).
- *cold*: what one ``generate-dataset`` run pays on a fresh machine: the flow starts its own
  LocalCluster, runs, and stops it. The flow's default settings are this, with one worker per
  core. Its workers are spawned (distributed's default) and each re-imports this script, in
  every cold run, as it would in a long-lived serving process.
- *warm*: the flow on a cluster that is already up (``DaskConfig.address``, as with
  ``HOMOGEN_DASK_ADDRESS``): the Prefect + Dask orchestration overhead alone, the fair measure
  of per-run overhead. The cluster is started (and warmed by one small flow run) for that run
  alone, so that no idle cluster slows the other variants.
- *no orchestration*: the ceiling of any orchestrator on this machine. The library's plan, then
  the same shard function on 2 processes of a ``multiprocessing`` pool (multiprocessing's
  forkserver; no Prefect, no Dask, no retries, no progress), then the library's commit.

Targets (2-core machine): the flow at its default settings (cold, 2 workers) >= 1.8x the direct
call, the last line printed; flow on 1 worker within 10 % of the direct call (overhead =
t_flow_1 / t_direct - 1) at 10,000 pairs. With ``--repeats`` the best time of each is used (the
least disturbed by other load on the machine); the load average is printed before and after.
"""

from __future__ import annotations

import os

# One thread per process, set before OpenCV / Blosc start their pools. Dask's workers re-run this
# module (multiprocessing's spawn), so they get the same settings (and flows.cluster sets them too).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS", "OPENCV_FOR_THREADS_NUM"):
    os.environ.setdefault(_var, "1")
# Prefect's ephemeral API (when no PREFECT_API_URL is set) gives up after 20 s by default: too
# short on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager, nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import psutil  # noqa: E402
from prefect import flow  # noqa: E402

from machine import cpu_model  # noqa: E402  # bench/machine.py (the script folder is on sys.path)
from homogen.flows.cluster import DaskConfig, local_cluster  # noqa: E402
from homogen.flows.generate import generate_dataset  # noqa: E402
from homogen.flows.shards import write_shard  # noqa: E402
from homogen.config import SAMPLE_ROOT, GenerateConfig, SamplingConfig, SourceConfig  # noqa: E402
from homogen.generate import generate, plan  # noqa: E402
from homogen.stores import open_dataset, open_writer  # noqa: E402

cv2.setNumThreads(1)

DEFAULT_SHARD_SIZE = GenerateConfig.model_fields["shard_size"].default


def make_link_farm(folder: Path, n_images: int) -> str:
    """``n_images`` distinct image records (``bench/generation.py``'s ``link_farm``); returns the folder.

    Imported here, not at module level: that module pins its process to one core when imported,
    and Dask workers re-import this module; the affinity is restored after the import.
    """
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from generation import link_farm
    finally:
        sys.path.pop(0)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    return str(link_farm(folder, n_images))


def config(source: str, pairs_per_image: int, shard_size: int, output: str) -> GenerateConfig:
    """The recipe at ``pairs_per_image`` over every image of ``source``, ``shard_size`` images a shard."""
    return GenerateConfig(
        source=SourceConfig(root=source),
        sampling=SamplingConfig(pairs_per_image=pairs_per_image),
        shard_size=shard_size,
        output=output,
    )


def _write_shard(args: tuple) -> object:
    return write_shard(*args)


def without_orchestration(cfg: GenerateConfig, processes: int = 2) -> dict:
    """``cfg``'s dataset made by the library's plan, shards and commit, the shards on ``processes``
    processes of a plain ``multiprocessing`` pool: what the flow would take if Prefect and Dask cost
    nothing. Returns the manifest."""
    import multiprocessing

    p = plan(cfg)
    writer = open_writer(p.output, cfg.store_format(), cfg.chunk_size)
    with writer.lock():
        writer.prepare(p)
        args = [(p.output, cfg.store_format(), cfg.chunk_size, shard, cfg.sampling) for shard in p.shards]
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(processes) as pool:
            results = pool.map(_write_shard, args, chunksize=1)
        return writer.commit(p, results)


def cpu_seconds() -> float:
    """CPU time used so far by this process and all its descendants: finished children, and live
    ones with what they reaped (the cold clusters' workers, the warm clusters' workers; a Prefect
    server only when it is this process's ephemeral one)."""
    me = psutil.Process()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + children.ru_utime + children.ru_stime
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``fn()``."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    return t, cpu_seconds() - c0


@flow(name="bench-warm-up")
def warm_up() -> None:
    """Starts the Prefect API (ephemeral or not) before anything is timed."""


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{cpu_model()}, {cores} cores, {platform.python_implementation()} {platform.python_version()}, load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=2_504, help="distinct image records linked to the bundled photos (default 2,504)"
    )
    parser.add_argument("--source", default=None, help="COCO root or image folder instead of the linked records")
    parser.add_argument("--pairs-per-image", type=int, default=4, help="pairs per image (default 4, the recipe's)")
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help=f"images per shard (default {DEFAULT_SHARD_SIZE})"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant; the best counts")
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temporary folder, removed)")
    args = parser.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="homogen-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    source = args.source or make_link_farm(root / "images", args.images)
    images = plan(GenerateConfig(source=SourceConfig(root=source))).num_images
    print(f"machine: {machine()}")
    warm_up()

    def cfg(out: str) -> GenerateConfig:
        return config(source, args.pairs_per_image, args.shard_size, out)

    def on(dask: DaskConfig):
        return lambda out, _: generate_dataset(cfg(out), dask)

    def on_warm(out: str, dask: DaskConfig) -> dict:
        return generate_dataset(cfg(out), dask)

    @contextmanager
    def warm_cluster(n: int) -> Iterator[DaskConfig]:
        """A cluster of ``n`` workers, up and through one small flow run, for one timed run: no
        cluster idles in the background of the other variants (its ticks would slow them)."""
        cluster = local_cluster(n_workers=n, threads_per_worker=1, dashboard_address=None)
        try:
            dask = DaskConfig(address=cluster.scheduler_address)
            generate_dataset(config(SAMPLE_ROOT, 1, 4, str(root / f"warm-{n}.zarr")), dask)  # workers import homogen
            shutil.rmtree(root / f"warm-{n}.zarr", ignore_errors=True)
            yield dask
        finally:
            cluster.close()

    variants = {  # name: (context around the timed call, what it yields passed to the timed call)
        "direct (library, 1 process)": (nullcontext, lambda out, _: generate(cfg(out), progress=False)),
        "flow, 1 worker, cold": (nullcontext, on(DaskConfig(n_workers=1, dashboard_address=None))),
        "flow, 2 workers, cold": (nullcontext, on(DaskConfig(n_workers=2, dashboard_address=None))),
        "flow, 1 worker, warm": (lambda: warm_cluster(1), on_warm),
        "flow, 2 workers, warm": (lambda: warm_cluster(2), on_warm),
        "no orchestration, 2 processes": (nullcontext, lambda out, _: without_orchestration(cfg(out))),
    }
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    versions = set()
    try:
        for r in range(args.repeats):
            for i, (name, (context, run)) in enumerate(variants.items()):
                out = str(root / f"v{i}-r{r}.zarr")
                with context() as arg:
                    t, c = timed(lambda: run(out, arg))  # noqa: B023  (called at once)
                print(
                    f"  run {r + 1}: {name:32s} {t:8.2f} s  {c:7.2f} CPU s  load {os.getloadavg()[0]:.1f}", flush=True
                )
                best[name] = min(best.get(name, math.inf), t)
                cpu[name] = min(cpu.get(name, math.inf), c)
                ds = open_dataset(out)
                versions.add((ds.version, len(ds)))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    assert len(versions) == 1, f"the variants made different datasets: {versions}"
    ((version, n),) = versions
    shards = math.ceil(images / args.shard_size)
    print(
        f"dataset {version}: {n} pairs from {images} images ({args.pairs_per_image}/image), "
        f"{shards} shards of {args.shard_size} images, best of {args.repeats}"
    )
    print(f"{'variant':32s} {'seconds':>8s} {'pairs/s':>9s} {'vs direct':>9s} {'CPU s':>7s}")
    direct, direct_cpu = best["direct (library, 1 process)"], cpu["direct (library, 1 process)"]
    for name, t in best.items():
        print(f"{name:32s} {t:8.2f} {n / t:9.1f} {direct / t:8.2f}x {cpu[name]:7.2f}")
    for mode in ("cold", "warm"):
        one, two = best[f"flow, 1 worker, {mode}"], best[f"flow, 2 workers, {mode}"]
        print(
            f"{mode}: speed-up 2 workers / 1 worker {one / two:.2f}x; "
            f"Prefect + Dask overhead on 1 worker vs direct {100 * (one / direct - 1):+.1f} % wall, "
            f"{100 * (cpu[f'flow, 1 worker, {mode}'] / direct_cpu - 1):+.1f} % CPU (target <= 10 %)"
        )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ceiling = best["no orchestration, 2 processes"]
    print(
        f"no orchestration 2 processes / direct 1 process: {direct / ceiling:.2f}x "
        f"(the ceiling on this machine; the flow reaches "
        f"{100 * ceiling / best['flow, 2 workers, cold']:.0f} % of it cold, "
        f"{100 * ceiling / best['flow, 2 workers, warm']:.0f} % warm)"
    )
    print(f"flow 2 workers / direct 1 process: {direct / best['flow, 2 workers, cold']:.2f}x")
    print(f"flow / no-orchestration ceiling, served (warm): {ceiling / best['flow, 2 workers, warm']:.2f} (target 0.95)")
    print(f"flow / no-orchestration ceiling: {ceiling / best['flow, 2 workers, cold']:.2f}")  # defaults, cold (target 0.85)


if __name__ == "__main__":
    main()
