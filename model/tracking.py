"""MLflow tracking of HomographyNet runs: params, dataset input, metrics, artifacts, registry.

Tracking URI, in order: the ``tracking_uri`` argument, ``$MLFLOW_TRACKING_URI``, else SQLite in
the project's working folder, ``sqlite:///<HOMOGEN_WORKDIR or ./work>/mlflow.db``, with artifacts
in ``<workdir>/mlartifacts``. For any ``sqlite:///DIR/NAME.db`` URI the experiment's artifacts go to
``DIR/mlartifacts`` (not MLflow's ``./mlruns`` relative to the current directory).

Nothing secret is logged: URLs (the store URI, the dataset source, config values, error messages)
pass through :func:`strip_credentials` first.

Champion rule (:func:`promote_if_better`). The registered model ``homographynet`` has one alias,
``champion``. Scores are only ever compared **on the same test dataset version**: every version
carries the tag ``test_mace.<dataset_version>`` (its test MACE on that dataset's test split) beside
``dataset_version``, ``test_dataset_version``, ``rho``, ``patch_size`` and ``test_mace``.

1. No champion yet: the new version becomes champion.
2. The champion already has a score on the new version's test dataset (tag
   ``test_mace.<dataset_version>``): the alias moves iff the new test MACE is strictly lower.
3. Otherwise (champion tested on another dataset version) the champion is re-evaluated on the
   very same test pairs the new version was scored on; its score is cached on it as the tag
   ``test_mace.<dataset_version>``, and rule 2 decides.
4. If the champion cannot be scored there (its model does not load, or its patch size differs
   from the dataset's), the two are not comparable and the champion stays.

Each new version gets the tag ``promotion`` saying what was decided and why. Registrations of
two runs at the same moment are not serialised (last writer of the alias wins).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

__all__ = [
    "CHAMPION",
    "DEFAULT_EXPERIMENT",
    "MODEL_NAME",
    "TrackedRun",
    "TrackingError",
    "artifact_location",
    "config_params",
    "dataset_input",
    "default_tracking_uri",
    "error_histogram_png",
    "load_checkpoint",
    "load_model",
    "load_model_folder",
    "log_training_run",
    "pairs_grid_png",
    "promote_if_better",
    "register_model_tags",
    "resolve_tracking_uri",
    "setup_tracking",
    "strip_credentials",
]

MODEL_NAME = "homographynet"
CHAMPION = "champion"
DEFAULT_EXPERIMENT = "homographynet"
ARTIFACTS_DIR = "mlartifacts"


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used; the message names the URI (without credentials)."""


# ------------------------------------------------------------------------------- credentials

_SECRET_KEYS = re.compile(r"(pass(word)?|pwd|secret|token|key|sig(nature)?|credential|auth)", re.I)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s?#]*@")


def strip_credentials(text: Any) -> Any:
    """``text`` with credentials removed from every URL in it.

    Drops ``user:password@`` (and a lone ``user@``/``token@``) after any ``scheme://``, and blanks the
    values of query parameters that look secret (password, token, key, signature, credential,
    auth...). Non-strings are returned unchanged; plain paths are untouched.

    >>> strip_credentials("s3://AKIA:s3cr3t@bucket/ds.zarr")
    's3://bucket/ds.zarr'
    >>> strip_credentials("postgresql://u:p@db:5432/mlflow")
    'postgresql://db:5432/mlflow'
    """
    if not isinstance(text, str):
        return text
    out = _USERINFO.sub(lambda m: m.group("scheme"), text)
    if "?" not in out or "://" not in out:
        return out

    def clean_url(m: re.Match) -> str:
        url = m.group(0)
        try:
            parts = urlsplit(url)
        except ValueError:
            return url
        if not parts.query:
            return url
        q = [(k, "REDACTED" if _SECRET_KEYS.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        return urlunsplit(parts._replace(query=urlencode(q, safe="/:")))

    return re.sub(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+", clean_url, out)


# ------------------------------------------------------------------------------- setup


def _workdir() -> Path:
    try:
        from homogen.config import workdir

        return Path(workdir())
    except ImportError:  # pragma: no cover - homogen is installed with this package
        return Path(os.environ.get("HOMOGEN_WORKDIR", "work"))


def default_tracking_uri() -> str:
    """``sqlite:///<workdir>/mlflow.db`` (absolute path; workdir = ``$HOMOGEN_WORKDIR`` or ``./work``)."""
    return f"sqlite:///{(_workdir() / 'mlflow.db').resolve()}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The argument, else ``$MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path if os.path.isabs(path) else path)  # sqlite:////abs -> '/abs'; sqlite:///rel -> 'rel'


def artifact_location(uri: str) -> str | None:
    """Where new experiments keep artifacts: ``DIR/mlartifacts`` beside a SQLite ``DIR/x.db``; else the server's default."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / ARTIFACTS_DIR).as_uri()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def setup_tracking(uri: str | None = None, experiment: str | None = DEFAULT_EXPERIMENT, timeout_s: int = 10) -> str:
    """Point MLflow (tracking and registry) at ``uri`` (see :func:`resolve_tracking_uri`) and check it answers.

    Creates the SQLite folder and, when ``experiment`` is given, the experiment (artifacts beside a
    SQLite store) and makes it the active one. Returns the URI in use.

    Raises:
        TrackingError: the store cannot be reached or opened; the message names the URI with
            credentials stripped and says how to choose another.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(uri)
    shown = strip_credentials(uri)
    hint = "start that server, or choose another store with MLFLOW_TRACKING_URI / --tracking-uri"
    db = _sqlite_path(uri)
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        # One quick attempt instead of MLflow's default minutes of retries against a dead server.
        with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s)):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            exp_id = None
            if experiment:
                exp = client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp else client.create_experiment(
                    experiment, artifact_location=artifact_location(uri)
                )
    except Exception as exc:  # noqa: BLE001 - any failure here means "unreachable"; say which store
        raise TrackingError(
            f"MLflow tracking store {shown} is unreachable: {strip_credentials(f'{type(exc).__name__}: {exc}')[:400]} "
            f"({hint})"
        ) from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if exp_id is not None:
        mlflow.set_experiment(experiment_id=exp_id)
    return uri


# ------------------------------------------------------------------------------- dataset input


def dataset_input(ds: Any, name: str | None = None):
    """An ``mlflow.data`` dataset for a homogen store: digest = dataset version, source = store URI (credentials stripped).

    The schema lists the arrays the model reads (pairs uint8 (-1,2,P,P), offsets f32 (-1,8)).
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    uri = strip_credentials(str(ds.uri))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(uri)
    except Exception:  # an fsspec scheme MLflow does not know: fall back to the generic local/URI source
        from mlflow.data.artifact_dataset_sources import LocalArtifactDatasetSource

        source = LocalArtifactDatasetSource(uri)
    p = int(ds.patch_size)
    schema = Schema(
        [
            TensorSpec(np.dtype(np.uint8), (-1, 2, p, p), "pairs"),
            TensorSpec(np.dtype(np.float32), (-1, 8), "offsets"),
        ]
    )
    return MetaDataset(source=source, name=name or f"homogen-{ds.version}", digest=str(ds.version), schema=schema)


# ------------------------------------------------------------------------------- artifacts


def _quad(img: np.ndarray, pts: np.ndarray, color: tuple[int, int, int], margin: int, thickness: int = 1) -> None:
    import cv2

    q = np.round((np.asarray(pts, np.float64).reshape(4, 2) + margin) * 1.0).astype(np.int32)
    cv2.polylines(img, [q.reshape(-1, 1, 2)], True, color, thickness, cv2.LINE_AA)


def pairs_grid_png(
    pairs: np.ndarray, true_offsets: np.ndarray, pred_offsets: np.ndarray, path: str | os.PathLike, n: int = 8, margin: int = 40
) -> str:
    """A PNG grid, one row per pair: patch A | patch B, each on a grey margin.

    On A: the quadrilateral corners + offsets (where B's square lies in A), true in green, predicted
    in red. On B: the inverse quadrilateral H^-1(corners) (where A's square lies in B), same colours.
    Returns the path written.
    """
    import cv2

    from homogen.model.baselines import homography_from_offsets, patch_corners

    n = min(n, len(pairs))
    p = pairs.shape[-1]
    corners = patch_corners(p)
    green, red = (0, 200, 0), (0, 0, 255)
    rows = []
    for i in range(n):
        panels = []
        for side in (0, 1):
            canvas = np.full((p + 2 * margin, p + 2 * margin, 3), 64, np.uint8)
            canvas[margin : margin + p, margin : margin + p] = cv2.cvtColor(pairs[i, side], cv2.COLOR_GRAY2BGR)
            for off, color in ((true_offsets[i], green), (pred_offsets[i], red)):
                h = homography_from_offsets(off, p)
                if side == 0:
                    pts = corners + np.asarray(off, np.float64).reshape(4, 2)
                else:
                    hi = np.linalg.inv(h)
                    hom = np.c_[corners, np.ones(4)] @ hi.T
                    pts = hom[:, :2] / hom[:, 2:3]
                if np.all(np.isfinite(pts)) and np.abs(pts).max() < 10 * p:
                    _quad(canvas, pts, color, margin)
            cv2.putText(canvas, "A" if side == 0 else "B", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
            if i == 0 and side == 1:
                cv2.putText(canvas, "true", (24, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, green, 1)
                cv2.putText(canvas, "predicted", (64, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, red, 1)
            panels.append(canvas)
        rows.append(np.concatenate(panels, axis=1))
    if not rows:
        rows = [np.zeros((p, 2 * p, 3), np.uint8)]
    cols = 2 if len(rows) > 4 else 1
    while len(rows) % cols:
        rows.append(np.zeros_like(rows[0]))
    grid = np.concatenate([np.concatenate(rows[c::cols], axis=0) for c in range(cols)], axis=1)
    path = str(path)
    if not cv2.imwrite(path, grid):
        raise OSError(f"could not write {path}")
    return path


def error_histogram_png(
    corner_errors_by_method: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "corner errors (test)"
) -> str:
    """Histogram PNG of per-corner errors (pixels), one step curve per method. Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from homogen.model.evaluate import method_label

    vals = {k: np.asarray(v, np.float64).reshape(-1) for k, v in corner_errors_by_method.items()}
    hi = max([float(np.percentile(v, 99)) for v in vals.values() if v.size] + [1.0])
    bins = np.linspace(0, hi, 41)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)
    for k, v in vals.items():
        if v.size:
            ax.hist(np.clip(v, 0, hi), bins=bins, histtype="step", linewidth=1.6 if k == "homographynet" else 1.0,
                    label=f"{method_label(k)} (mean {v.mean():.2f} px)")
    ax.set_xlabel("corner error (px)")
    ax.set_ylabel("corners")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(str(path))
    plt.close(fig)
    return str(path)


# ------------------------------------------------------------------------------- params


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif hasattr(value, "__dataclass_fields__"):
        import dataclasses

        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        if isinstance(value, (list, tuple)):
            value = json.dumps([v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for v in value])
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        out[prefix] = strip_credentials(value if isinstance(value, (int, float, bool, str, type(None))) else str(value))


def config_params(config: Any) -> dict[str, Any]:
    """A config (pydantic model, dataclass or mapping, nested) as flat ``a.b`` params, credentials stripped."""
    out: dict[str, Any] = {}
    _flatten("", config, out)
    return out


# ------------------------------------------------------------------------------- results


@dataclass
class TrackedRun:
    """What :func:`log_training_run` recorded."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str | None = None
    model_version: str | None = None
    champion: bool = False
    promotion: str = ""
    test: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)


def _network_device(model: Any):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        import torch

        return torch.device("cpu")


def log_training_run(
    model: Any,
    dataset: Any,
    *,
    config: Any = None,
    history: Iterable[Mapping[str, Any]] = (),
    test_pairs: np.ndarray | None = None,
    test_offsets: np.ndarray | None = None,
    baselines: Iterable[str] | Mapping[str, Mapping[str, Any]] = ("identity", "orb", "sift", "ecc"),
    checkpoint: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    register: bool = True,
    model_name: str = MODEL_NAME,
    tags: Mapping[str, str] | None = None,
    batch_size: int = 64,
    grid_pairs: int = 8,
) -> TrackedRun:
    """Log one finished training run to MLflow and (optionally) register its model.

    Args:
        model: trained torch module (uint8 (B,2,P,P) -> (B,8) offsets); ``homogen.model.patch_size`` if present.
        dataset: opened homogen store (or its path/URL) the model was trained on.
        config: whole training config (pydantic, dataclass or mapping), logged flat as params.
        history: per-epoch dicts with ``epoch`` and metrics (``train_loss``, ``val_mace``, ...),
            logged as step metrics (step = epoch).
        test_pairs / test_offsets: the test pairs; default: the store's ``test`` split.
        baselines: baseline method keys to evaluate on the same pairs, or precomputed
            ``{method: summary}`` from :func:`homogen.model.evaluate.evaluate_methods`.
        checkpoint: local checkpoint path, recorded as the tag ``checkpoint`` (the file itself is
            left where it is, whatever happens to MLflow).
        register: log the model with ``mlflow.pytorch.log_model`` (signature + uint8 input example),
            register it as ``model_name``, tag the version and apply the champion rule.

    Returns:
        :class:`TrackedRun`: run id, model URI, registered version, whether it became champion.

    Raises:
        TrackingError: the store is unreachable (checked before anything is logged).
    """
    import mlflow
    import torch
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient
    from mlflow.types import Schema, TensorSpec

    from homogen.model.evaluate import NETWORK, evaluate_methods, format_table, load_test_pairs

    uri = setup_tracking(tracking_uri, experiment)
    if isinstance(dataset, (str, os.PathLike)):
        from homogen.stores import open_dataset

        dataset = open_dataset(os.fspath(dataset))
    if test_pairs is None or test_offsets is None:
        test_pairs, test_offsets = load_test_pairs(dataset, split="test")
    if len(test_pairs) == 0:
        raise ValueError(f"store {strip_credentials(str(dataset.uri))} has no test pairs to evaluate on")
    p = int(getattr(model, "patch_size", test_pairs.shape[-1]))
    version = str(dataset.version)

    methods = list(baselines) if not isinstance(baselines, Mapping) else []
    results = evaluate_methods(test_pairs, test_offsets, methods=methods, model=model, batch_size=batch_size,
                               return_predictions=True)
    if isinstance(baselines, Mapping):
        results.update({k: dict(v) for k, v in baselines.items()})
    net = results[NETWORK]

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    run_tags = {"dataset_version": version, "store_uri": strip_credentials(str(dataset.uri)), **(tags or {})}
    if checkpoint is not None:
        run_tags["checkpoint"] = strip_credentials(os.fspath(checkpoint))
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name, tags=run_tags) as run:
        params = config_params(config) if config is not None else {}
        params.update({"dataset.version": version, "dataset.rho": int(dataset.rho), "dataset.patch_size": int(dataset.patch_size),
                       "dataset.num_pairs": len(dataset), "test.num_pairs": len(test_pairs)})
        items = list(params.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        mlflow.log_input(dataset_input(dataset), context="training", tags={"splits": "train,val,test"})

        for rec in history:
            step = int(rec.get("epoch", 0))
            m = {k: float(v) for k, v in rec.items() if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(float(v))}
            if m:
                mlflow.log_metrics(m, step=step)

        final = {"test_mace": net["mean"], "test_mace_median": net["median"], "test_mace_p95": net["p95"],
                 "test_ms_per_pair": net["ms_per_pair"]}
        for name, r in results.items():
            if name == NETWORK:
                continue
            final.update({f"{name}_mace": r["mean"], f"{name}_mace_median": r["median"], f"{name}_mace_p95": r["p95"],
                          f"{name}_failures": r["failures"], f"{name}_ms_per_pair": r["ms_per_pair"]})
        mlflow.log_metrics({k: float(v) for k, v in final.items() if v is not None and math.isfinite(float(v))})

        summary = {k: {kk: vv for kk, vv in r.items() if kk not in ("pred", "errors")} for k, r in results.items()}
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            pairs_grid_png(test_pairs, test_offsets, net["pred"], t / "test_pairs.png", n=grid_pairs)
            from homogen.model.metrics import corner_errors

            errs = {NETWORK: corner_errors(net["pred"], test_offsets)}
            errs.update({k: corner_errors(r["pred"], test_offsets) for k, r in results.items() if k != NETWORK and "pred" in r})
            error_histogram_png(errs, t / "corner_errors.png", title=f"test corner errors, dataset {version}")
            (t / "evaluation.md").write_text(format_table(summary) + "\n")
            (t / "evaluation.json").write_text(json.dumps(summary, indent=2))
            (t / "dataset_manifest.json").write_text(strip_credentials(json.dumps(dataset.manifest, indent=2, default=str)))
            mlflow.log_artifacts(tmp, artifact_path="evaluation")

        tracked = TrackedRun(run_id=run.info.run_id, experiment_id=exp.experiment_id, tracking_uri=uri,
                             test=summary[NETWORK], baselines={k: v for k, v in summary.items() if k != NETWORK})
        if not register:
            return tracked

        signature = ModelSignature(
            # Unnamed tensors: a named input makes pyfunc pass a dict, which the pytorch flavor refuses.
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 2, p, p))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 8))]),
        )
        example = np.ascontiguousarray(test_pairs[:1]).astype(np.uint8)
        model.eval()
        cpu_model = model.to("cpu") if _network_device(model).type != "cpu" else model
        info = mlflow.pytorch.log_model(
            cpu_model,
            name="model",
            signature=signature,
            input_example=example,
            registered_model_name=model_name,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "kornia", "numpy"],
            # Pickle keeps the HomographyNet class (eval(), patch_size, any batch size); MLflow's
            # default 'pt2' export fixes the batch to the example's 1 and loads as a bare graph.
            # load_model reads it back with torch.load(weights_only=True) (load_model_folder),
            # never mlflow.pytorch.load_model, so a tampered model file cannot run code.
            serialization_format="pickle",
        )
        tracked.model_uri = info.model_uri
        mv = str(info.registered_model_version)
        tracked.model_version = mv
        register_model_tags(client, model_name, mv, dataset_version=version, rho=int(dataset.rho),
                            patch_size=int(dataset.patch_size), test_mace=float(net["mean"]))

        def score_champion(champ_version: str) -> float:
            champ = load_model(f"models:/{model_name}/{champ_version}", tracking_uri=uri)
            if int(getattr(champ, "patch_size", p)) != test_pairs.shape[-1]:
                raise ValueError(f"patch size {getattr(champ, 'patch_size', '?')} differs from the dataset's {test_pairs.shape[-1]}")
            return evaluate_methods(test_pairs, test_offsets, methods=(), model=champ, batch_size=batch_size)[NETWORK]["mean"]

        tracked.champion, tracked.promotion = promote_if_better(
            client, model_name, mv, version, float(net["mean"]), score_champion=score_champion
        )
        mlflow.set_tags({"model_version": mv, "champion": str(tracked.champion).lower()})
    return tracked


def register_model_tags(client: Any, name: str, version: str, *, dataset_version: str, rho: int, patch_size: int,
                        test_mace: float) -> None:
    """Tag a registered version with its dataset and test score (see the module docstring)."""
    tags = {
        "dataset_version": dataset_version,
        "test_dataset_version": dataset_version,
        "rho": str(rho),
        "patch_size": str(patch_size),
        "test_mace": f"{test_mace:.6f}",
        f"test_mace.{dataset_version}": f"{test_mace:.6f}",
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def promote_if_better(
    client: Any,
    name: str,
    version: str,
    dataset_version: str,
    test_mace: float,
    score_champion: Callable[[str], float] | None = None,
    alias: str = CHAMPION,
) -> tuple[bool, str]:
    """Apply the champion rule of the module docstring; returns ``(became_champion, reason)``.

    ``score_champion(champion_version)`` scores the current champion on the new version's test
    pairs (rule 3); without it a champion with no score on ``dataset_version`` is kept.
    """
    from mlflow.exceptions import MlflowException

    key = f"test_mace.{dataset_version}"
    try:
        champ = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champ = None
    if champ is None:
        decision, reason = True, "first version: no champion yet"
    elif str(champ.version) == str(version):
        decision, reason = True, "already champion"
    else:
        score = champ.tags.get(key)
        champ_mace: float | None = float(score) if score is not None else None
        if champ_mace is None and score_champion is not None:
            try:
                champ_mace = float(score_champion(str(champ.version)))
                client.set_model_version_tag(name, champ.version, key, f"{champ_mace:.6f}")
            except Exception as exc:  # noqa: BLE001 - not comparable: keep the champion
                champ_mace = None
                why = strip_credentials(f"{type(exc).__name__}: {exc}")[:200]
                reason = f"kept v{champ.version}: it cannot be scored on dataset {dataset_version} ({why})"
        if champ_mace is None:
            decision = False
            if score_champion is None:
                reason = f"kept v{champ.version}: it has no test MACE on dataset {dataset_version}"
        elif test_mace < champ_mace:
            decision = True
            reason = f"test MACE {test_mace:.4f} < champion v{champ.version}'s {champ_mace:.4f} on dataset {dataset_version}"
        else:
            decision = False
            reason = f"test MACE {test_mace:.4f} >= champion v{champ.version}'s {champ_mace:.4f} on dataset {dataset_version}"
    if decision:
        client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, version, "promotion", reason)
    return decision, reason


# ------------------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu"):
    """A HomographyNet from a local checkpoint file, read with ``torch.load(weights_only=True)``.

    Accepts ``{"model"|"state_dict"|"model_state_dict"|"model_state": state_dict, ...}`` with the
    architecture in top-level ``width``/``patch_size`` or in a nested ``config`` mapping, or a bare
    state dict (architecture inferred from the tensor shapes).
    """
    import torch

    from homogen.model.network import HomographyNet

    try:
        obj = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} holds objects beyond tensors and plain containers; it is refused (loaded with "
            f"torch.load(weights_only=True), a checkpoint must not need full unpickling)"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} is not a HomographyNet checkpoint (got {type(obj).__name__})")
    state = None
    for k in ("model", "state_dict", "model_state_dict", "model_state"):
        if isinstance(obj.get(k), Mapping):
            state = obj[k]
            break
    meta: dict[str, Any] = {}
    if state is None:
        state = obj
    else:
        for src in (obj.get("config"), obj.get("train_config"), obj.get("model_config"), obj):
            if isinstance(src, Mapping):
                for k in ("width", "patch_size", "dropout"):
                    if k in src and k not in meta and isinstance(src[k], (int, float)):
                        meta[k] = src[k]
    w0 = state.get("features.0.0.weight")
    if w0 is None:
        raise ValueError(f"{path} holds no HomographyNet weights (no 'features.0.0.weight')")
    if "width" not in meta:
        meta["width"] = w0.shape[0] / 64.0
    if "patch_size" not in meta:
        lin = [v for k, v in state.items() if k.startswith("head.") and k.endswith(".weight") and v.ndim == 2][0]
        c_last = [v for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4][-1].shape[0]
        meta["patch_size"] = int(round(math.sqrt(lin.shape[1] / c_last))) * 8
    net = HomographyNet(width=float(meta["width"]), patch_size=int(meta["patch_size"]))
    net.load_state_dict(state)
    return net.eval()


def load_model(uri: str, tracking_uri: str | None = None, map_location: str = "cpu"):
    """Load a HomographyNet (eval mode) from a local checkpoint file, a local MLflow model folder,
    ``models:/homographynet@champion`` / ``models:/NAME/VERSION``, or a run URI ``runs:/RUN_ID[/model]``.

    MLflow URIs are resolved against :func:`resolve_tracking_uri` (``tracking_uri`` argument first).
    """
    uri = os.fspath(uri)
    if os.path.isfile(uri):
        return load_checkpoint(uri, map_location=map_location)
    if os.path.isdir(uri):
        if not os.path.isfile(os.path.join(uri, "MLmodel")):
            raise ValueError(f"{uri} is a folder but not an MLflow model (no MLmodel file)")
        return load_model_folder(uri, map_location=map_location)
    if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
        uri = uri.rstrip("/") + "/model"
    if "://" not in uri and not uri.startswith(("models:/", "runs:/")):
        raise ValueError(f"no checkpoint file {uri!r}, and it is not an MLflow URI (models:/NAME@ALIAS, runs:/RUN_ID)")
    import mlflow.artifacts

    setup_tracking(tracking_uri, experiment=None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return load_model_folder(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp), map_location)
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"cannot load model {strip_credentials(uri)} from {strip_credentials(resolve_tracking_uri(tracking_uri))}: "
                            f"{strip_credentials(str(exc))[:300]}") from None


def load_model_folder(folder: str | os.PathLike, map_location: str = "cpu"):
    """The HomographyNet of a local MLflow pytorch model folder (what ``log_training_run`` logs).

    ``mlflow.pytorch.load_model`` would unpickle ``data/model.pth`` in full, running any code a
    tampered file holds. Here it goes through ``torch.load(weights_only=True)``, which admits only
    tensors, plain containers and the module classes a HomographyNet is built of.

    Raises:
        ValueError: no ``data/model.pth``, or the file needs anything else to unpickle (refused).
    """
    import torch

    from homogen.model.network import HomographyNet

    weights = os.path.join(os.fspath(folder), "data", "model.pth")
    if not os.path.isfile(weights):
        raise ValueError(f"{folder} is not a HomographyNet MLflow model (no data/model.pth)")
    classes = sorted({type(m) for m in HomographyNet(width=0.125).modules()}, key=lambda c: c.__qualname__)
    try:
        with torch.serialization.safe_globals(classes):
            net = torch.load(weights, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{weights} is refused: it needs more than a HomographyNet's classes to unpickle "
            f"(torch.load(weights_only=True): {str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(net, HomographyNet):
        raise ValueError(f"{weights} holds a {type(net).__name__}, not a HomographyNet")
    return net.eval()
