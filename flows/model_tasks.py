"""Prefect tasks over the model package: train, evaluate, register.

Each calls one ``model`` function and adds logging and artifacts. They run in the flow's process
(training owns the whole machine or GPU; there is nothing to fan out), so they may pass live
objects (the trained network) to one another. ``task.fn`` is the plain function.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from homogen.flows.ui import run_logger
from homogen.model.evaluate import NETWORK, evaluate_methods, load_test_pairs
from homogen.model.tracking import TrackedRun, log_training_run
from homogen.model.train import TrainConfig, TrainResult, train


def epoch_line(record: dict[str, Any]) -> str:
    """One log line per epoch: loss, validation MACE, speed."""
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val MACE {record['val_mace']:.3f} px "
        f"(median {record['val_median']:.3f}, p95 {record['val_p95']:.3f}), {record['samples_per_s']:.0f} samples/s"
    )


@task(name="train", cache_policy=NO_CACHE)
def train_task(uri: str, config: TrainConfig, progress_key: str | None = None) -> TrainResult:
    """Train HomographyNet on the store at ``uri`` (checkpoints under the config's folder); logs every epoch.

    With ``progress_key`` a progress artifact shows the epochs done.
    """
    log = run_logger()
    artifact = create_progress_artifact(0.0, key=progress_key, description="training epochs done") if progress_key else None

    def on_epoch(record: dict[str, Any]) -> None:
        log.info(epoch_line(record))
        if artifact is not None:
            update_progress_artifact(artifact, min(100.0, 100.0 * record["epoch"] / config.epochs))

    result = train(uri, config, progress=False, on_epoch=on_epoch)
    log.info("trained on %s: best val MACE %.3f px at epoch %s, device %s", result.dataset_version,
             result.best_val_mace, result.best_epoch, result.device)
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(uri: str, model: Any, methods: tuple[str, ...], limit: int | None = None) -> dict[str, Any]:
    """Score the network and the baselines on the same test pairs (the first ``limit`` of the test split).

    Returns ``{"pairs": uint8 (n,2,P,P), "offsets": f32 (n,8), "results": {method: summary}}``.
    """
    pairs, offsets = load_test_pairs(uri, split="test", limit=limit)
    if not len(pairs):
        raise ValueError(f"store {uri} has no test pairs to evaluate on: use more images or a larger test_fraction")
    results = evaluate_methods(pairs, offsets, methods=methods, model=model)
    return {"pairs": pairs, "offsets": offsets, "results": results}


@task(name="register", cache_policy=NO_CACHE)
def register_task(
    result: TrainResult,
    uri: str,
    evaluation: dict[str, Any],
    config: TrainConfig,
    tracking_uri: str | None,
    experiment: str,
    model_name: str,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrackedRun:
    """Log the run to MLflow (params, dataset input, metrics, artifacts), register the model, apply the champion rule."""
    baselines = {k: v for k, v in evaluation["results"].items() if k != NETWORK}
    tracked = log_training_run(
        result.model, uri, config=config, history=result.history,
        test_pairs=evaluation["pairs"], test_offsets=evaluation["offsets"], baselines=baselines,
        checkpoint=result.best_checkpoint, tracking_uri=tracking_uri, experiment=experiment,
        run_name=run_name, model_name=model_name, tags=tags,
    )
    run_logger().info(
        "registered %s version %s (run %s): %s", model_name, tracked.model_version, tracked.run_id, tracked.promotion
    )
    return tracked
