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

Checked before any work, in two steps: :class:`PipelineConfig` itself refuses what no machine
would accept (ranges, generation and training patch sizes that differ, URLs carrying credentials,
which Prefect would store in plain text with the run's parameters); :func:`check_before_work`
refuses what this machine would refuse later (a training device it lacks, an unknown evaluation
method). The flow runs both first; ``homogen run`` and ``python -m`` run them before starting it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from homogen.flows.cluster import DaskConfig
from homogen.flows.generate import QUICK_GENERATE  # noqa: F401  (re-exported)
from homogen.config import GenerateConfig
from homogen.model.config import DEVICE, TrainConfig
from homogen.param_errors import describe_errors
from homogen.redaction import redact

QUICK_TRAIN = TrainConfig.model_construct(
    _fields_set=set(), **TrainConfig(epochs=2, width=0.25, batch_size=32, step_size=10, patience=None).model_dump()
)
"""Default training: 2 epochs of a quarter-width HomographyNet (about a minute on 2 CPU cores).

No field of it counts as set (``model_fields_set`` is empty): in a :class:`PipelineConfig`, the
train fields a user gave are the set ones, which is what a dispatched training sends over the
GPU deployment's own settings (:func:`dispatched_train_config`)."""


class TrackingConfig(BaseModel):
    """Where datasets and models are recorded in MLflow."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    uri: str | None = Field(
        None, description="MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db"
    )
    experiment: str = Field("homogen", description="MLflow experiment of the training runs")
    model_name: str = Field("homographynet", description="registered model name")


class EvaluateConfig(BaseModel):
    """Which methods are scored beside the network on the dataset's test split."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    methods: tuple[str, ...] = Field(
        ("identity", "orb", "sift", "ecc"),  # homogen.model.evaluate.DEFAULT_METHODS (a test keeps them equal)
        description="model.methods.METHODS keys (identity, orb, sift, ecc, direct-mse, direct-ncc, "
        "METHOD+refine) or network+refine",
    )
    limit: int | None = Field(200, ge=1, description="test pairs scored (the first N); None: all")


class PipelineConfig(BaseModel):
    """Everything one ``generate-and-train`` run does. Partial sections are deep-merged into the defaults."""

    # hide_input_in_errors: an error never repeats the values given (a URL's credentials would reach
    # the run's state message and logs)
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False)

    generate: GenerateConfig = QUICK_GENERATE
    validate_regenerate: int = Field(
        8, ge=0, description="pairs regenerated from the source images and compared byte for byte"
    )
    train: TrainConfig = QUICK_TRAIN
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    dask: DaskConfig = DaskConfig()
    train_deployment: str | None = Field(
        None,
        description="run training as this deployment (e.g. 'train-model/gpu' on a GPU work pool) instead of in-process",
    )
    storage_secret: str | None = Field(
        None,
        description="name of a Prefect Secret block holding fsspec storage options per protocol "
        "({'s3': {'key': ..., 'secret': ...}}), loaded when the run starts: credentials for the source and "
        "output URLs that never appear in the run's parameters",
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
            if name != "train" and isinstance(default, BaseModel) and isinstance(given, dict):
                merged[name] = deep_merge(default.model_dump(), given)
        return merged

    @field_validator("train", mode="wrap")
    @classmethod
    def _train_over_quick_defaults(cls, value: Any, handler: Any) -> TrainConfig:
        """A partial ``train`` section over :data:`QUICK_TRAIN`, remembering which fields it set.

        Validated whole (an error names ``train.<field>``); the result's ``model_fields_set`` is the
        keys given, so a dispatched training overrides the GPU deployment's settings with those only.
        """
        if not isinstance(value, dict):
            return handler(value)  # a TrainConfig keeps its own fields_set
        checked = handler(deep_merge(QUICK_TRAIN.model_dump(), value))
        return TrainConfig.model_construct(
            _fields_set=set(value) & set(TrainConfig.model_fields), **checked.model_dump()
        )

    @model_validator(mode="after")
    def _check_consistent(self) -> "PipelineConfig":
        """What a later stage would refuse, refused now: URLs with credentials, patch sizes that differ."""
        for path in URL_FIELDS:
            url = get_path(self, path)
            if isinstance(url, str) and redact(url) != url:
                raise ValueError(
                    f"{'.'.join(path)}={redact(url)!r} (shown without them) carries credentials, a query or a fragment, "
                    "which Prefect would store in plain text with the run's parameters: pass the URL without them "
                    "and provide credentials in a Prefect Secret block named by storage_secret, or in the "
                    "environment (fsspec storage options such as FSSPEC_S3_KEY / FSSPEC_S3_SECRET or "
                    "AWS_ACCESS_KEY_ID; MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for MLflow)"
                )
        made, read = self.generate.sampling.patch_size, self.train.patch_size
        if made != read:
            raise ValueError(
                f"generate.sampling.patch_size={made} but train.patch_size={read}: the network reads patches of "
                f"the store's size; set both to the same value"
            )
        if self.train_deployment is not None and not re.fullmatch(r"[^/\s]+/[^/\s]+", self.train_deployment):
            raise ValueError(
                f"train_deployment={self.train_deployment!r}: use '<flow name>/<deployment name>', e.g. 'train-model/gpu'"
            )
        return self


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
"""Flat parameter name -> path in :class:`PipelineConfig`: the one list of the shortcuts. The
``generate-and-train`` flow's signature and ``homogen run``'s options are made from it
(:func:`flat_parameters`), with the fields' types, descriptions and the pipeline's defaults."""

URL_FIELDS: tuple[tuple[str, ...], ...] = (("generate", "source", "root"), ("generate", "output"), ("tracking", "uri"))
"""Paths of the config's URLs: they must carry no credentials, query or fragment (Prefect stores
parameters in plain text); the deployments' parameter schema refuses them server-side as well."""

URL_WITH_CREDENTIALS = r"[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#\s'\"<>]*@|[^?#\s'\"<>]*[?#])"
"""A regular expression found in any string holding a URL with ``user:password@``, a token, a query or a fragment."""

NO_CREDENTIALS_PATTERN = rf"^(?![\s\S]*{URL_WITH_CREDENTIALS})"
"""JSON-schema ``pattern`` matching exactly the strings :func:`homogen.redaction.redact` leaves
unchanged (no ``user:password@``, query or fragment in any URL): the server refuses a run whose URL
parameters fail it before it stores them."""


def get_path(config: BaseModel, path: tuple[str, ...]) -> Any:
    """The value at ``path`` (``("generate", "sampling", "rho")``) of a config."""
    value: Any = config
    for key in path:
        value = getattr(value, key)
    return value


def field_info(path: tuple[str, ...]):
    """The pydantic ``FieldInfo`` of the field at ``path`` in :class:`PipelineConfig`."""
    model: Any = PipelineConfig
    for key in path[:-1]:
        model = model.model_fields[key].annotation
    return model.model_fields[path[-1]]


def flat_parameters() -> dict[str, tuple[Any, str]]:
    """Each flat shortcut -> (its type, made optional, ``None`` = not given; its help with the pipeline's default)."""
    defaults = PipelineConfig()
    out = {}
    for name, path in FLAT_OVERRIDES.items():
        info = field_info(path)
        default = get_path(defaults, path)
        shown = "the bundled sample" if path == ("generate", "source", "root") else default
        default_text = "" if shown is None else f"default: {shown}; "
        out[name] = (Optional[info.annotation], f"{info.description or name} ({default_text}sets {'.'.join(path)})")
    return out


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
    data = config.model_dump()
    data["train"] = config.train.model_dump(exclude_unset=True)  # the fields given stay the ones set
    try:
        return PipelineConfig.model_validate(deep_merge(data, update))
    except ValidationError as exc:
        raise InvalidParameters(describe_errors(exc, given)) from exc


def checked_config(data: dict, name: str, **flat: Any) -> PipelineConfig:
    """What an entry point checks before it starts the flow (a refused value never reaches Prefect).

    ``data`` (the ``name`` argument, from :func:`load_config`) as a config, checked with the flat
    shortcuts ``flat`` laid over it (:func:`apply_overrides`, :func:`check_before_work`). Returns
    the config without ``flat``: the flow takes them as parameters of their own.

    Raises:
        InvalidParameters: the config's error prefixed with ``name``, or that of a shortcut or of this machine.
    """
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidParameters(f"{name}: {describe_errors(exc)}") from exc
    check_before_work(apply_overrides(cfg, **flat))
    return cfg


def load_config(text: str | None, name: str = "--config") -> dict:
    """A config given on a command line (``--config`` / ``config=``): inline JSON or a JSON file's path; {} when empty.

    The one parser of ``homogen run --config`` (which ``python -m homogen.flows.generate_and_train`` runs).

    Raises:
        InvalidParameters: neither a JSON object nor a file holding one; the message names ``name``
            and shows the form.
    """
    if not text:
        return {}
    path = Path(text)
    raw = path.read_text() if not text.lstrip().startswith("{") and path.is_file() else text
    example = '{"train": {"epochs": 5}}'
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidParameters(
            f"{name} is neither a JSON object nor a JSON file ({exc}): pass e.g. {name}{' ' if name.startswith('-') else '='}'{example}'"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidParameters(f"{name} must be a JSON object, e.g. '{example}'")
    return data


def torch_has_cuda() -> bool:
    """Whether the installed torch build has CUDA, read from ``torch/version.py`` without importing torch."""
    spec = find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    version = Path(spec.origin).with_name("version.py")
    text = version.read_text() if version.is_file() else ""
    return re.search(r"^cuda\b[^=]*=\s*None\s*$", text, re.M) is None and "cuda" in text


def visible_cuda_devices() -> int:
    """CUDA devices this process may use (NVML's count within ``CUDA_VISIBLE_DEVICES``), without torch.

    NVML, not the CUDA driver API: it creates no CUDA context, so processes forked later still can.
    """
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1" if sys.platform != "win32" else "nvml.dll")
    except OSError:
        return 0
    if nvml.nvmlInit_v2() != 0:
        return 0
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return 0
    finally:
        nvml.nvmlShutdown()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count.value
    return min(count.value, len([v for v in visible.split(",") if v.strip()]))


def check_before_work(cfg: PipelineConfig) -> None:
    """Refuse, before the first shard, what this machine would refuse later; torch-free, well under a second.

    The config itself is already consistent (:class:`PipelineConfig`'s validators: URLs, patch
    sizes, ranges). Here: the training device exists on this machine (skipped when training runs
    as ``train_deployment`` elsewhere), and every evaluation method is known.

    Raises:
        InvalidParameters: naming the parameter, what this machine has, and the fix.
    """
    from homogen.model.methods import check_methods  # numpy and OpenCV only (torch when a method runs)

    try:
        check_methods(cfg.evaluate.methods, network=True)  # the flow always scores its network
    except ValueError as exc:
        raise InvalidParameters(f"evaluate.methods: {exc}") from exc
    if cfg.train_deployment is not None:
        shareable_tracking_uri(cfg.tracking.uri, f"train_deployment={cfg.train_deployment!r}")
    device = cfg.train.device
    m = DEVICE.fullmatch(device)
    if m is None:
        raise InvalidParameters(
            f"train.device={device!r} is not a device the trainer uses: use auto, cpu, cuda, cuda:N or mps"
        )
    if cfg.train_deployment is not None or device in ("auto", "cpu"):
        return
    where = "; or train on a GPU machine with train_deployment='train-model/gpu'"
    if device == "mps" and sys.platform != "darwin":
        raise InvalidParameters(
            f"train.device='mps' needs Apple silicon (this is {sys.platform}): use device=auto or cpu{where}"
        )
    if device.startswith("cuda"):
        if not torch_has_cuda():
            raise InvalidParameters(
                f"train.device={device!r}, but the installed torch has no CUDA: use device=auto or cpu{where}"
            )
        index, count = int(m.group(1) or 0), visible_cuda_devices()
        if index >= count:
            raise InvalidParameters(
                f"train.device={device!r}, but this machine has {count} CUDA device(s) visible: "
                f"use {'cuda:0..cuda:' + str(count - 1) + ', ' if count else ''}auto or cpu{where}"
            )


def shareable_tracking_uri(uri: str | None, why: str) -> str:
    """The MLflow tracking URI (``uri``, else ``$MLFLOW_TRACKING_URI``, else the local default) that another
    machine can reach, without credentials; refused when it is a local file or SQLite store.

    A training dispatched to a GPU worker registers its model there, and the parent reads it back:
    a path on one machine (``sqlite:///...``, ``file:...``, a plain path) would be a throwaway store on
    the worker, and the model would be lost with the worker's temporary folder.

    Raises:
        InvalidParameters: naming the URI (redacted), ``why`` it must be shared, and what to set.
    """
    from urllib.parse import urlsplit

    from homogen.model.tracking import resolve_tracking_uri

    resolved = resolve_tracking_uri(uri)
    scheme = urlsplit(resolved).scheme.lower()
    if scheme in ("", "file", "sqlite") or len(scheme) == 1:  # a path, a file: URI, SQLite; "c:" is a drive
        raise InvalidParameters(
            f"tracking.uri resolves to {redact(resolved)!r}, a store on this machine only, but {why} trains and "
            f"registers on another machine: set tracking.uri (or MLFLOW_TRACKING_URI on both machines) to an "
            f"MLflow server both reach, e.g. http://mlflow-host:5000"
        )
    parts = urlsplit(resolved)
    if parts.username or parts.password:  # credentials travel in MLFLOW_TRACKING_USERNAME/PASSWORD, never as parameters
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    return parts.geturl()


def dispatched_train_config(deployment_config: dict | None, train: TrainConfig) -> TrainConfig:
    """What a dispatched training runs: the GPU deployment's own ``config`` with the fields the user set over it.

    ``train``'s set fields (``model_fields_set``: those given in ``config.train`` or by a flat
    shortcut such as ``epochs``) win; every other field is the deployment's, not the pipeline's
    quick-start default (a quarter-width network for 2 epochs).

    Raises:
        InvalidParameters: the combination is not a valid training config (naming the field).
    """
    merged = {**dict(deployment_config or {}), **train.model_dump(mode="json", exclude_unset=True)}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise InvalidParameters(f"train_deployment's config with yours: {describe_errors(exc)}") from exc
