"""Prefect tasks over the model package: train, score the test split, register.

Each calls one ``homogen.model`` function and adds logging and artifacts. They run in the flow's
process (training owns the whole machine or GPU; there is nothing to fan out), so they pass live
objects (the opened store, the MLflow run, the trained network) to one another. ``task.fn`` is the
plain function.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from homogen.flows.ui import run_logger
from homogen.model.evaluate import NETWORK, TestScores, score_test
from homogen.model.mlflow_run import Registered, TrainingRun
from homogen.model.train import TrainConfig, TrainResult, train
from homogen.store import Dataset


def epoch_line(record: dict[str, Any]) -> str:
    """One log line per epoch: loss, validation MACE, speed."""
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val MACE {record['val_mace']:.3f} px "
        f"(median {record['val_median']:.3f}, p95 {record['val_p95']:.3f}), {record['samples_per_s']:.0f} samples/s"
    )


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    dataset: str | Dataset,
    config: TrainConfig,
    progress_key: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train HomographyNet on the store ``dataset`` (opened, path or URL), selected on its val split; logs every epoch.

    ``on_epoch`` (e.g. the MLflow run's ``log_epoch``) is called after each epoch; with
    ``progress_key`` a progress artifact shows the epochs done.
    """
    log = run_logger()
    artifact = (
        create_progress_artifact(0.0, key=progress_key, description="training epochs done") if progress_key else None
    )

    def each_epoch(record: dict[str, Any]) -> None:
        log.info(epoch_line(record))
        if on_epoch is not None:
            on_epoch(record)
        if artifact is not None:
            update_progress_artifact(artifact, min(100.0, 100.0 * record["epoch"] / config.epochs))

    result = train(dataset, config, progress=False, on_epoch=each_epoch)
    log.info(
        "trained on %s: best val MACE %.3f px at epoch %s, device %s",
        result.dataset_version,
        result.best_val_mace,
        result.best_epoch,
        result.device,
    )
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    dataset: str | Dataset, model: Any, methods: tuple[str, ...], limit: int | None = None, version: str | None = None
) -> TestScores:
    """Score the network and the methods on the same test pairs (the first ``limit`` of the test split), once.

    ``version``: the dataset version trained on; a store regenerated since is refused (nothing registered).
    """
    scores = score_test(dataset, model, methods, limit=limit, version=version)
    run_logger().info("test MACE %.3f px on %d pairs", scores.results[NETWORK]["mean"], len(scores.pairs))
    return scores


@task(name="register", cache_policy=NO_CACHE)
def register_task(run: TrainingRun, result: TrainResult, scores: TestScores) -> Registered:
    """Log the test scores and evaluation files to the run, log and register the model, apply the champion rule."""
    run.log_result(result)
    run.log_test(scores)
    registered = run.register(result.model, scores)
    run_logger().info(
        "registered %s version %s (run %s): %s",
        run.model_name,
        registered.model_version,
        run.run_id,
        registered.promotion,
    )
    return registered
