"""Generation throughput: the ``generate-dataset`` flow on 1 and 2 Dask workers vs the library in one process.

    python bench/scaling.py                  # 10,000 pairs from the bundled images
    python bench/scaling.py --pairs 2000 --repeats 3

Every variant makes the same dataset (same config, separate outputs, checked equal by version
and count). Timings are wall clock; the Prefect API is started before timing (a warm-up flow).

- *cold*: what one ``generate-dataset`` run pays on a fresh machine: the flow starts its own
  LocalCluster (worker processes that import Prefect and homogen), runs, and stops it.
- *warm*: the flow on a cluster that is already up (``DaskConfig.address``, as with
  ``HOMOGEN_DASK_ADDRESS``): the Prefect + Dask orchestration overhead alone.

Targets (2-core machine): 2 workers >= 1.7x 1 worker; flow on 1 worker within 15 % of the
direct call (overhead = t_flow_1 / t_direct - 1) at 10,000 pairs. With ``--repeats`` the best
time of each is used (the least disturbed by other load on the machine).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from prefect import flow

from flows.cluster import DaskConfig, local_cluster
from flows.generate import generate_dataset_on
from homogen.config import SAMPLE_ROOT, GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, plan
from homogen.stores import open_dataset


def config(source: str, pairs: int, images: int, shard_size: int, output: str) -> GenerateConfig:
    """``pairs`` pairs (rounded up to whole images) of the recipe from ``images`` source images."""
    return GenerateConfig(
        source=SourceConfig(root=source),
        sampling=SamplingConfig(pairs_per_image=math.ceil(pairs / images)),
        shard_size=shard_size,
        output=output,
    )


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@flow(name="bench-warm-up")
def warm_up() -> None:
    """Starts the Prefect API (ephemeral or not) before anything is timed."""


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{cpu}, {cores} cores, {platform.python_implementation()} {platform.python_version()}, load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000, help="pairs per dataset (default 10,000)")
    parser.add_argument("--source", default=SAMPLE_ROOT, help="COCO root or image folder (default: bundled 32 images)")
    parser.add_argument("--shard-size", type=int, default=4, help="images per shard (default 4: 8 shards of the bundled images)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant; the best counts")
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temporary folder, removed)")
    args = parser.parse_args()

    images = plan(GenerateConfig(source=SourceConfig(root=args.source))).num_images
    root = Path(args.workdir or tempfile.mkdtemp(prefix="homogen-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    warm_up()

    def cfg(out: str) -> GenerateConfig:
        return config(args.source, args.pairs, images, args.shard_size, out)

    def on(dask: DaskConfig):
        return lambda out: generate_dataset_on(dask)(cfg(out))

    # started after the warm-up flow, so that local_cluster hands the workers this process's Prefect API
    clusters = {n: local_cluster(n_workers=n, threads_per_worker=1, dashboard_address=None) for n in (1, 2)}
    variants = {
        "direct (library, 1 process)": lambda out: generate(cfg(out), progress=False),
        "flow, 1 worker, cold": on(DaskConfig(n_workers=1, dashboard_address=None)),
        "flow, 2 workers, cold": on(DaskConfig(n_workers=2, dashboard_address=None)),
        "flow, 1 worker, warm": on(DaskConfig(address=clusters[1].scheduler_address)),
        "flow, 2 workers, warm": on(DaskConfig(address=clusters[2].scheduler_address)),
    }
    best: dict[str, float] = {}
    versions = set()
    try:
        for n, cluster in clusters.items():  # the warm clusters' workers import Prefect and homogen now
            generate_dataset_on(DaskConfig(address=cluster.scheduler_address))(config(args.source, 4, images, args.shard_size, str(root / f"warm-{n}.zarr")))
        for r in range(args.repeats):
            for i, (name, run) in enumerate(variants.items()):
                out = str(root / f"v{i}-r{r}.zarr")
                t = timed(lambda: run(out))
                best[name] = min(best.get(name, math.inf), t)
                ds = open_dataset(out)
                versions.add((ds.version, len(ds)))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        for cluster in clusters.values():
            cluster.close()
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    assert len(versions) == 1, f"the variants made different datasets: {versions}"
    (version, n), = versions
    cfg = config(args.source, args.pairs, images, args.shard_size, "x")
    shards = math.ceil(images / args.shard_size)
    print(f"dataset {version}: {n} pairs from {images} images ({cfg.sampling.pairs_per_image}/image), {shards} shards, best of {args.repeats}")
    print(f"{'variant':32s} {'seconds':>8s} {'pairs/s':>9s}")
    for name, t in best.items():
        print(f"{name:32s} {t:8.2f} {n / t:9.1f}")
    direct = best["direct (library, 1 process)"]
    for mode in ("cold", "warm"):
        one, two = best[f"flow, 1 worker, {mode}"], best[f"flow, 2 workers, {mode}"]
        print(f"{mode}: speed-up 2 workers / 1 worker {one / two:.2f}x (target >= 1.7x); "
              f"Prefect + Dask overhead on 1 worker vs direct {100 * (one / direct - 1):+.1f} % (target <= 15 %)")


if __name__ == "__main__":
    main()
