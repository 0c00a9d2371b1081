"""Every evaluation method on the same pairs from the bundled photographs, on one core: MACE and ms/pair.

Generates a store from homogen/data/coco-sample (rho 32, P 128 by default) in a temporary folder,
then runs each method of ``homogen.model.evaluate.METHODS`` (one OpenCV and one torch thread) on
the first ``--pairs`` pairs. Prints wall-clock and process-CPU milliseconds per pair (the CPU
figure is what one quiet core would take; the wall figure also counts waiting on a busy machine),
the ratio of each method's CPU time to ECC's in the same run, and the load average.

    python bench/methods.py                      # 64 pairs, photometric none
    python bench/methods.py --pairs 128 --photometric hard --methods ecc,direct-ncc
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import cv2
import torch

from homogen.config import GenerateConfig, SamplingConfig
from homogen.generate import generate
from homogen.model.data import load_split
from homogen.model.evaluate import METHODS, method_label
from homogen.model.metrics import pair_errors, summarize
from homogen.model.methods import prepare
from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--rho", type=int, default=32)
    ap.add_argument("--photometric", default="none", choices=["none", "easy", "hard", "tough"])
    ap.add_argument("--methods", default=",".join(m for m in METHODS if m != "identity+refine"))
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    prepare(methods)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GenerateConfig(
            output=os.path.join(tmp, "ds.zarr"),
            sampling=SamplingConfig(rho=args.rho, pairs_per_image=4, photometric=args.photometric),
        )
        generate(cfg, progress=False)
        pairs, offsets = load_split(cfg.output, None, limit=args.pairs)
    print(
        f"{cpu_model()}, nproc {os.cpu_count()}, 1 OpenCV + 1 torch thread; {len(pairs)} pairs from the bundled "
        f"photographs, rho {args.rho}, P {pairs.shape[-1]}, photometric {args.photometric}"
    )
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    rows = {}
    for m in methods:
        w0, c0 = time.perf_counter(), time.process_time()
        pred, failed = METHODS[m].run(pairs, None)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rows[m] = (summarize(pair_errors(pred, offsets), failed), 1000 * wall / len(pairs), 1000 * cpu / len(pairs))
    ecc_cpu = rows["ecc"][2] if "ecc" in rows else float("nan")
    print("| method | MACE mean (px) | median (px) | p95 (px) | failures | ms/pair wall | ms/pair CPU | CPU vs ECC |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m, (s, wall, cpu) in rows.items():
        print(
            f"| {method_label(m)} | {s['mean']:.2f} | {s['median']:.2f} | {s['p95']:.2f} | {s['failures']}/{s['n']} "
            f"| {wall:.1f} | {cpu:.1f} | {cpu / ecc_cpu:.2f} |"
        )
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
