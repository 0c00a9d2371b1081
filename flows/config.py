"""The one typed parameter of the pipeline, :class:`PipelineConfig`, and its per-run overrides.

Defaults follow the recipe (rho 32, P 128, 320x240, CONVENTIONS.md) at a size that runs end to end
in a few minutes on a 2-core CPU: the 32 bundled COCO photographs, 32 pairs per image (1,024
pairs in 8 shards) and 2 epochs of a quarter-width HomographyNet. Users scale up with parameters.

Overrides, three ways, all validated before any work (an invalid value fails the run at once and
the error names the parameter):

- Nested, partial: ``--param config='{"generate": {"sampling": {"rho": 24}}}'``. A partial
  section is *merged* into the defaults (deep merge), so everything not named keeps its default.
- Flat shortcuts of the ``generate-and-train`` flow (:data:`FLAT_OVERRIDES`): ``--param rho=24``,
  ``--param epochs=5``, ``--param source=/data/coco``... They are folded into ``config`` by
  :func:`apply_overrides` and win over it; ``None`` (the default) means "not given".
- In Python: ``PipelineConfig(generate={"sampling": {"rho": 24}})`` or ``apply_overrides(cfg, rho=24)``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from homogen.flows.cluster import DASK_ADDRESS_ENV, DaskConfig  # noqa: F401  (re-exported)
from homogen.flows.generate import QUICK_GENERATE  # noqa: F401  (re-exported)
from homogen.config import GenerateConfig
from homogen.model.config import TrainConfig

QUICK_TRAIN = TrainConfig(epochs=2, width=0.25, batch_size=32, step_size=10, patience=None)
"""Default training: 2 epochs of a quarter-width HomographyNet (about a minute on 2 CPU cores)."""


class TrackingConfig(BaseModel):
    """Where datasets and models are recorded in MLflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = Field(None, description="MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db")
    experiment: str = Field("homogen", description="MLflow experiment of the training runs")
    model_name: str = Field("homographynet", description="registered model name")


class EvaluateConfig(BaseModel):
    """Which methods are scored beside the network on the dataset's test split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    methods: tuple[str, ...] = Field(("identity", "orb", "sift"), description="baselines (model.baselines.BASELINES keys)")
    limit: int | None = Field(200, ge=1, description="test pairs scored (the first N); None: all")


class PipelineConfig(BaseModel):
    """Everything one ``generate-and-train`` run does. Partial sections are deep-merged into the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generate: GenerateConfig = QUICK_GENERATE
    validate_regenerate: int = Field(8, ge=0, description="pairs regenerated from the source images and compared byte for byte")
    train: TrainConfig = QUICK_TRAIN
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    dask: DaskConfig = DaskConfig()
    train_deployment: str | None = Field(
        None,
        description="run training as this deployment (e.g. 'train-model/gpu' on a GPU work pool) instead of in-process",
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_into_defaults(cls, data: Any) -> Any:
        """A partial section (``{"generate": {"sampling": {"rho": 24}}}``) keeps every default it does not name."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, info in cls.model_fields.items():
            default, given = info.default, data.get(name)
            if isinstance(default, BaseModel) and isinstance(given, dict):
                merged[name] = deep_merge(default.model_dump(), given)
        return merged


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` laid over it, recursively for nested dicts (neither is modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


FLAT_OVERRIDES: dict[str, tuple[str, ...]] = {
    "source": ("generate", "source", "root"),
    "max_images": ("generate", "source", "max_images"),
    "rho": ("generate", "sampling", "rho"),
    "pairs_per_image": ("generate", "sampling", "pairs_per_image"),
    "seed": ("generate", "sampling", "seed"),
    "output": ("generate", "output"),
    "epochs": ("train", "epochs"),
    "width": ("train", "width"),
    "device": ("train", "device"),
    "dask_address": ("dask", "address"),
    "n_workers": ("dask", "n_workers"),
}
"""Flat parameter name -> path in :class:`PipelineConfig` (the shortcuts of ``generate-and-train``)."""


class InvalidParameters(ValueError):
    """A run's parameters are invalid; the message names each parameter and what is allowed."""


def nest(path: tuple[str, ...], value: Any) -> dict:
    """``("a", "b"), 1`` -> ``{"a": {"b": 1}}``."""
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    return out


def apply_overrides(config: PipelineConfig, **flat: Any) -> PipelineConfig:
    """``config`` with the given flat shortcuts (``rho=24``; None = not given) laid over it.

    Raises:
        InvalidParameters: an unknown shortcut, or a value the config refuses; the message names
            the shortcut (``rho=100``) and the config's reason (``use rho <= 56``).
    """
    unknown = sorted(set(flat) - set(FLAT_OVERRIDES))
    if unknown:
        raise InvalidParameters(f"unknown parameter(s) {unknown}: use one of {sorted(FLAT_OVERRIDES)} or `config`")
    given = {k: v for k, v in flat.items() if v is not None}
    update: dict = {}
    for name, value in given.items():
        update = deep_merge(update, nest(FLAT_OVERRIDES[name], value))
    try:
        return PipelineConfig.model_validate(deep_merge(config.model_dump(), update))
    except ValidationError as exc:
        raise InvalidParameters(describe_errors(exc, given)) from None


def describe_errors(exc: ValidationError, given: dict[str, Any] | None = None) -> str:
    """One line per pydantic error: where (``generate.sampling``), why, and the flat parameters that were set."""
    lines = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    msg = "invalid parameters: " + "; ".join(lines)
    if given:
        msg += " (given: " + ", ".join(f"{k}={v!r}" for k, v in given.items()) + ")"
    return msg
