"""Training throughput of the full-width HomographyNet (the seed architecture), samples/s.

Runs model.train.train_one_epoch (the training code itself: uint8 in, normalisation in the model,
smooth-L1, Adam) on real pairs already in memory, so the figure is the model's and not the
loader's (bench/loader.py measures that). On CPU in float32; on CUDA, when available, also with
AMP (bfloat16) + channels_last, the pairs resident on the GPU, optionally torch.compile.

    python bench/train.py                    # CPU, then CUDA if there is one
    python bench/train.py --device cuda --batch-size 512 --steps 100 --compile
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)
from homogen.model.data import load_split
from homogen.model.network import HomographyNet
from homogen.model.train import make_criterion, train_one_epoch


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, torch {torch.__version__}"
    return f"{cpu_model()}, nproc {os.cpu_count()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def batches(pairs: torch.Tensor, offsets: torch.Tensor, batch_size: int, steps: int, seed: int = 0):
    """``steps`` random batches drawn (with replacement) from tensors on their own device."""
    g = torch.Generator(device=pairs.device).manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(pairs), (batch_size,), device=pairs.device, generator=g)
        yield pairs[idx], offsets[idx]


def measure(pairs, offsets, device: torch.device, args, amp: bool, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = HomographyNet(width=args.width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bfloat16 needs no loss scaling
    criterion = make_criterion("smooth_l1")
    pairs, offsets = pairs.to(device), offsets.to(device)
    kw = dict(amp=amp, amp_dtype="bfloat16", channels_last=channels_last)
    train_one_epoch(step_model, criterion, optimizer, batches(pairs, offsets, args.batch_size, args.warmup, 1), device, scaler, **kw)
    stats = train_one_epoch(step_model, criterion, optimizer, batches(pairs, offsets, args.batch_size, args.steps), device, scaler, **kw)
    return stats["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, then CUDA if present")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 4 on CPU, 200 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 30 on CUDA)")
    ap.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default: torch's; on a machine busy with other work 1 is often faster)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA runs)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ds.zarr")
        generate(GenerateConfig(output=out, sampling=SamplingConfig(pairs_per_image=16), source=SourceConfig()), progress=False)
        pairs, offsets = (torch.from_numpy(a) for a in load_split(out, None))
    print(f"data: {len(pairs)} real pairs 2x128x128 uint8 in memory; model: HomographyNet(width={args.width}), "
          f"{sum(p.numel() for p in HomographyNet(args.width).parameters()):,} parameters")

    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    for device in devices:
        cuda = device.type == "cuda"
        run = argparse.Namespace(**vars(args))
        run.batch_size = args.batch_size or (256 if cuda else 64)
        run.steps = args.steps or (200 if cuda else 4)
        run.warmup = args.warmup or (30 if cuda else 1)
        run.compile = args.compile and cuda
        print(f"device: {describe(device)}")
        configs = [("float32", False, False)] + ([("AMP bf16 + channels_last", True, True)] if cuda else [])
        for label, amp, cl in configs:
            t0 = time.perf_counter()
            rate = measure(pairs, offsets, device, run, amp, cl)
            print(
                f"  {label:<28} batch {run.batch_size:>4}  {run.steps} steps"
                f"{'  compiled' if run.compile else ''}: {rate:>10,.0f} samples/s  ({time.perf_counter() - t0:.0f} s)"
            )


if __name__ == "__main__":
    main()
