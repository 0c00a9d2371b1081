"""Training HomographyNet on a homogen store, in the style of the torchvision reference scripts.

``train(store, TrainConfig(...))`` checks the store against the model, then alternates
:func:`train_one_epoch` on the ``train`` split and :func:`evaluate` (MACE) on the ``val`` split, with
a step learning-rate decay, early stopping on validation MACE, and an atomic checkpoint after every
epoch (``last.pt``, plus ``best.pt`` when validation MACE improves). ``resume=True`` continues from
``last.pt``: on CPU a resumed run ends with the same weights as an uninterrupted one.

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
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from homogen.config import workdir
from homogen.model.config import TrainConfig
from homogen.model.data import as_dataset, check_compatible, make_loader
from homogen.model.dataset_pin import check_unchanged
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
) -> dict[str, float]:
    """One pass over ``loader`` (or until ``budget`` samples).

    Returns ``{"train_loss": mean loss per sample, "samples": n, "seconds": s, "samples_per_s": n/s}``.
    """
    model.train()
    total = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    for step, (pairs, offsets) in enumerate(loader):
        if budget is not None:
            if seen >= budget:
                break
            pairs, offsets = pairs[: budget - seen], offsets[: budget - seen]
        pairs, offsets = _to_device(pairs, offsets, device, channels_last)
        with _autocast(device, amp, amp_dtype):
            pred = model(pairs)
        loss = criterion(pred.float(), offsets, pairs)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = len(pairs)
        total += loss.detach() * n
        seen += n
        if bar is not None:
            bar.update(n)
            if step % 10 == 0:
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{rate:.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "train_loss": float(total.item() / seen) if seen else math.nan,
        "samples": seen,
        "seconds": seconds,
        "samples_per_s": seen / seconds if seconds > 0 else math.nan,
    }


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
        IncompatibleStoreError, NoValidationSplitError, ValueError (no train pairs), CheckpointError.
    """
    check_compatible(ds, cfg.patch_size)
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
) -> TrainResult:
    """Train HomographyNet on the ``train`` split of a store, selecting it on MACE over its ``val`` split.

    Args:
        dataset: store path/URL or a dataset from :func:`homogen.stores.open_dataset`.
        cfg: the run's :class:`TrainConfig` (defaults if None).
        progress: show a tqdm bar per epoch (loss, samples/s).
        on_epoch: called after every epoch (after its checkpoint is written) with the epoch's
            record ``{epoch, train_loss, val_mace, val_median, val_p95, lr, samples_per_s,
            samples, samples_seen}`` (e.g. :meth:`homogen.model.mlflow_run.TrainingRun.log_epoch`,
            which logs it while training goes on).

    Raises:
        NoValidationSplitError: the store has no ``val`` pairs (before anything is trained).
        IncompatibleStoreError: the store's schema version or patch size does not fit the model
            (before anything is trained).
        CheckpointError: ``resume`` found a checkpoint that is corrupt or belongs to another run.
        DatasetChanged: the store was regenerated during training (checked before and after every
            epoch; the epoch that saw the change is not checkpointed).
    """
    cfg = cfg or TrainConfig()
    ds = as_dataset(dataset)
    resume_from = preflight(ds, cfg)
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
        best_path.unlink(missing_ok=True)  # a fresh run never reports another run's best

    step_model = torch.compile(model) if cfg.compile else model
    loader_kw = dict(
        num_workers=cfg.num_workers, buffer_chunks=cfg.buffer_chunks, seed=cfg.seed, pin_memory=device.type == "cuda"
    )
    train_loader = make_loader(ds, "train", batch_size=cfg.batch_size, shuffle=True, **loader_kw)
    val_loader = make_loader(ds, "val", batch_size=cfg.val_batch_size, shuffle=False, **loader_kw)
    n_train = train_loader.dataset.num_samples()
    amp_kw = dict(amp=amp, amp_dtype=cfg.amp_dtype, channels_last=channels_last)

    def done() -> bool:
        out_of_budget = cfg.max_samples is not None and state.samples_seen >= cfg.max_samples
        patience_spent = cfg.patience is not None and state.bad_epochs >= cfg.patience
        return state.epoch >= cfg.epochs or out_of_budget or patience_spent

    while not done():
        epoch = state.epoch
        check_unchanged(ds, ds.version, f"epoch {epoch + 1}")  # the store still holds the version trained on
        train_loader.dataset.set_epoch(epoch)
        budget = None if cfg.max_samples is None else cfg.max_samples - state.samples_seen
        total = n_train if budget is None else min(n_train, budget)
        with tqdm(
            total=total, unit="sample", desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False
        ) as bar:
            stats = train_one_epoch(
                step_model, criterion, optimizer, train_loader, device, scaler, budget=budget, bar=bar, **amp_kw
            )
        val = evaluate(step_model, val_loader, device, **amp_kw)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        check_unchanged(ds, ds.version, f"saving epoch {epoch + 1}'s checkpoint")  # its pairs were all one version
        state.epoch += 1
        state.samples_seen += stats["samples"]
        improved = val["mean"] < state.best_val_mace
        if improved:
            state.best_val_mace, state.best_epoch, state.bad_epochs = val["mean"], state.epoch, 0
        else:
            state.bad_epochs += 1
        record = {
            "epoch": state.epoch,
            "train_loss": stats["train_loss"],
            "val_mace": val["mean"],
            "val_median": val["median"],
            "val_p95": val["p95"],
            "lr": lr,
            "samples_per_s": stats["samples_per_s"],
            "samples": stats["samples"],
            "samples_seen": state.samples_seen,
        }
        state.history.append(record)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "epoch": state.epoch,
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
            "state": state.as_dict(),
        }
        save_checkpoint(last_path, payload)
        if improved:
            save_checkpoint(best_path, payload)
        if progress:
            tqdm.write(
                f"epoch {state.epoch}: loss {record['train_loss']:.4f}  val MACE {record['val_mace']:.3f} px  "
                f"{record['samples_per_s']:.0f} samples/s"
            )
        if on_epoch is not None:
            on_epoch(record)

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
