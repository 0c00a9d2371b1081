"""Training parameters, :class:`TrainConfig`: pydantic only, no torch.

The flows' pipeline config (:mod:`homogen.flows.config`) embeds it, and Dask workers import that config
when they unpickle a task's parameters, so this module must stay torch-free (a torch import costs
every worker about half a second and 140 MB). :mod:`homogen.model.train` re-exports it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEVICE", "TrainConfig"]

DEVICE = re.compile(r"auto|cpu|mps|cuda(?::(\d+))?")
"""The devices the trainer takes: the one device rule (:func:`homogen.model.train.resolve_device` maps
``auto``; :func:`homogen.flows.config.check_before_work` checks that this machine has the device)."""


class TrainConfig(BaseModel):
    """Everything that decides a training run. Unknown keys are refused.

    Every float is finite (``allow_inf_nan=False``: ``lr=inf`` or ``Infinity`` in a JSON config is
    refused, naming the field) and bounded: no value outside the bounds trains a useful network.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(10, ge=1, description="epochs to train (a resumed run continues up to this many)")
    max_samples: int | None = Field(
        None,
        ge=1,
        description="stop after this many training samples in all (all processes); the checkpoint keeps the "
        "position, so resume with a larger value continues the epoch where it stopped",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="pairs per step and per process: the global batch is nproc_per_node x batch_size "
        "(lr is not rescaled: see README, training on several processes)",
    )
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate (0 < lr <= 1)")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="Adam weight decay (0 <= weight_decay <= 1)")
    loss: Literal["smooth_l1", "mse", "photometric"] = Field(
        "smooth_l1",
        description="smooth_l1 or mse: supervised, on the pixel offsets; photometric: unsupervised L1 between "
        "A warped by the prediction and B (model.losses; the labels only score val/test MACE)",
    )
    step_size: int = Field(10, ge=1, description="epochs between learning-rate decays")
    gamma: float = Field(0.1, gt=0, le=1, description="learning-rate decay factor")
    patience: int | None = Field(5, ge=1, description="stop after this many epochs without a better val MACE")
    width: float = Field(1.0, gt=0, le=8.0, description="channel multiplier of HomographyNet (0 < width <= 8)")
    patch_size: int = Field(128, ge=8, le=1024, description="patch side the model takes; the store must match")
    num_workers: int = Field(0, ge=0, description="background loader processes")
    buffer_chunks: int = Field(4, ge=1, description="storage chunks mixed by the row shuffle")
    val_batch_size: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    amp: bool | None = Field(None, description="mixed precision; None: on for CUDA")
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    channels_last: bool | None = Field(None, description="NHWC memory format; None: on for CUDA")
    compile: bool = Field(False, description="torch.compile the model")
    checkpoint_dir: str | None = Field(None, description="default <workdir>/checkpoints/<dataset version>")
    resume: bool = Field(False, description="continue from checkpoint_dir/last.pt when it exists")
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="also write last.pt every this many steps inside an epoch, with the stream's position, "
        "so that a stopped run resumes mid-epoch (None: at the end of each epoch only)",
    )
    nproc_per_node: int = Field(
        1,
        ge=1,
        description="training processes on this machine (torch's elastic launcher, DistributedDataParallel; "
        "NCCL on CUDA with one GPU each, gloo on CPU); 1: this process",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if DEVICE.fullmatch(device) is None:
            raise ValueError(f"{device!r} is not a device the trainer uses: use auto, cpu, cuda, cuda:N or mps")
        return device
