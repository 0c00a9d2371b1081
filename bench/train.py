"""Training throughput of the full-width HomographyNet, with the loader in the loop; can the loader
feed a GPU; and, on CUDA, the whole recipe (train for N minutes with AMP, val MACE curve, test MACE
beside ORB, SIFT and ECC on the same pairs).

Three parts:

1. **model**: ``train_one_epoch`` on real pairs already on the device (the model's own rate).
2. **loop**: the same, fed by ``homogen.model.data.make_loader`` from a Zarr store (what training
   really runs: read, decompress, shuffle, batch, copy to the device).
3. **feed**: what one CPU core of the loader delivers: the chunk stream on the main thread (pairs
   per CPU-second of this process), and the cost on the main process of receiving batches from a
   DataLoader worker (CPU-seconds per pair there). With ``W`` workers, the loader delivers at most
   ``min(W x producer rate, 1 / consumer cost)``: printed for 16 cores (14 workers).

4. **processes**: ``homogen.model.train.train`` on 1, 2, ... CPU processes (``--processes``; gloo,
   DistributedDataParallel, each process gets cores / N torch threads) on the same store and
   recipe (per-process batch ``--batch-size``), one epoch each after a warm-up epoch: samples/s of
   the whole group, and the ratio to one process. The speed-up needs cores (or GPUs) per process:
   on a 2-core machine two processes share the two cores that one process already used, so the
   ratio can only show what lock-step training costs (the gradient all-reduce and the per-step
   batch-size exchange), not a gain.

On CUDA, part 1-2 also times the first step at new batch sizes with cuDNN's autotuner on and off
(``cudnn.benchmark``: each new shape is timed algorithm by algorithm; every loader worker ends an
epoch on a smaller batch of another size, so training tunes the full batch only).

On CUDA, ``--recipe`` generates (or reuses) a store from ``--source`` (hash test split), trains for
``--minutes`` with AMP bf16 + channels_last, prints the val MACE after every epoch, then scores the
best checkpoint and ORB, SIFT and ECC once on the same test pairs.

    python bench/train.py                                    # CPU parts 1-3
    python bench/train.py --device cuda --batch-size 512 --compile
    python bench/train.py --device cuda --recipe --source ../shared/data/coco-mini --pairs 200000 --minutes 10
    python bench/train.py --device cpu --processes 1 2 --width 0.25      # part 4 only
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from homogen.config import MAX_SHARD_BYTES, GenerateConfig, SamplingConfig, SourceConfig, pair_bytes
from homogen.generate import generate
from homogen.model.data import load_split, make_loader
from homogen.model.network import HomographyNet
from homogen.model.train import make_criterion, train_one_epoch
from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)


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


def limited(loader, steps: int):
    """The first ``steps`` batches of ``loader``, epoch after epoch."""
    n, epoch = 0, 0
    while True:
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            if n == steps:
                return
            yield batch
            n += 1
        epoch += 1


def step_rate(source, device: torch.device, args, amp: bool, channels_last: bool, warmup, timed) -> float:
    """samples/s of ``train_one_epoch`` over ``timed`` batches after ``warmup`` (both iterables from ``source``)."""
    torch.manual_seed(0)
    model = HomographyNet(width=args.width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bfloat16 needs no loss scaling
    criterion = make_criterion("smooth_l1")
    kw = dict(amp=amp, amp_dtype="bfloat16", channels_last=channels_last)
    train_one_epoch(step_model, criterion, optimizer, warmup, device, scaler, **kw)
    return train_one_epoch(step_model, criterion, optimizer, timed, device, scaler, **kw)["samples_per_s"]


def feed(store: str, batch_size: int) -> tuple[float, float]:
    """(pairs per CPU-second of the chunk stream on this thread, main-process CPU-seconds per pair with 1 worker)."""
    stream = make_loader(store, "train", batch_size=batch_size, shuffle=True, num_workers=0, read_threads=0)
    t0, n = time.process_time(), 0
    for pairs, _ in stream:
        n += len(pairs)
    producer = n / (time.process_time() - t0)
    worker = make_loader(store, "train", batch_size=batch_size, shuffle=True, num_workers=1, read_threads=0)
    it = iter(worker)
    first = next(it)  # the worker's start-up is not the consumer's cost
    t0, n = time.process_time(), 0
    for pairs, _ in it:
        n += len(pairs)
    consumer = (time.process_time() - t0) / max(n, 1)
    del first
    return producer, consumer


def recipe_shard_size(per_image: int, images: int, cores: int | None = None) -> int:
    """Images per shard for many pairs per image: within MAX_SHARD_BYTES (64 images x 782 pairs of
    128 x 128 would be 1.65 GB), and at least one shard per core."""
    fits = max(1, MAX_SHARD_BYTES // (per_image * pair_bytes(128)))
    return max(1, min(64, fits, -(-images // (cores or os.cpu_count() or 1))))


def cudnn_new_shapes(device: torch.device, width: float, sizes=(37, 101, 163, 229)) -> tuple[float, float]:
    """Milliseconds of the first training step at each of ``sizes`` (new batch sizes), cuDNN autotuner
    on vs off (AMP bf16 + channels_last), mean over the sizes."""
    out = []
    for tune in (True, False):
        torch.backends.cudnn.benchmark = tune
        model = HomographyNet(width=width).to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        criterion = make_criterion("smooth_l1")
        x = torch.zeros(256, 2, 128, 128, dtype=torch.uint8, device=device).contiguous(
            memory_format=torch.channels_last
        )
        y = torch.zeros(256, 8, device=device)
        times = []
        for n in (256, *[s + (0 if tune else 1) for s in sizes]):  # other sizes for the second pass: all new
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pred = model(x[:n])
            loss = criterion(pred.float(), y[:n], x[:n])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        out.append(1000 * sum(times[1:]) / len(sizes))
    torch.backends.cudnn.benchmark = True
    return out[0], out[1]


def processes(args, store: str, workdir: str) -> None:
    """Part 4: samples/s of train() on 1, 2, ... CPU processes, side by side (one process twice: with
    torch's default threads, and with the per-process share that N processes get)."""
    from homogen.model.train import TrainConfig, train

    cores = os.cpu_count() or 1
    default_threads = torch.get_num_threads()
    runs = [(n, None) for n in args.processes]
    if 1 in args.processes and max(args.processes) > 1:
        runs.insert(1, (1, max(1, cores // max(args.processes))))
    base = None
    for n, threads in runs:
        cfg = TrainConfig(
            epochs=2,
            batch_size=args.batch_size or 64,
            width=args.width,
            patience=None,
            device="cpu",
            num_workers=args.num_workers or 0,
            nproc_per_node=n,
            checkpoint_dir=os.path.join(workdir, f"ck-{n}-{threads}"),
        )
        torch.set_num_threads(threads or default_threads)
        t0 = time.perf_counter()
        result = train(store, cfg, progress=False)
        torch.set_num_threads(default_threads)
        rate = result.history[-1]["samples_per_s"]  # epoch 2: warm
        base = base or rate
        each = threads or (default_threads if n == 1 else max(1, cores // n))
        print(
            f"  {n} process{'es' if n > 1 else '  '} x batch {cfg.batch_size} (global {n * cfg.batch_size:>4}), "
            f"{each} torch thread{'s' if each > 1 else ' '} each: {rate:>8,.1f} samples/s ({rate / base:.2f}x), "
            f"{time.perf_counter() - t0:.0f} s in all with start-up",
            flush=True,
        )


def recipe(args, device: torch.device) -> None:
    """Generate (or reuse) the store, train for ``args.minutes`` with AMP, print the val curve and the test table."""
    from homogen.model.evaluate import format_table, score_test
    from homogen.model.loading import load_model
    from homogen.model.train import TrainConfig, train
    from homogen.stores import open_dataset

    out = args.store or os.path.join(args.workdir or tempfile.mkdtemp(), "recipe.zarr")
    if not os.path.exists(out):
        images = max(1, sum(1 for _ in os.scandir(os.path.join(args.source, "train2017"))))
        per_image = max(1, -(-args.pairs // images))
        t0 = time.perf_counter()
        generate(
            GenerateConfig(
                output=out,
                sampling=SamplingConfig(pairs_per_image=per_image),
                source=SourceConfig(root=args.source),
                shard_size=recipe_shard_size(per_image, images),
            ),
            progress=True,
        )
        print(f"generated {out} in {time.perf_counter() - t0:.0f} s")
    ds = open_dataset(out)
    print(f"store {ds.version}: {len(ds)} pairs, splits {ds.split_counts()}")

    class TimeUp(Exception):
        pass

    start = time.perf_counter()

    def on_epoch(record):
        print(
            f"  epoch {record['epoch']:>3}  {time.perf_counter() - start:6.0f} s  loss {record['train_loss']:.3f}  "
            f"val MACE {record['val_mace']:.3f} px (median {record['val_median']:.3f}, p95 {record['val_p95']:.3f})  "
            f"{record['samples_per_s']:,.0f} samples/s",
            flush=True,
        )
        if time.perf_counter() - start > 60 * args.minutes:
            raise TimeUp

    ck = os.path.join(os.path.dirname(out), "checkpoints")
    cuda = device.type == "cuda"
    cfg = TrainConfig(
        epochs=1000,
        batch_size=args.batch_size or 256,
        lr=args.lr,
        step_size=args.step_size,
        gamma=0.5,
        patience=None,
        amp=cuda,
        channels_last=cuda,
        compile=args.compile,
        num_workers=args.num_workers,
        device=device.type,
        checkpoint_dir=ck,
        width=args.width,
    )
    print(f"device: {describe(device)}")
    print(
        f"training {args.minutes} min, batch {cfg.batch_size}, {'AMP bf16 + channels_last' if cuda else 'float32'}, "
        f"{cfg.num_workers} loader workers"
    )
    try:
        train(ds, cfg, progress=False, on_epoch=on_epoch)
    except TimeUp:
        pass
    model = load_model(os.path.join(ck, "best.pt")).to(device)
    scores = score_test(ds, model, ("identity", "orb", "sift", "ecc"), limit=args.test_pairs, batch_size=512)
    print(f"test split, {len(scores.pairs)} pairs (first {args.test_pairs}), best-val checkpoint:")
    print(format_table(scores.summary()))


def open_split_counts(store: str) -> str:
    from homogen.stores import open_dataset

    return ", ".join(f"{n} {s}" for s, n in open_dataset(store).split_counts().items()) + " pairs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, then CUDA if present")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 4 on CPU, 200 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 30 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--num-workers", type=int, default=None, help="loader workers (default 0 on CPU, 12 on CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA runs)")
    ap.add_argument("--recipe", action="store_true", help="generate, train --minutes (AMP on CUDA), test table")
    ap.add_argument("--source", default="../shared/data/coco-mini", help="--recipe: image folder or COCO root")
    ap.add_argument("--pairs", type=int, default=200_000, help="--recipe: pairs to generate (about)")
    ap.add_argument("--minutes", type=float, default=10.0, help="--recipe: training time")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--step-size", type=int, default=4, help="--recipe: epochs between halvings of the lr")
    ap.add_argument("--test-pairs", type=int, default=2000, help="--recipe: test pairs scored (ECC is ~40 ms a pair)")
    ap.add_argument("--store", default=None, help="--recipe: reuse this store")
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--processes", type=int, nargs="+", default=None, help="part 4 only: CPU training processes to compare"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")

    if args.recipe:
        device = torch.device("cpu" if args.device == "cpu" else "cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--recipe needs CUDA: run it on the GPU machine (or --device cpu for a smoke run)")
        args.num_workers = (12 if device.type == "cuda" else 0) if args.num_workers is None else args.num_workers
        recipe(args, device)
        return

    with tempfile.TemporaryDirectory() as tmp:
        if args.processes:
            out = os.path.join(tmp, "small.zarr")  # 32 images x 16 pairs: two epochs per setting stay short
            generate(
                GenerateConfig(
                    output=out, sampling=SamplingConfig(pairs_per_image=16), source=SourceConfig(val_fraction=0.1)
                ),
                progress=False,
            )
            print(
                f"device: {describe(torch.device('cpu'))}; HomographyNet(width={args.width}), "
                f"{open_split_counts(out)}; one epoch after a warm-up epoch"
            )
            processes(args, out, tmp)
            print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
            return
        out = os.path.join(tmp, "ds.zarr")
        generate(
            GenerateConfig(
                output=out, sampling=SamplingConfig(pairs_per_image=64), source=SourceConfig(val_fraction=0.1)
            ),
            progress=False,
        )
        pairs, offsets = (torch.from_numpy(a) for a in load_split(out, None))
        print(
            f"data: {len(pairs)} real pairs 2x128x128 uint8; model: HomographyNet(width={args.width}), "
            f"{sum(p.numel() for p in HomographyNet(args.width).parameters()):,} parameters"
        )

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
            workers = args.num_workers if args.num_workers is not None else (12 if cuda else 0)
            print(f"device: {describe(device)}")
            configs = [("float32", False, False)] + ([("AMP bf16 + channels_last", True, True)] if cuda else [])
            for label, amp, cl in configs:
                on_device = pairs.to(device), offsets.to(device)
                rate = step_rate(
                    None,
                    device,
                    run,
                    amp,
                    cl,
                    batches(*on_device, run.batch_size, run.warmup, 1),
                    batches(*on_device, run.batch_size, run.steps),
                )
                loader = make_loader(
                    out, "train", batch_size=run.batch_size, shuffle=True, num_workers=workers, pin_memory=cuda
                )
                looped = step_rate(None, device, run, amp, cl, limited(loader, run.warmup), limited(loader, run.steps))
                print(
                    f"  {label:<26} batch {run.batch_size:>4}  {run.steps} steps{'  compiled' if run.compile else ''}: "
                    f"tensors in memory {rate:>9,.0f} samples/s; loader in the loop ({workers} workers) "
                    f"{looped:>9,.0f} samples/s ({looped / rate:.2f}x)"
                )

            if cuda:
                tuned, heuristic = cudnn_new_shapes(device, args.width)
                print(
                    f"  first step at a new batch size (AMP): cuDNN autotuner on {tuned:,.0f} ms, off {heuristic:,.0f} ms "
                    f"(training tunes the full batch only)"
                )

        producer, consumer = feed(out, args.batch_size or 256)
        print(
            f"feed: chunk stream {producer:,.0f} pairs per CPU-second (one thread, no reader threads); "
            f"receiving from a worker costs the main process {consumer * 1e6:.1f} us per pair"
        )
        cores = 16
        bound = min((cores - 2) * producer, 1 / consumer)
        print(
            f"  on {cores} cores (14 workers): at most {bound:,.0f} pairs/s "
            f"({'>=' if bound >= 20_000 else '<'} 20,000), if workers scale linearly"
        )
        print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
