"""Training HomographyNet on a homogen store, in the style of the torchvision reference scripts.

``train(store, TrainConfig(...))`` checks the store against the model, then alternates
:func:`train_one_epoch` on the ``train`` split and :func:`evaluate` (MACE) on the ``val`` split, with
a step learning-rate decay, early stopping on validation MACE, and an atomic checkpoint after every
epoch (``last.pt``, plus ``best.pt`` when validation MACE improves). ``resume=True`` continues from
``last.pt``: on CPU a resumed run ends with the same weights as an uninterrupted one. A checkpoint
written inside an epoch (the sample budget, ``checkpoint_every``) carries the loader's position, and
the resumed run trains on exactly the pairs of that epoch not yet trained on.

``TrainConfig.nproc_per_node > 1`` trains on that many processes (:mod:`homogen.model.distributed`,
DistributedDataParallel): each rank trains its share of every epoch, the ranks step together,
rank 0 alone validates and writes the checkpoints (see README, training on several processes).

The ``test`` split is never read here: model selection sees ``train`` and ``val`` only, and the
test pairs are scored once, after training (:func:`homogen.model.evaluate.score_test`).

The loss comes from :data:`CRITERIA` by name (``TrainConfig.loss``); another module adds one with
:func:`register_criterion`. A criterion is called as ``criterion(pred, offsets, pairs)``: predicted
and true offsets :math:`(B, 8)` float32, and the uint8 input pairs :math:`(B, 2, P, P)` (for losses
that compare pixels rather than labels).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import random
import signal
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from tqdm.auto import tqdm

from homogen.config import workdir
from homogen.model.config import TrainConfig
from homogen.model.data import as_dataset, check_compatible, make_loader
from homogen.model.dataset_pin import check_unchanged
from homogen.model.distributed import check_devices, cpu_group, is_main, launch, process_group, rank, world_size
from homogen.model.evaluate import predict_network
from homogen.model.metrics import pair_errors, summarize
from homogen.model.losses import photometric_criterion
from homogen.model.network import HomographyNet
from homogen.redaction import redact

__all__ = [
    "CRITERIA",
    "CheckpointError",
    "NoValidationSplitError",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "make_criterion",
    "network_from_checkpoint",
    "preflight",
    "register_criterion",
    "resolve_device",
    "save_checkpoint",
    "train",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
LAST, BEST = "last.pt", "best.pt"


@dataclass
class TrainResult:
    """The outcome of :func:`train`. ``model`` holds the best-validation weights, in eval mode, on CPU."""

    model: HomographyNet
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict[str, Any]]
    device: str
    samples_seen: int
    dataset_version: str
    best_val_mace: float = math.inf
    best_epoch: int | None = None
    stopped_early: bool = False


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit this run; the message names the file."""


class NoValidationSplitError(ValueError):
    """The store has no ``val`` pairs to select the model on; the message says how to regenerate it."""


@dataclass
class _State:
    """Progress that a checkpoint carries besides the tensors."""

    epoch: int = 0  # completed epochs
    samples_seen: int = 0
    best_val_mace: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------- setup


def resolve_device(name: str = "auto") -> torch.device:
    """``'auto'``: CUDA when available, else CPU; anything else as ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig) -> HomographyNet:
    return HomographyNet(width=cfg.width, patch_size=cfg.patch_size)


Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``criterion(pred (B,8) f32, offsets (B,8) f32, pairs (B,2,P,P) uint8) -> scalar loss``."""


def _label_loss(loss: nn.Module) -> Criterion:
    """A loss of predicted vs true offsets only (the pairs are not needed)."""

    def criterion(pred: torch.Tensor, offsets: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return loss(pred, offsets)

    return criterion


CRITERIA: dict[str, Callable[[], Criterion]] = {
    "smooth_l1": lambda: _label_loss(nn.SmoothL1Loss()),
    "mse": lambda: _label_loss(nn.MSELoss()),
    "photometric": lambda: photometric_criterion,  # unsupervised: reads the pairs, never the offsets
}
"""Loss factories by ``TrainConfig.loss`` name; :func:`register_criterion` adds one."""


def register_criterion(name: str, factory: Callable[[], Criterion]) -> None:
    """Make ``TrainConfig(loss=name)`` train with ``factory()`` (see :data:`Criterion`)."""
    CRITERIA[name] = factory


def make_criterion(name: str) -> Criterion:
    """The criterion called ``name`` (a key of :data:`CRITERIA`)."""
    if name not in CRITERIA:
        raise ValueError(f"unknown loss {name!r}: choose from {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]()


def _to_device(pairs: torch.Tensor, offsets: torch.Tensor, device: torch.device, channels_last: bool):
    """uint8 pairs and float offsets onto ``device``; the cast to float happens in the model."""
    pairs = pairs.to(device, non_blocking=True)
    if channels_last:
        pairs = pairs.contiguous(memory_format=torch.channels_last)
    return pairs, offsets.to(device, non_blocking=True)


def _autocast(device: torch.device, enabled: bool, dtype: str):
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


# ------------------------------------------------------------------------------------- the loops


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    scaler: torch.amp.GradScaler,
    *,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    channels_last: bool = False,
    budget: int | None = None,
    bar: tqdm | None = None,
    after_step: Callable[[int, torch.Tensor | None], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` (or until ``budget`` samples, counted over all processes).

    Under ``torch.distributed`` (``model`` a :class:`~torch.nn.parallel.DistributedDataParallel`)
    the ranks step together: before each step they exchange their batch sizes (one all-gather of
    one integer), each rank's loss is weighted by its share of the step's global batch so that
    DDP's gradient average is the gradient of the mean loss over the global batch, and a rank whose
    share of the epoch is spent takes part in the remaining steps with a zero gradient (a forward
    in eval mode: no BatchNorm statistics move) until every rank is spent. Every rank thus takes
    the same steps with the same averaged gradients, and every pair is trained on once.

    ``loader`` yields ``(pairs, offsets)`` or ``(pairs, offsets, rows)``; ``after_step(step, rows)``
    is called after each optimizer step with the rows this rank trained on (``None`` when the
    loader gives none; empty when the rank is spent).

    Returns ``{"train_loss": mean loss per sample (all ranks), "samples": n (all ranks),
    "seconds": s, "samples_per_s": n/s, "exhausted": whether every rank's loader ran out}``.
    """
    model.train()
    world, me = world_size(), rank()
    group = cpu_group() if world > 1 else None
    # cuDNN's autotuner (cudnn.benchmark) times every algorithm for each new input shape. Each loader
    # worker ends its share of an epoch with a smaller batch of another size, so an epoch brings up
    # to num_workers new shapes (and the chunk plan changes them every epoch): tune the full batch
    # only, and let cuDNN's heuristics pick for the rest.
    tune = device.type == "cuda" and torch.backends.cudnn.benchmark
    largest = 0
    total = torch.zeros((), device=device)
    seen = 0  # over all ranks
    start = time.perf_counter()
    it = iter(loader)
    exhausted = False
    step = 0
    while True:
        batch = next(it, None)
        pairs, offsets, rows = (
            (None, None, None) if batch is None else (*batch[:2], batch[2] if len(batch) > 2 else None)
        )
        counts = _batch_sizes(0 if pairs is None else len(pairs), group)
        if budget is not None:
            counts = _within(counts, budget - seen)
        if sum(counts) == 0:  # every rank's loader ran out
            exhausted = True
            break
        n = counts[me]
        largest = max(largest, n)
        if tune:
            torch.backends.cudnn.benchmark = n == largest
        if pairs is not None and n < len(pairs):
            pairs, offsets = pairs[:n], offsets[:n]
            rows = rows[:n] if rows is not None else None
        optimizer.zero_grad(set_to_none=True)
        if n:
            pairs, offsets = _to_device(pairs, offsets, device, channels_last)
            with _autocast(device, amp, amp_dtype):
                pred = model(pairs)
            loss = criterion(pred.float(), offsets, pairs)
            # DDP averages gradients over ranks: weight each rank by its share of the global batch
            weighted = loss if world == 1 else loss * (n * world / sum(counts))
            total += loss.detach() * n
        else:  # this rank is spent while others still step: a zero gradient, no BatchNorm update
            weighted = _zero_loss(model, device, channels_last)
            rows = rows[:0] if rows is not None else torch.zeros(0, dtype=torch.int64)
        scaler.scale(weighted).backward()
        scaler.step(optimizer)
        scaler.update()
        seen += sum(counts)
        step += 1
        if after_step is not None:
            after_step(step, rows)
        if bar is not None:
            bar.update(sum(counts))
            if step % 10 == 0 and n:
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{rate:.0f}")
        if budget is not None and seen >= budget:
            break
    if tune:
        torch.backends.cudnn.benchmark = True
    if world > 1:
        dist.all_reduce(total)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "train_loss": float(total.item() / seen) if seen else math.nan,
        "samples": seen,
        "seconds": seconds,
        "samples_per_s": seen / seconds if seconds > 0 else math.nan,
        "exhausted": exhausted,
    }


def _batch_sizes(n: int, group: Any) -> list[int]:
    """Every rank's batch size this step (``[n]`` outside a process group).

    Exchanged on the CPU (``group``: gloo), so that reading it never waits for the GPU's queue.
    """
    if world_size() == 1:
        return [n]
    out = torch.zeros(world_size(), dtype=torch.int64)
    out[rank()] = n
    dist.all_reduce(out, group=group)  # an all-gather of one integer per rank, in the oldest collective there is
    return out.tolist()


def _within(counts: list[int], left: int) -> list[int]:
    """The batch sizes cut so that their sum stays within ``left`` samples (lower ranks first)."""
    out = []
    for c in counts:
        out.append(max(0, min(c, left)))
        left -= out[-1]
    return out


def _zero_loss(model: nn.Module, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A loss whose gradient is zero for every parameter, through a forward in eval mode.

    A spent rank still joins the step's gradient all-reduce (DDP reduces in backward hooks), and
    its optimizer steps with the others' averaged gradient, so all ranks keep the same weights and
    optimizer state. Eval mode: BatchNorm keeps its running statistics, dropout is off.
    """
    size = getattr(model, "module", model).patch_size
    dummy = torch.zeros(1, 2, size, size, dtype=torch.uint8, device=device)
    if channels_last:
        dummy = dummy.contiguous(memory_format=torch.channels_last)
    model.eval()
    try:
        return model(dummy).float().sum() * 0.0
    finally:
        model.train()


def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | None = None,
    *,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    channels_last: bool = False,
) -> dict[str, float | int]:
    """MACE of ``model`` over the ``(pairs, offsets)`` batches of ``loader``: ``{"mean", "median", "p95", "failures", "n"}`` (pixels).

    MACE per CONVENTIONS.md: mean over the 4 corners of the Euclidean corner error, then over pairs.
    The model runs on its own device (``device`` is accepted for symmetry with :func:`train_one_epoch`).
    """
    trues: list[np.ndarray] = []

    def batches():
        for pairs, offsets in loader:
            trues.append(offsets.numpy())
            yield pairs

    pred, _ = predict_network(model, batches(), amp=amp, amp_dtype=amp_dtype, channels_last=channels_last)
    if not trues:
        return summarize(np.empty(0))
    return summarize(pair_errors(pred, np.concatenate(trues)))


# ------------------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict[str, Any]:
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``: atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt, or not a homogen checkpoint.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... by damage
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            # not torch's advice (load with weights_only=False): that would run the file's code
            raise CheckpointError(
                f"checkpoint {path} holds objects beyond tensors and plain containers, which would run code "
                f"when loaded: refused; use a checkpoint written by homogen's trainer"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
            f"delete it to start afresh, or point checkpoint_dir elsewhere"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "model" not in payload:
        raise CheckpointError(f"{path} is not a homogen checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def network_from_checkpoint(payload: dict[str, Any]) -> HomographyNet:
    """The network of a checkpoint read by :func:`load_checkpoint`, in eval mode, on CPU.

    (:func:`homogen.model.loading.load_model` takes a path, or any other place a model is kept.)
    """
    model = HomographyNet(width=payload["width"], patch_size=payload["patch_size"])
    model.load_state_dict(payload["model"])
    return model.eval()


def _check_resumable(payload: dict[str, Any], path: Path, cfg: TrainConfig, version: str) -> None:
    if payload["dataset_version"] != version:
        raise CheckpointError(
            f"checkpoint {path} was trained on dataset version {payload['dataset_version']}, this store is "
            f"version {version}: use another checkpoint_dir, or resume=False to start afresh"
        )
    for key in ("width", "patch_size"):
        if payload[key] != getattr(cfg, key):
            raise CheckpointError(
                f"checkpoint {path} has {key}={payload[key]}, the config asks for {key}={getattr(cfg, key)}: "
                f"set {key}={payload[key]}, or use another checkpoint_dir"
            )


# ------------------------------------------------------------------------------------------ train


def checkpoint_dir(ds: Any, cfg: TrainConfig) -> Path:
    """Where a run on ``ds`` keeps ``last.pt`` and ``best.pt``: ``cfg.checkpoint_dir``, else work/checkpoints/<version>."""
    return Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else workdir() / "checkpoints" / ds.version


def preflight(ds: Any, cfg: TrainConfig) -> dict[str, Any] | None:
    """Every refusal of :func:`train` that needs no training: run it before opening anything (an MLflow run).

    Checks the store against the model (schema, patch size), that it has train and val pairs, and,
    with ``cfg.resume``, that ``last.pt`` (when there is one) is readable and belongs to this run.

    Returns:
        the checkpoint to resume from, or None to start afresh.

    Raises:
        IncompatibleStoreError, NoValidationSplitError, ValueError (no train pairs; a device that
        ``nproc_per_node`` processes cannot share), CheckpointError.
    """
    check_compatible(ds, cfg.patch_size)
    if world_size() == 1:  # about to launch: one GPU per process, or the CPU
        check_devices(cfg.device, cfg.nproc_per_node)
    counts = ds.split_counts()
    split_pairs = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("train", "val", "test"))
    if counts.get("train", 0) == 0:
        raise ValueError(f"store {redact(ds.uri)} has no train pairs ({split_pairs}): generate it from more images")
    if counts.get("val", 0) == 0:
        raise NoValidationSplitError(
            f"store {redact(ds.uri)} has no val pairs ({split_pairs}), so the model cannot be selected without "
            f"looking at the test pairs: regenerate it from more images (--max-images) or with a larger "
            f"--val-fraction, so that some images fall in val"
        )
    last_path = checkpoint_dir(ds, cfg) / LAST
    if not (cfg.resume and last_path.exists()):
        return None
    payload = load_checkpoint(last_path)
    _check_resumable(payload, last_path, cfg, ds.version)
    return payload


def train(
    dataset: Any,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, nn.Module, torch.Tensor | None], None] | None = None,
) -> TrainResult:
    """Train HomographyNet on the ``train`` split of a store, selecting it on MACE over its ``val`` split.

    With ``cfg.nproc_per_node > 1`` (and no process group yet) it launches that many processes
    (:mod:`homogen.model.distributed`) that each run this function under a process group, and
    returns rank 0's result; ``on_epoch`` is then called in this process as rank 0's epochs end
    (it cannot stop the training), ``on_step`` is not called. Under a process group (torchrun),
    every rank trains its share of each epoch through
    :class:`~torch.nn.parallel.DistributedDataParallel`; rank 0 alone validates, writes the
    checkpoints and calls ``on_epoch``.

    Args:
        dataset: store path/URL or a dataset from :func:`homogen.stores.open_dataset`.
        cfg: the run's :class:`TrainConfig` (defaults if None).
        progress: show a tqdm bar per epoch (loss, samples/s).
        on_epoch: called after every epoch (after its checkpoint is written) with the epoch's
            record ``{epoch, train_loss, val_mace, val_median, val_p95, lr, samples_per_s,
            samples, samples_seen}`` (e.g. :meth:`homogen.model.mlflow_run.TrainingRun.log_epoch`,
            which logs it while training goes on); ``partial: True`` when the sample budget
            ended the epoch before its last pair.
        on_step: called on every rank after every optimizer step with ``(step in the epoch, the
            network (unwrapped), the store rows this rank trained on)``.

    Raises:
        NoValidationSplitError: the store has no ``val`` pairs (before anything is trained).
        IncompatibleStoreError: the store's schema version or patch size does not fit the model
            (before anything is trained).
        CheckpointError: ``resume`` found a checkpoint that is corrupt or belongs to another run.
        LaunchError: with ``nproc_per_node > 1``, a training process failed (rank and error).
        DatasetChanged: the store was regenerated during training (checked before and after every
            epoch, and before a mid-epoch checkpoint; the epoch that saw the change is not checkpointed).
    """
    cfg = cfg or TrainConfig()
    if cfg.nproc_per_node > 1 and world_size() == 1:
        return _launch(dataset, cfg, progress, on_epoch)
    ds = as_dataset(dataset)
    resume_from = preflight(ds, cfg)
    world, me, main = world_size(), rank(), is_main()
    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    ckpt_dir = checkpoint_dir(ds, cfg)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and cfg.amp_dtype == "float16")
    criterion = make_criterion(cfg.loss)
    state = _State()

    last_path, best_path = ckpt_dir / LAST, ckpt_dir / BEST
    if resume_from is not None:
        payload = resume_from
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        _set_rng_state(payload["rng"])
        state = _State(**payload["state"])
        log.info("resuming from %s after epoch %d (%d samples)", last_path, state.epoch, state.samples_seen)
    else:
        if cfg.resume:
            log.info("no checkpoint at %s: starting afresh", last_path)
        if main:
            best_path.unlink(missing_ok=True)  # a fresh run never reports another run's best
    if world > 1:
        # Dropout differs per rank; rank 0 keeps the single-process stream (and the checkpoint's).
        if me:
            torch.manual_seed(cfg.seed + 1_000_003 * me + state.samples_seen)
        # BatchNorm: per-rank batch statistics, running statistics broadcast from rank 0 before
        # each forward (DDP's default buffer sync): see README, training on several processes.
        net: nn.Module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        net = model
    step_model = torch.compile(net) if cfg.compile else net
    loader_kw = dict(
        num_workers=cfg.num_workers, buffer_chunks=cfg.buffer_chunks, seed=cfg.seed, pin_memory=device.type == "cuda"
    )
    train_loader = make_loader(ds, "train", batch_size=cfg.batch_size, shuffle=True, with_rows=True, **loader_kw)
    stream = train_loader.dataset
    if resume_from is not None and resume_from.get("stream") is not None:
        stream.load_state_dict(resume_from["stream"])  # continue the epoch where it stopped
    # validation runs once, on rank 0, over the whole val split
    val_loader = (
        make_loader(ds, "val", batch_size=cfg.val_batch_size, shuffle=False, rank=0, world_size=1, **loader_kw)
        if main
        else None
    )
    val_model = step_model if world == 1 else model  # DDP's forward is collective: rank 0 validates alone
    n_train = stream.num_samples()
    amp_kw = dict(amp=amp, amp_dtype=cfg.amp_dtype, channels_last=channels_last)

    def payload_for(st: _State, position: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": st.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
            "config": cfg.model_dump(mode="json"),
            "dataset_version": ds.version,
            "dataset_uri": redact(ds.uri),  # a checkpoint never holds the credentials of a store URL
            "patch_size": cfg.patch_size,
            "width": cfg.width,
            "world_size": world,
            "state": st.as_dict(),
            "stream": position,  # None at an epoch's end; else the pairs of this epoch already trained on
        }

    def done() -> bool:
        out_of_budget = cfg.max_samples is not None and state.samples_seen >= cfg.max_samples
        patience_spent = cfg.patience is not None and state.bad_epochs >= cfg.patience
        return state.epoch >= cfg.epochs or out_of_budget or patience_spent

    while not done():
        epoch = state.epoch
        check_unchanged(ds, ds.version, f"epoch {epoch + 1}")  # the store still holds the version trained on
        stream.set_epoch(epoch)
        read_before = int(stream.read_mask().sum())  # > 0 when resumed mid-epoch (same on every rank)

        def after_step(step: int, rows: torch.Tensor | None, read_before: int = read_before) -> None:
            if rows is not None:
                stream.mark_read(rows.numpy())
            if on_step is not None:
                on_step(step, model, rows)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                read = _read_by_all(stream, device)
                if main:
                    check_unchanged(ds, ds.version, f"saving epoch {epoch + 1}'s checkpoint at step {step}")
                    mid = _State(**{**state.as_dict(), "history": list(state.history)})
                    mid.samples_seen += int(read.sum()) - read_before
                    save_checkpoint(last_path, payload_for(mid, stream.position(read)))

        budget = None if cfg.max_samples is None else cfg.max_samples - state.samples_seen
        left = n_train - read_before
        total = left if budget is None else min(left, budget)
        with tqdm(
            total=total,
            unit="sample",
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (progress and main),
            leave=False,
        ) as bar:
            stats = train_one_epoch(
                step_model,
                criterion,
                optimizer,
                train_loader,
                device,
                scaler,
                budget=budget,
                bar=bar,
                after_step=after_step,
                **amp_kw,
            )
        read = _read_by_all(stream, device)
        complete = stats["exhausted"] or int(read.sum()) >= n_train
        with _no_cudnn_tuning():  # the val batches' sizes vary as well (see train_one_epoch)
            val = evaluate(val_model, val_loader, device, **amp_kw) if main else None
        if world > 1:
            shared = [val]
            dist.broadcast_object_list(shared, src=0)  # every rank takes the same early-stopping decision
            val = shared[0]
        lr = optimizer.param_groups[0]["lr"]
        check_unchanged(ds, ds.version, f"saving epoch {epoch + 1}'s checkpoint")  # its pairs were all one version
        if complete:
            scheduler.step()
            state.epoch += 1
        state.samples_seen += stats["samples"]
        improved = val["mean"] < state.best_val_mace
        if improved:
            state.best_val_mace, state.best_epoch = val["mean"], epoch + 1
        if complete:
            state.bad_epochs = 0 if improved else state.bad_epochs + 1
        record = {
            "epoch": epoch + 1,
            "train_loss": stats["train_loss"],
            "val_mace": val["mean"],
            "val_median": val["median"],
            "val_p95": val["p95"],
            "lr": lr,
            "samples_per_s": stats["samples_per_s"],
            "samples": stats["samples"],
            "samples_seen": state.samples_seen,
            **({} if complete else {"partial": True}),
        }
        state.history.append(record)
        if main:
            payload = payload_for(state, None if complete else stream.position(read))
            save_checkpoint(last_path, payload)
            if improved:
                save_checkpoint(best_path, payload)
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1}{'' if complete else ' (stopped mid-epoch)'}: loss {record['train_loss']:.4f}  "
                    f"val MACE {record['val_mace']:.3f} px  {record['samples_per_s']:.0f} samples/s"
                )
            if on_epoch is not None:
                on_epoch(record)
        if not complete:
            break  # only the sample budget ends an epoch early

    if world > 1:
        dist.barrier()  # rank 0's last checkpoints are written before any rank reads them
    final = network_from_checkpoint(load_checkpoint(best_path)) if best_path.exists() else model.cpu().eval()
    return TrainResult(
        model=final,
        best_checkpoint=best_path if best_path.exists() else None,
        last_checkpoint=last_path if last_path.exists() else None,
        history=list(state.history),
        device=str(device),
        samples_seen=state.samples_seen,
        dataset_version=ds.version,
        best_val_mace=state.best_val_mace,
        best_epoch=state.best_epoch,
        stopped_early=state.epoch < cfg.epochs and cfg.patience is not None and state.bad_epochs >= cfg.patience,
    )


@contextmanager
def _no_cudnn_tuning():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _read_by_all(stream: Any, device: torch.device) -> np.ndarray:
    """The rows of the epoch read by any rank: ``(N,)`` bool, the OR of every rank's read mask."""
    mask = stream.read_mask()
    if world_size() == 1:
        return mask
    t = torch.from_numpy(mask.astype(np.uint8)).to(device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().numpy().astype(bool)


# ------------------------------------------------------------------------------ several processes


def _launch(dataset: Any, cfg: TrainConfig, progress: bool, on_epoch: Callable | None) -> TrainResult:
    """Train on ``cfg.nproc_per_node`` new processes; rank 0's epochs reach ``on_epoch`` here, live."""
    import contextvars
    import threading

    import torch.multiprocessing as mp

    ds = as_dataset(dataset)
    preflight(ds, cfg)  # refuse bad input here, in one line, before any process starts
    records = mp.get_context("spawn").SimpleQueue()
    failures: list[BaseException] = []
    context = contextvars.copy_context()  # the caller's (e.g. a Prefect task run's), for on_epoch

    def relay() -> None:
        while (record := records.get()) is not None:
            try:
                if on_epoch is not None:
                    context.run(on_epoch, record)
            except Exception as exc:  # noqa: BLE001 - the training goes on in the other processes
                failures.append(exc)
                log.warning("on_epoch failed for epoch %s: %s", record.get("epoch"), exc)

    thread = threading.Thread(target=relay, name="homogen-epochs", daemon=True)
    thread.start()
    try:
        out = launch(cfg.nproc_per_node, _rank_main, ds.uri, cfg.model_dump_json(), progress, records)
    finally:
        records.put(None)
        thread.join()
    if failures:
        raise failures[0]
    best, last = (Path(p) if p else None for p in (out["best_checkpoint"], out["last_checkpoint"]))
    model = network_from_checkpoint(load_checkpoint(best or last))
    return TrainResult(model=model, **{**out, "best_checkpoint": best, "last_checkpoint": last})


@record
def _rank_main(uri: str, cfg_json: str, progress: bool, records: Any) -> dict[str, Any] | None:
    """One launched process: join the group, train; rank 0 sends its epochs and returns its result."""
    import multiprocessing

    # A spawned process inherits "spawn" as its default start method; the DataLoader's workers would
    # then re-import torch and homogen every epoch (seconds each): back to the platform's default.
    multiprocessing.set_start_method(None, force=True)
    # Ctrl-C in a terminal reaches every rank as well as the launcher, which stops the ranks and says
    # what is kept: a rank ends at once and quietly (a KeyboardInterrupt landing in a destructor is
    # printed as "Exception ignored ..."). A checkpoint cut off mid-write is a temporary file, never last.pt.
    signal.signal(signal.SIGINT, lambda *_: os._exit(128 + signal.SIGINT))
    cfg = TrainConfig.model_validate_json(cfg_json)
    with process_group(cfg.device) as device:
        main = is_main()
        result = train(
            uri,
            cfg.model_copy(update={"device": device}),
            progress=progress and main,
            on_epoch=records.put if main else None,
        )
    if not main:
        return None
    out = {k: v for k, v in result.__dict__.items() if k != "model"}
    return {**out, **{k: str(out[k]) if out[k] else None for k in ("best_checkpoint", "last_checkpoint")}}
