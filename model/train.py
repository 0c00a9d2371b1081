"""Training HomographyNet on a homogen store, in the style of the torchvision reference scripts.

``train(store, TrainConfig(...))`` checks the store against the model, then alternates
:func:`train_one_epoch` on the train split and :func:`evaluate` (MACE) on the test split, with a
step learning-rate decay, early stopping on validation MACE, and an atomic checkpoint after every
epoch (``last.pt``, plus ``best.pt`` when validation MACE improves). ``resume=True`` continues from
``last.pt``: on CPU a resumed run ends with the same weights as an uninterrupted one.
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
from homogen.sources import redact
from homogen.model.config import TrainConfig
from homogen.model.data import as_dataset, check_compatible, make_loader
from homogen.model.metrics import pair_errors, summarize
from homogen.model.network import HomographyNet

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "load_model",
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


def make_criterion(name: str) -> nn.Module:
    return nn.SmoothL1Loss() if name == "smooth_l1" else nn.MSELoss()


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
        loss = criterion(pred.float(), offsets)
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


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true offsets over ``loader``: two :math:`(N, 8)` float arrays."""
    model.eval()
    preds, trues = [], []
    for pairs, offsets in loader:
        x, _ = _to_device(pairs, offsets, device, channels_last)
        with _autocast(device, amp, amp_dtype):
            preds.append(model(x).float().cpu().numpy())
        trues.append(offsets.numpy())
    if not preds:
        return np.empty((0, 8), np.float32), np.empty((0, 8), np.float32)
    return np.concatenate(preds), np.concatenate(trues)


def evaluate(model: nn.Module, loader: Iterable, device: torch.device, **kw) -> dict[str, float | int]:
    """MACE of ``model`` over ``loader``: ``{"mean", "median", "p95", "failures", "n"}`` (pixels).

    MACE per CONVENTIONS.md: mean over the 4 corners of the Euclidean corner error, then over pairs.
    """
    pred, true = predict(model, loader, device, **kw)
    return summarize(pair_errors(pred, true) if len(true) else np.empty(0))


# ------------------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict[str, Any]:
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
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


def load_model(path: str | os.PathLike) -> HomographyNet:
    """The network stored in a checkpoint, in eval mode, on CPU."""
    payload = load_checkpoint(path)
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


def train(
    dataset: Any,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train HomographyNet on the train split of a store, validating MACE on its test split.

    Args:
        dataset: store path/URL or a dataset from :func:`homogen.stores.open_dataset`.
        cfg: the run's :class:`TrainConfig` (defaults if None).
        progress: show a tqdm bar per epoch (loss, samples/s).
        on_epoch: called after every epoch (after its checkpoint is written) with the epoch's
            record ``{epoch, train_loss, val_mace, val_median, val_p95, lr, samples_per_s,
            samples, samples_seen}``.

    Raises:
        IncompatibleStoreError: the store's schema version or patch size does not fit the model
            (before anything is trained).
        CheckpointError: ``resume`` found a checkpoint that is corrupt or belongs to another run.
    """
    cfg = cfg or TrainConfig()
    ds = as_dataset(dataset)
    check_compatible(ds, cfg.patch_size)
    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else workdir() / "checkpoints" / ds.version
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
    if cfg.resume and last_path.exists():
        payload = load_checkpoint(last_path)
        _check_resumable(payload, last_path, cfg, ds.version)
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
    val_loader = make_loader(ds, "test", batch_size=cfg.val_batch_size, shuffle=False, **loader_kw)
    n_train = train_loader.dataset.num_samples()
    if n_train == 0:
        raise ValueError(f"store {redact(ds.uri)} has no training pairs")
    has_val = val_loader.dataset.num_samples() > 0
    if not has_val:
        log.warning("store %s has no test pairs: no validation, no early stopping; best = last", redact(ds.uri))
    amp_kw = dict(amp=amp, amp_dtype=cfg.amp_dtype, channels_last=channels_last)

    def done() -> bool:
        out_of_budget = cfg.max_samples is not None and state.samples_seen >= cfg.max_samples
        patience_spent = cfg.patience is not None and has_val and state.bad_epochs >= cfg.patience
        return state.epoch >= cfg.epochs or out_of_budget or patience_spent

    while not done():
        epoch = state.epoch
        train_loader.dataset.set_epoch(epoch)
        budget = None if cfg.max_samples is None else cfg.max_samples - state.samples_seen
        total = n_train if budget is None else min(n_train, budget)
        with tqdm(total=total, unit="sample", desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False) as bar:
            stats = train_one_epoch(step_model, criterion, optimizer, train_loader, device, scaler, budget=budget, bar=bar, **amp_kw)
        val = evaluate(step_model, val_loader, device, **amp_kw) if has_val else summarize(np.empty(0))
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        state.epoch += 1
        state.samples_seen += stats["samples"]
        improved = has_val and val["mean"] < state.best_val_mace
        if improved:
            state.best_val_mace, state.best_epoch, state.bad_epochs = val["mean"], state.epoch, 0
        elif has_val:
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
        if improved or not has_val:
            save_checkpoint(best_path, payload)
        if progress:
            tqdm.write(
                f"epoch {state.epoch}: loss {record['train_loss']:.4f}  val MACE {record['val_mace']:.3f} px  "
                f"{record['samples_per_s']:.0f} samples/s"
            )
        if on_epoch is not None:
            on_epoch(record)

    final = load_model(best_path) if best_path.exists() else model.cpu().eval()
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
        stopped_early=state.epoch < cfg.epochs and cfg.patience is not None and has_val and state.bad_epochs >= cfg.patience,
    )
