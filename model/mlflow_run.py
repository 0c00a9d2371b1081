"""The MLflow run of one training, recorded while it happens.

::

    with TrainingRun(ds, cfg, source="homogen train") as run:     # run opens: params, datasets, model id
        result = train(ds, cfg, on_epoch=run.log_epoch)            # a step of metrics per epoch, live
        scores = score_test(ds, result.model, methods)             # the test split, scored once
        run.log_test(scores)                                       # test metrics + evaluation/ files
        run.register(result.model, scores)                         # pt2 model, version, champion rule
                                                                   # run closes: its duration = training

What a run holds:

- params: the whole training config, flat (``a.b``), plus ``dataset.*``; credentials removed;
- tags: ``dataset_version``, ``store_uri``, ``mlflow.source.name`` = ``source`` (this project's
  command or flow, not the process that happens to host it), ``device``, ``checkpoint``,
  ``model_version``, ``champion`` (``true`` when registration made it champion; set to ``false``
  when the alias moves to a later version, :mod:`homogen.model.registry`);
- inputs: the store as three MLflow datasets (digest = dataset version, source = store URI):
  ``homogen-<version>/train`` (context ``training``), ``/val`` (``validation``) and ``/test``
  (``evaluation``), and the LoggedModel created when the run opens;
- metrics, per epoch as it ends (step = epoch): ``train_loss``, ``val_mace``, ``val_mace_median``,
  ``val_mace_p95``, ``lr``, ``samples_per_s``; the ``val_*`` linked to the val dataset and to the
  model, so the model's page shows them;
- metrics of the selection (step 0, :meth:`TrainingRun.log_result`): ``best_val_mace`` and
  ``best_epoch``, the epoch whose weights are the model (``val_mace``'s last point is the last
  epoch's, not necessarily the selected one's);
- metrics after training (step 0): ``test_mace``, ``test_mace_median``, ``test_mace_p95``,
  ``test_ms_per_pair``, and ``<method>_mace``, ``_mace_median``, ``_mace_p95``, ``_failures``,
  ``_ms_per_pair`` per other method, same pairs; linked to the test dataset, and (by MLflow when
  the model is logged) to the model;
- MLflow system metrics (CPU, memory, GPU when present; needs ``psutil``) every few seconds;
- artifacts ``evaluation/`` (:mod:`homogen.model.artifacts`) and the model
  (:mod:`homogen.model.mlflow_model`), registered as ``model_name`` (:mod:`homogen.model.registry`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from homogen.model.lineage import dataset_params, store_location
from homogen.model.registry import (
    MODEL_NAME,
    NotRegistrable,
    check_registrable,
    promote_if_better,
    register_model_tags,
)
from homogen.model.tracking import experiment_name, setup_tracking
from homogen.redaction import redact

__all__ = ["Registered", "TrainingRun", "config_params", "dataset_input"]

log = logging.getLogger(__name__)

_CONTEXTS = {"train": "training", "val": "validation", "test": "evaluation"}
_EPOCH_METRICS = {
    "train_loss": "train_loss",
    "val_mace": "val_mace",
    "val_median": "val_mace_median",
    "val_p95": "val_mace_p95",
    "lr": "lr",
    "samples_per_s": "samples_per_s",
}
"""Epoch record key (:func:`homogen.model.train.train`) -> logged metric name."""


def config_params(config: Any) -> dict[str, Any]:
    """A config (pydantic model, dataclass or mapping, nested) as flat ``a.b`` params, credentials removed."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        elif hasattr(value, "__dataclass_fields__"):
            import dataclasses

            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        if isinstance(value, (list, tuple)):
            value = json.dumps([v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for v in value])
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        out[prefix] = redact(value if isinstance(value, (int, float, bool, str, type(None))) else str(value))

    walk("", config)
    return out


def _source(uri: str):
    """MLflow's dataset source for a store URI (local, s3, http...), or a plain one for other schemes."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": both are local files
            return resolve_dataset_source(uri)
    except Exception:  # noqa: BLE001 - a scheme MLflow has no resolver for (gs://, memory://, ...)
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        return HTTPDatasetSource(uri)  # a URL record; MLflow never fetches it


def dataset_input(ds: Any, split: str):
    """The MLflow dataset of one split of a store: name ``homogen-<version>/<split>``, digest = version.

    The schema lists the arrays the model reads: pairs uint8 (-1,2,P,P), offsets float32 (-1,8).
    """
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    p = int(ds.patch_size)
    schema = Schema(
        [
            TensorSpec(np.dtype(np.uint8), (-1, 2, p, p), "pairs"),
            TensorSpec(np.dtype(np.float32), (-1, 8), "offsets"),
        ]
    )
    return MetaDataset(
        source=_source(store_location(ds)), name=f"homogen-{ds.version}/{split}", digest=str(ds.version), schema=schema
    )


def _world_params(config: Any) -> dict[str, int]:
    """``world_size`` (training processes), ``batch_size_per_rank`` and ``global_batch_size`` of a TrainConfig."""
    if not hasattr(config, "nproc_per_node"):
        return {}
    from homogen.model.distributed import launched_by_torchrun  # torchrun on several machines: its world

    world = int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else int(config.nproc_per_node)
    return {
        "world_size": world,
        "batch_size_per_rank": config.batch_size,
        "global_batch_size": world * config.batch_size,
    }


@dataclass
class Registered:
    """What :meth:`TrainingRun.register` did."""

    model_uri: str
    model_version: str
    champion: bool
    promotion: str


class TrainingRun:
    """The MLflow run of one training (module docstring). Use as a context manager.

    Args:
        dataset: the opened store trained on.
        config: the training config (logged flat as params).
        tracking_uri / experiment: see :func:`homogen.model.tracking.setup_tracking`.
        source: what started the run (``mlflow.source.name``), e.g. ``"homogen train"``.
        system_metrics: also log MLflow's system metrics (CPU, memory, GPU) while the run is open.

    Raises:
        TrackingError: on entering, when the store is unreachable (before any training).
        ValueError, CheckpointError: on entering, when ``config`` is a
            :class:`~homogen.model.config.TrainConfig` that :func:`homogen.model.train.preflight`
            refuses for this dataset (no val pairs, a resume checkpoint of another run, ...): before
            the run is opened, so no FAILED run is left behind.
    """

    def __init__(
        self,
        dataset: Any,
        config: Any = None,
        *,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        model_name: str = MODEL_NAME,
        tags: Mapping[str, str] | None = None,
        source: str = "homogen",
        system_metrics: bool = True,
    ) -> None:
        self.ds = dataset
        self.config = config
        self.tracking_uri = tracking_uri
        self.experiment = experiment_name(experiment or None)
        self.run_name = run_name
        self.model_name = model_name
        self.tags = dict(tags or {})
        self.source = source
        self.system_metrics = system_metrics
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_id: str | None = None
        self._client = None
        self._datasets: dict[str, Any] = {}
        self._test_logged = False

    # ------------------------------------------------------------------------------ open / close

    def __enter__(self) -> "TrainingRun":
        import mlflow
        from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Param
        from mlflow.tracking import MlflowClient

        from homogen.model.config import TrainConfig
        from homogen.model.train import preflight

        if isinstance(self.config, TrainConfig):  # whatever would refuse the training refuses it before the run opens
            preflight(self.ds, self.config)
        uri = setup_tracking(self.tracking_uri, self.experiment)
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.experiment_id = self._client.get_experiment_by_name(self.experiment).experiment_id
        version = str(self.ds.version)
        tags = {
            "dataset_version": version,
            "store_uri": store_location(self.ds),
            "mlflow.source.name": self.source,
            "mlflow.source.type": "LOCAL",
            **({"loss": self.config.loss} if getattr(self.config, "loss", None) else {}),  # supervised or photometric
            **self.tags,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # psutil/pynvml notices when there is no GPU
            run = mlflow.start_run(
                experiment_id=self.experiment_id,
                run_name=self.run_name,
                tags=tags,
                log_system_metrics=self.system_metrics,
            )
        self.run_id = run.info.run_id
        params = config_params(self.config) if self.config is not None else {}
        params.update(
            {
                "dataset.version": version,
                "dataset.rho": int(self.ds.rho),
                "dataset.patch_size": int(self.ds.patch_size),
                "dataset.num_pairs": len(self.ds),
                **_world_params(self.config),
            }
        )
        params.update(dataset_params(self.ds))  # the recipe, for `homogen datasets` (homogen.model.lineage)
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)
        self._datasets = {split: dataset_input(self.ds, split) for split in _CONTEXTS}
        model = self._client.create_logged_model(
            self.experiment_id,
            name="model",
            source_run_id=self.run_id,
            params={k: str(v) for k, v in list(params.items())[:100]},
        )
        self.model_id = model.model_id
        self._client.log_inputs(
            self.run_id,
            datasets=[
                DatasetInput(d._to_mlflow_entity(), [InputTag("mlflow.data.context", _CONTEXTS[s])])
                for s, d in self._datasets.items()
            ],
            models=[LoggedModelInput(self.model_id)],
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        import mlflow
        from mlflow.entities import LoggedModelStatus

        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)  # Ctrl-C: stopped, not failed
        status = "FINISHED" if exc_type is None else "KILLED" if interrupted else "FAILED"
        errors: list[Exception] = []
        try:
            if (
                self.model_id is not None
                and self._client.get_logged_model(self.model_id).status == LoggedModelStatus.PENDING
            ):
                self._client.finalize_logged_model(self.model_id, LoggedModelStatus.FAILED)  # never registered
        except Exception as err:  # noqa: BLE001 - collected, see below
            errors.append(err)
        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                mlflow.end_run(status)  # also stops the system-metrics thread
            else:
                self._client.set_terminated(self.run_id, status)
        except Exception as err:  # noqa: BLE001
            errors.append(err)
        if errors and exc_type is None:
            raise errors[0]
        for err in errors:  # never hide the error that ended the run behind these
            log.warning("could not close MLflow run %s: %s", self.run_id, redact(f"{type(err).__name__}: {err}")[:300])

    # ------------------------------------------------------------------------------ logging

    def _metrics(self, values: Mapping[str, float], step: int, split: str | None = None, model: bool = False) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ds = self._datasets.get(split) if split else None
        out = [
            Metric(
                k,
                float(v),
                now,
                step,
                model_id=self.model_id if model else None,
                dataset_name=ds.name if ds else None,
                dataset_digest=ds.digest if ds else None,
            )
            for k, v in values.items()
            if v is not None and math.isfinite(float(v))
        ]
        if out:
            self._client.log_batch(self.run_id, metrics=out, synchronous=True)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Log one epoch's record of :func:`homogen.model.train.train` (its ``on_epoch`` hook), step = epoch.

        A tracking store that stops answering does not stop training: the failure is logged as a
        warning (URI without credentials) and training goes on; the checkpoints keep the history.
        """
        step = int(record["epoch"])
        values = {name: record[key] for key, name in _EPOCH_METRICS.items() if key in record}
        try:
            self._metrics({k: v for k, v in values.items() if not k.startswith("val_")}, step)
            self._metrics({k: v for k, v in values.items() if k.startswith("val_")}, step, "val", model=True)
        except Exception as exc:  # noqa: BLE001 - hours of training outweigh one epoch's metrics
            log.warning(
                "could not log epoch %d to MLflow run %s: %s",
                step,
                self.run_id,
                redact(f"{type(exc).__name__}: {exc}")[:300],
            )

    def log_test(self, scores: Any, grid_pairs: int = 8) -> None:
        """Log the test scores (the network's and every method's) and the ``evaluation/`` artifacts."""
        from homogen.model.artifacts import write_evaluation
        from homogen.model.evaluate import NETWORK

        self._metrics({"test_pairs": len(scores.pairs)}, 0)
        for name, r in scores.results.items():
            prefix = "test" if name == NETWORK else name
            values = {
                f"{prefix}_mace": r["mean"],
                f"{prefix}_mace_median": r["median"],
                f"{prefix}_mace_p95": r["p95"],
                f"{prefix}_ms_per_pair": r["ms_per_pair"],
            }
            if name != NETWORK:
                values[f"{prefix}_failures"] = r["failures"]
            # Step 0, not linked to the model here: logging the model links the run's step-0 metrics to it.
            self._metrics(values, 0, "test")
        with tempfile.TemporaryDirectory() as tmp:
            write_evaluation(tmp, self.ds, scores, grid_pairs=grid_pairs)
            self._client.log_artifacts(self.run_id, tmp, artifact_path="evaluation")
        self._test_logged = True

    def log_result(self, result: Any) -> None:
        """Log what training selected (a :class:`~homogen.model.train.TrainResult`): the metrics
        ``best_val_mace`` and ``best_epoch`` (step 0) and the tags ``device``, ``best_epoch``, ``checkpoint``."""
        best_epoch = getattr(result, "best_epoch", None)
        self._metrics(
            {"best_val_mace": result.best_val_mace, "best_epoch": best_epoch},
            0,
            "val",
        )
        ckpt = result.best_checkpoint or result.last_checkpoint
        self.set_tags({"device": result.device, "best_epoch": best_epoch, "checkpoint": ckpt})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, redact(str(v)))

    # ------------------------------------------------------------------------------ the model

    def register(self, model: Any, scores: Any, batch_size: int = 64) -> Registered:
        """Log ``model`` (pt2, :mod:`homogen.model.mlflow_model`), register it, tag it, apply the champion rule.

        ``scores``: the run's :class:`~homogen.model.evaluate.TestScores` (its test MACE and pairs;
        the pairs also score the identity, and a champion that has no score on them, rules 1 and 3).

        Raises:
            NotRegistrable: the network's test MACE is not finite; nothing is logged or registered
                (the run ends FAILED, its checkpoint stays where training wrote it).
        """
        import mlflow

        from homogen.model.evaluate import NETWORK, predict_network
        from homogen.model.loading import load_model
        from homogen.model.metrics import pair_errors
        from homogen.model.mlflow_model import log_network

        from homogen.model.dataset_pin import check_unchanged

        version = str(self.ds.version)
        check_unchanged(self.ds, version, "registration")  # the run's dataset is still what the store holds
        p = int(self.ds.patch_size)
        n = len(scores.pairs)
        try:  # before anything is logged: a NaN network never becomes a version
            check_registrable(scores.results[NETWORK], n)
        except NotRegistrable as exc:
            self.set_tags({"not_registered": str(exc)})
            log.error("%s", exc)
            raise
        if not self._test_logged:
            self.log_test(scores)
        test_mace = float(scores.results[NETWORK]["mean"])
        identity_mace = float(pair_errors(np.zeros_like(scores.offsets), scores.offsets).mean())
        metadata = {
            "patch_size": p,
            "width": float(getattr(model, "width", 1.0)),
            "rho": int(self.ds.rho),
            "dataset_version": version,
            "test_mace": test_mace,
        }
        info = log_network(model, scores.pairs[:2], metadata, model_id=self.model_id)
        loss = {"loss": self.config.loss} if getattr(self.config, "loss", None) else {}
        store = {"store_uri": store_location(self.ds)}  # where the dataset lives, on the version's page too
        mv = mlflow.register_model(info.model_uri, self.model_name, tags={"dataset_version": version, **store, **loss})
        register_model_tags(
            self._client,
            self.model_name,
            str(mv.version),
            dataset_version=version,
            rho=int(self.ds.rho),
            patch_size=p,
            test_mace=test_mace,
            test_pairs=n,
            identity_mace=identity_mace,
        )

        def score_champion(champ_version: str) -> float:
            champ = load_model(f"models:/{self.model_name}/{champ_version}", tracking_uri=self.tracking_uri)
            if int(champ.patch_size) != p:
                raise ValueError(f"patch size {champ.patch_size} differs from the dataset's {p}")
            pred, _ = predict_network(champ, scores.pairs, batch_size=batch_size)
            return float(pair_errors(pred, scores.offsets).mean())

        champion, reason = promote_if_better(
            self._client,
            self.model_name,
            str(mv.version),
            version,
            test_mace,
            score_champion=score_champion,
            identity_mace=identity_mace,
            test_pairs=n,
        )
        self.set_tags({"model_version": mv.version, "champion": str(champion).lower()})
        return Registered(info.model_uri, str(mv.version), champion, reason)
