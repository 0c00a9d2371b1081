"""Training on several processes: torch's elastic launcher, the process group, and who does what.

:func:`launch` starts ``nproc_per_node`` processes on this machine through
:func:`torch.distributed.launcher.api.elastic_launch`, the engine behind ``torchrun``
(``--standalone``: a c10d rendezvous on a free local port, no restarts). Each process runs a
function of this package under :func:`process_group` (NCCL on CUDA, gloo on CPU, one GPU per local
rank), and rank 0's return value comes back to the caller.

Several machines are torchrun's own business, not re-implemented here: run the same ``homogen train``
command under ``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT
--no-python homogen train STORE ...`` on every machine; the command finds torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the group instead of launching one
(:func:`launched_by_torchrun`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "LaunchError",
    "backend_for",
    "check_devices",
    "cpu_group",
    "is_main",
    "launch",
    "launched_by_torchrun",
    "process_group",
    "rank",
    "world_size",
]


class LaunchError(RuntimeError):
    """A launched process failed; the message is its first failure's (rank, error)."""


def rank() -> int:
    """This process's global rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the group (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0, the process that validates, logs, checkpoints and scores (True outside a group)."""
    return rank() == 0


_CPU_GROUPS: dict[int, Any] = {}


def cpu_group() -> Any:
    """A gloo group of all ranks for small CPU exchanges (the default group itself when it is gloo).

    Every rank must call it the first time at the same point (it creates a group under NCCL).
    """
    if dist.get_backend() == "gloo":
        return None  # the default group
    key = id(dist.group.WORLD)
    if key not in _CPU_GROUPS:
        _CPU_GROUPS[key] = dist.new_group(backend="gloo")
    return _CPU_GROUPS[key]


def launched_by_torchrun() -> bool:
    """This process was started by torchrun / elastic_launch (its environment names a rank and a world)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def backend_for(device: str) -> str:
    """``nccl`` when the processes train on CUDA, else ``gloo``."""
    if device == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device(device: str) -> str:
    """The device of this process: ``cuda`` and ``auto`` become ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if device in ("auto", "cuda") and (device == "cuda" or torch.cuda.is_available()):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def check_devices(device: str, nproc_per_node: int) -> None:
    """Refuse a device this machine lacks, or that ``nproc_per_node`` processes cannot share out (one GPU
    each, or the CPU).

    Raises:
        ValueError: one line naming the device, the count and the fix.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda") from None
    if nproc_per_node == 1:  # a device this machine lacks: one line now, not an assertion mid-training
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}, but the installed torch has no CUDA or sees no GPU (torch {torch.__version__}): "
                f"use device 'auto' or 'cpu', or install a CUDA build of torch"
            )
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}, but this machine has {torch.cuda.device_count()} GPU(s): use 'cuda' or "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}, but this machine has no Apple GPU (MPS): use device 'auto' or 'cpu'")
        return
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise ValueError(f"device {device!r}: several training processes run on cuda (one GPU each) or cpu only")
    if dev.index is not None:
        raise ValueError(
            f"device {device!r} names one GPU, but nproc_per_node={nproc_per_node} trains on one GPU per process: "
            f"give device 'cuda' (the processes take cuda:0 to cuda:{nproc_per_node - 1}; CUDA_VISIBLE_DEVICES "
            f"chooses which)"
        )
    have = torch.cuda.device_count()
    if nproc_per_node > have:
        raise ValueError(
            f"nproc_per_node={nproc_per_node} needs {nproc_per_node} GPUs (one per process), this machine has "
            f"{have}: use nproc_per_node={max(have, 1)}" + ("" if have else ", or device 'cpu'")
        )


@contextlib.contextmanager
def process_group(device: str, timeout_minutes: float = 30.0) -> Iterator[str]:
    """Join the process group torchrun's environment describes; yields this process's device name.

    Outside torchrun (or with a world of one) it does nothing and yields ``device`` unchanged. The
    group is destroyed on exit, also on error. ``timeout_minutes`` bounds a collective waiting for
    a rank (rank 0 validates alone after each epoch). On CPU, unless ``OMP_NUM_THREADS`` says
    otherwise, the machine's cores are shared out between the local processes (torch's default
    gives every process all of them: N processes would oversubscribe the cores N times).
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1 or dist.is_initialized():
        yield device
        return
    mine = local_device(device)
    backend = backend_for(device)
    kw: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(torch.device(mine))
        kw["device_id"] = torch.device(mine)
    if backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes), **kw)
    try:
        yield mine
    finally:
        _CPU_GROUPS.clear()
        dist.destroy_process_group()


def launch(nproc_per_node: int, entrypoint: Callable[..., Any], *args: Any) -> Any:
    """Run ``entrypoint(*args)`` in ``nproc_per_node`` new processes (torchrun --standalone); rank 0's return value.

    ``entrypoint`` must be importable by name (a module-level function): the processes are spawned.

    Raises:
        LaunchError: a process failed; the message names the rank and its error (first line of it).
        KeyboardInterrupt: Ctrl-C (SIGINT): the processes are stopped; the checkpoints they wrote are kept.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=int(nproc_per_node),
        run_id=f"homogen-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # as torchrun --standalone: a free port of this machine
        max_restarts=0,  # a failed rank ends the run: resume=True continues from the last checkpoint
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        results = elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as exc:
        failed, failure = exc.get_first_failure()
        if (
            failure.exitcode == 128 + signal.SIGINT
        ):  # a rank stopped by Ctrl-C (train._rank_main) before the launcher saw it
            raise KeyboardInterrupt from None
        raise LaunchError(f"training process of rank {failed} failed: {_first_line(failure.message)}") from None
    except SignalException as exc:  # the launcher turns Ctrl-C into this once it has stopped the processes
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise
    return results[0]


def _first_line(message: Any) -> str:
    """The error of a failed process as one line (elastic's error file holds ``{"message": ...}``)."""
    if isinstance(message, dict):
        message = message.get("message", message)
    text = str(message).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else text
