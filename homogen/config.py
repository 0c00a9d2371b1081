"""Typed configuration of a generation run, with the defaults of the recipe (CONVENTIONS.md).

Impossible parameters are refused here, before any work, with a message that names the parameter
and its limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from homogen.schema import SCHEMA

SAMPLE_ROOT = str(Path(__file__).parent / "data" / "coco-sample")
"""The bundled demo images: 32 COCO train2017 photographs in the COCO layout."""

PhotometricLevel = Literal["none", "easy", "hard", "tough"]

MAX_FRAME_PIXELS = 4096 * 4096
"""Largest image_width x image_height: the frame every source image is resized to (the recipe's is
320 x 240); beyond this, frames and their resizing cost more memory and time than any patch needs."""

MAX_SHARD_BYTES = 1 << 30
"""Largest in-memory size of one shard's arrays (shard_size x pairs_per_image pairs): a worker holds
one shard, and its compressed copy, at a time."""


def pair_bytes(patch_size: int) -> int:
    """Bytes of one pair in the store schema (both patches and every label)."""
    return sum(f.dtype.itemsize * math.prod(f.row_shape(patch_size)) for f in SCHEMA)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def workdir() -> Path:
    """The project's working folder (datasets, MLflow store, checkpoints): ``$HOMOGEN_WORKDIR`` or ``./work``."""
    return Path(os.environ.get("HOMOGEN_WORKDIR", "work"))


MIN_PATCH_SIZE = 8


def _rho_fix(p: int, rho: int, w: int, h: int) -> str:
    """The fixes that are valid in a ``w`` x ``h`` frame (``p`` <= min(w, h)) for a ``rho`` that breaks
    4 rho <= P <= min(w, h) - 2 rho: the largest rho at this patch size, and the patch sizes that
    take this rho, or, when none does, the largest rho any patch size takes."""
    side = min(w, h)
    fix = f"use rho <= {min(p // 4, (side - p) // 2)} at patch_size={p}"
    low, high = max(4 * rho, MIN_PATCH_SIZE), side - 2 * rho
    if low <= high:
        sizes = f"patch_size={low}" if low == high else f"a patch_size from {low} to {high}"
        return f"{fix}, or {sizes} for rho={rho}"
    most = side // 6 if max(4 * (side // 6), MIN_PATCH_SIZE) + 2 * (side // 6) <= side else (side - MIN_PATCH_SIZE) // 2
    return (
        f"{fix}; no patch_size takes rho={rho} in a {w}x{h} frame (4*rho <= patch_size <= {side} - 2*rho): "
        f"the largest rho it takes is {most}, with patch_size {max(4 * most, MIN_PATCH_SIZE)}"
    )


class SamplingConfig(BaseModel):
    """How pairs are drawn from one image (DeTone et al. 2016)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_width: int = Field(320, ge=1, description="width W the source image is resized to")
    image_height: int = Field(240, ge=1, description="height H the source image is resized to")
    patch_size: int = Field(128, ge=MIN_PATCH_SIZE, description="side P of the square patch")
    rho: int = Field(32, description="maximum corner perturbation, pixels")
    pairs_per_image: int = Field(4, ge=1, description="pairs drawn from each source image")
    seed: int = Field(0, ge=0, description="global seed; each pair derives from (seed, image id, pair index)")
    photometric: PhotometricLevel = Field(
        "none", description="independent brightness/contrast/noise changes on A and B"
    )

    @model_validator(mode="after")
    def _check_geometry(self) -> "SamplingConfig":
        if self.rho < 0:
            raise ValueError(f"rho must be >= 0 (got rho={self.rho})")
        p, w, h = self.patch_size, self.image_width, self.image_height
        if p > w or p > h:
            raise ValueError(
                f"patch_size={p} is larger than the image {w}x{h}: "
                f"use patch_size <= {min(w, h)} or a larger image_width/image_height"
            )
        if 4 * self.rho > p:
            raise ValueError(
                f"rho={self.rho} exceeds patch_size/4 = {p / 4:g}: larger perturbations can fold the "
                f"quadrilateral; {_rho_fix(p, self.rho, w, h)}"
            )
        if w * h > MAX_FRAME_PIXELS:
            raise ValueError(
                f"image_width x image_height = {w}x{h} is {w * h / 1e6:.1f} megapixels, above the limit of "
                f"{MAX_FRAME_PIXELS / 1e6:.1f} (homogen.config.MAX_FRAME_PIXELS): use a smaller frame (the recipe's is 320x240)"
            )
        per_image = self.pairs_per_image * pair_bytes(p)
        if per_image > MAX_SHARD_BYTES:
            raise ValueError(
                f"pairs_per_image={self.pairs_per_image} needs {_gb(per_image)} of pairs per image, above the "
                f"{_gb(MAX_SHARD_BYTES)} a shard may hold (homogen.config.MAX_SHARD_BYTES): use pairs_per_image <= "
                f"{MAX_SHARD_BYTES // pair_bytes(p)} at patch_size={p}"
            )
        if p + 2 * self.rho > min(w, h):
            raise ValueError(
                f"patch_size + 2*rho = {p + 2 * self.rho} exceeds the image side {min(w, h)} "
                f"({w}x{h}): {_rho_fix(p, self.rho, w, h)}"
            )
        return self


class SourceConfig(BaseModel):
    """Where the images come from.

    ``root`` is a COCO layout (``root/<split>/*.jpg`` + ``root/annotations/instances_<split>.json``)
    or a plain folder of images; local paths or fsspec URLs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str = Field(SAMPLE_ROOT, description="COCO root or image folder (path or fsspec URL)")
    kind: Literal["auto", "coco", "folder"] = "auto"
    train_split: str = Field("train2017", description="COCO split read for training pairs")
    test_split: str | None = Field(
        None, description="COCO split read for test pairs (e.g. val2017); None: hash-split the train split"
    )
    test_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share of images hashed into test")
    val_fraction: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="share of the training images hashed into val (model selection); see homogen.splits",
    )
    categories: tuple[str, ...] = Field((), description="keep only images containing these COCO categories")
    max_images: int | None = Field(None, ge=1, description="use only the first N images (by id) per split")


class GenerateConfig(BaseModel):
    """A whole generation run: source, sampling, and where and how to store it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceConfig = SourceConfig()
    sampling: SamplingConfig = SamplingConfig()
    output: str | None = Field(None, description="store path or URL; default <workdir>/datasets/<version>.zarr|.h5")
    format: Literal["zarr", "hdf5"] | None = Field(
        None, description="store format; default from the output suffix (.h5/.hdf5) else zarr"
    )
    shard_size: int = Field(
        64, ge=1, description="images per shard (the unit of parallel work; 64 x 4 pairs fill one chunk)"
    )
    chunk_size: int = Field(256, ge=1, description="pairs per storage chunk")
    overwrite: bool = Field(False, description="replace an output that holds another dataset version")

    @model_validator(mode="after")
    def _check_shard_memory(self) -> "GenerateConfig":
        s = self.sampling
        per_image = s.pairs_per_image * pair_bytes(s.patch_size)
        if self.shard_size * per_image > MAX_SHARD_BYTES:
            raise ValueError(
                f"shard_size={self.shard_size} images x pairs_per_image={s.pairs_per_image} at patch_size="
                f"{s.patch_size} is {_gb(self.shard_size * per_image)} per shard, above the limit of "
                f"{_gb(MAX_SHARD_BYTES)} (homogen.config.MAX_SHARD_BYTES): use shard_size <= {MAX_SHARD_BYTES // per_image}"
            )
        return self

    @model_validator(mode="after")
    def _check_output_suffix(self) -> "GenerateConfig":
        if not (self.format and self.output):
            return self
        name = self.output.rstrip("/")
        suffix = ".zarr" if name.endswith(".zarr") else next((s for s in (".h5", ".hdf5") if name.endswith(s)), None)
        implied = {".zarr": "zarr", ".h5": "hdf5", ".hdf5": "hdf5", None: self.format}[suffix]
        if implied != self.format:
            raise ValueError(
                f"output {self.output} ends in {suffix} ({'an HDF5' if implied == 'hdf5' else 'a Zarr'} store) but format is {self.format} "
                f"(--format {self.format}): give the output a {'.zarr' if self.format == 'zarr' else '.h5'} "
                f"suffix, or drop --format"
            )
        return self

    def store_format(self) -> str:
        if self.format:
            return self.format
        if self.output and self.output.rstrip("/").endswith((".h5", ".hdf5")):
            return "hdf5"
        return "zarr"

    def resolved_output(self, version: str) -> str:
        if self.output:
            return self.output
        suffix = ".h5" if self.store_format() == "hdf5" else ".zarr"
        return str(workdir() / "datasets" / f"{version}{suffix}")
