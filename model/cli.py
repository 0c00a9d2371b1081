"""``homogen train | evaluate | predict | lineage | datasets``: the torch and MLflow commands, plugged into the root CLI.

``homogen/cli.py`` calls :func:`register` through the ``homogen.cli`` entry-point group
(pyproject). Heavy imports (torch, MLflow) happen inside the commands, so ``homogen --help`` stays
fast.
"""

from __future__ import annotations

import contextlib
import time
from typing import List, Optional

import typer

from homogen.cli import fail as _fail

__all__ = ["register"]

DEFAULT_MODEL = "models:/homographynet@champion"


def _methods(values: List[str], network: bool = False, model_option: bool = True) -> list[str]:
    """The chosen method names; ``network``: a model is given, so ``network+refine`` is available.

    ``model_option``: the command has ``--model`` (evaluate), which the errors then point to.
    """
    from homogen.model.methods import METHODS, NETWORK_REFINE, check_methods

    out: list[str] = []
    for v in values:
        out += [m.strip() for m in v.split(",") if m.strip()]
    if out == ["none"]:
        return []
    if out == ["all"]:  # every registered method (and the network's refinement when there is a network)
        return [*METHODS, *([NETWORK_REFINE] if network else [])]
    todo = (
        f"give --model (e.g. --model {DEFAULT_MODEL})"
        if model_option
        else f"score it after training with `homogen evaluate STORE --model runs:/RUN_ID --methods {NETWORK_REFINE}`"
    )
    try:
        needs = "with --model" if model_option else "with homogen evaluate --model"
        return check_methods(out, network=network, hint=f": {todo}", needs=needs)
    except ValueError as exc:
        _fail(f"{exc} (or 'all', 'none')")


def _open(store: str):
    from homogen.stores import StoreError, open_dataset

    try:
        return open_dataset(store)
    except StoreError as exc:
        _fail(str(exc))


def _load(model: str, tracking_uri: Optional[str]):
    from homogen.model.loading import load_model
    from homogen.redaction import redact

    try:
        return load_model(model, tracking_uri=tracking_uri)
    except (ValueError, OSError, RuntimeError) as exc:  # TrackingError and CheckpointError are RuntimeErrors
        _fail(f"cannot load model {redact(model)}: {redact(str(exc))}")


def evaluate(
    store: str = typer.Argument(..., help="dataset store (path or URL)"),
    more_stores: Optional[List[str]] = typer.Argument(
        None,
        help="more stores of the same pairs at other photometric levels (generated with the same settings but "
        "--photometric; others are refused): adds a per-noise-level table",
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="models:/homographynet@champion, runs:/RUN_ID, an MLflow model folder or a checkpoint .pt",
    ),
    methods: List[str] = typer.Option(
        ["identity,orb,sift,ecc"],
        "--methods",
        help="comma-separated or repeated: identity, orb, sift, ecc, direct-mse, direct-ncc; METHOD+refine "
        "(e.g. sift+refine, network+refine with --model); 'all' for every one; or 'none'",
    ),
    plots: Optional[str] = typer.Option(None, "--plots", help="write per-method error histograms and overlays here"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=1, help="only the first N pairs of the split"),
    split: str = typer.Option("test", help="test | val | train | all"),
    batch_size: int = typer.Option(64, min=1, help="network batch size"),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for OpenCV and torch (default: theirs)"),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow store for models:/ and runs:/ URIs (default: MLFLOW_TRACKING_URI, else work/mlflow.db)"
    ),
) -> None:
    """MACE (mean, median, p95), failures and ms/pair of the baselines and a model on the same pairs."""
    from homogen.model.data import load_split
    from homogen.model.evaluate import evaluate_methods, format_table

    chosen = _methods(methods, network=model is not None)
    if split not in ("test", "val", "train", "all"):
        _fail(f"unknown split {split!r}: use test, val, train or all")
    ds = _open(store)
    pairs, offsets = load_split(ds, None if split == "all" else split, limit=limit)
    if len(pairs) == 0:
        _fail(f"store {ds.uri} has no {split} pairs")
    from homogen.model.report import check_same_pairs, format_levels, noise_level, refinement_report

    others = [_open(s) for s in more_stores or []]
    for one in others:  # the per-noise-level table compares the same pairs, or nothing
        try:
            check_same_pairs(ds, one, None if split == "all" else split, limit)
        except ValueError as exc:
            _fail(str(exc))
    net = _load(model, tracking_uri) if model else None
    if not chosen and net is None:
        _fail("nothing to evaluate: give --model or at least one method")
    if threads:
        import cv2
        import torch

        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)
    by_level = {}
    for k, one in enumerate([ds, *others]):
        if k:
            pairs, offsets = load_split(one, None if split == "all" else split, limit=limit)
        results = evaluate_methods(
            pairs,
            offsets,
            methods=chosen,
            model=net,
            batch_size=batch_size,
            progress=True,
            return_predictions=plots is not None,
        )
        level = noise_level(one)
        typer.echo(
            f"dataset {one.version}, {split} split, {len(pairs)} pairs (rho {one.rho}, P {one.patch_size}, "
            f"photometric noise {level})\n"
        )
        typer.echo(format_table(results))
        gains = refinement_report(results)
        if gains:
            typer.echo("\nrefinement:\n" + "\n".join(gains))
        by_level[level if level not in by_level else f"{level} ({one.version})"] = results
        if plots:
            from pathlib import Path

            import numpy as np

            from homogen.model.artifacts import split_indices
            from homogen.model.plots import write_plots

            idx = np.arange(len(pairs)) if split == "all" else split_indices(one, split, len(pairs))
            folder = Path(plots) / (one.version if more_stores else "")
            typer.echo(f"wrote {len(write_plots(folder, one, results, pairs, idx))} plots to {folder}")
        typer.echo("")
    if len(by_level) > 1:
        typer.echo("by noise level:\n" + format_levels(by_level))


def predict(
    image_a: str = typer.Argument(..., help="image A (the reference frame)"),
    image_b: str = typer.Argument(..., help="image B"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="MLflow model URI or checkpoint .pt"),
    overlay: Optional[str] = typer.Option(
        None, "--overlay", "-o", help="write B warped into A's frame, blended with A, to this PNG"
    ),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow store (default: MLFLOW_TRACKING_URI, else work/mlflow.db)"
    ),
) -> None:
    """Print the 3x3 homography H mapping B's pixels to A's (a ~ H b, input pixel coordinates).

    Both images are read as grayscale and resized whole to the model's P x P (see model.predict).
    """
    import cv2

    from homogen.model.predict import format_homography, overlay as make_overlay, predict_homography, read_gray

    try:
        a, b = read_gray(image_a), read_gray(image_b)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    net = _load(model, tracking_uri)
    try:
        pred = predict_homography(net, a, b)
    except ValueError as exc:  # a model predicting NaN: no homography is printed, exit 1
        _fail(f"{model}: {exc}", code=1)
    typer.echo(f"H (maps B pixels to A pixels; A {a.shape[1]}x{a.shape[0]}, B {b.shape[1]}x{b.shape[0]}):")
    typer.echo(format_homography(pred.homography))
    typer.echo("patch offsets (px, P=%d): %s" % (pred.patch_size, " ".join(f"{v:.2f}" for v in pred.offsets)))
    if overlay:
        if not cv2.imwrite(overlay, make_overlay(a, b, pred.homography)):
            _fail(f"could not write {overlay}")
        typer.echo(f"wrote {overlay}")


def train(
    store: str = typer.Argument(..., help="dataset store (path or URL)"),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(64, min=1, help="pairs per step and per process (global: N x this)"),
    lr: float = typer.Option(1e-3, help="Adam learning rate, as given for any --nproc-per-node (README)"),
    loss: str = typer.Option(
        "smooth_l1",
        help="smooth_l1 | mse (supervised, on the offsets) | photometric (unsupervised: A warped onto B, labels unread)",
    ),
    width: float = typer.Option(1.0, help="channel multiplier (1.0 = the paper's network)"),
    max_samples: Optional[int] = typer.Option(
        None,
        min=1,
        help="stop after this many training samples (all processes); --resume with more continues mid-epoch",
    ),
    patience: Optional[int] = typer.Option(5, min=1, help="early stopping patience (epochs)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    num_workers: int = typer.Option(0, min=0, help="loader processes (per training process)"),
    nproc_per_node: int = typer.Option(
        1,
        "--nproc-per-node",
        min=1,
        help="training processes on this machine (torch's elastic launcher + DistributedDataParallel; NCCL with "
        "one GPU each on CUDA, gloo on CPU); --batch-size is per process. Several machines: run this command "
        "under torchrun (README)",
    ),
    checkpoint_every: Optional[int] = typer.Option(
        None, min=1, help="also checkpoint every N steps inside an epoch (a stopped run resumes mid-epoch)"
    ),
    seed: int = typer.Option(0, min=0),
    checkpoint_dir: Optional[str] = typer.Option(None, help="default work/checkpoints/<dataset version>"),
    resume: bool = typer.Option(False, help="continue from checkpoint_dir/last.pt"),
    methods: List[str] = typer.Option(
        ["identity,orb,sift,ecc"], "--methods", help="baselines logged beside the model, or 'none'"
    ),
    track: bool = typer.Option(True, help="log to MLflow and register the model"),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow store (default: MLFLOW_TRACKING_URI, else work/mlflow.db)"
    ),
    experiment: Optional[str] = typer.Option(
        None, help="MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else homogen)"
    ),
    run_name: Optional[str] = typer.Option(None),
    limit: Optional[int] = typer.Option(None, min=1, help="score only the first N test pairs"),
) -> None:
    """Train HomographyNet on a store (selected on its val split), score it once beside the baselines on the
    test split, and log all of it to MLflow while it happens; register the model."""
    from pydantic import ValidationError

    from homogen.model.evaluate import NETWORK, format_table, score_test
    from homogen.model.train import TrainConfig, train as run_train

    chosen = _methods(methods, model_option=False)
    started = time.time()
    ds = _open(store)
    try:
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            width=width,
            max_samples=max_samples,
            patience=patience,
            device=device,
            num_workers=num_workers,
            nproc_per_node=nproc_per_node,
            checkpoint_every=checkpoint_every,
            seed=seed,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            patch_size=ds.patch_size,  # the network takes the store's patches
        )
    except ValidationError as exc:
        from homogen.param_errors import describe_errors

        _fail(describe_errors(exc))
    from homogen.model.distributed import is_main, launched_by_torchrun, process_group

    group = contextlib.ExitStack()  # under torchrun (several machines): join its group; rank 0 does the rest
    if launched_by_torchrun():
        cfg = cfg.model_copy(update={"device": group.enter_context(process_group(cfg.device))})
        if not is_main():
            with group:
                _train(run_train, ds, cfg, None, quiet=True)
            return
    if not track:  # train() refuses what needs no training (train.preflight) before it trains; _train says so
        try:
            result = _train(run_train, ds, cfg, None)
            scores = score_test(ds, result.model, chosen, limit=limit, progress=True)
        except KeyboardInterrupt:
            _interrupted(ds, cfg, started, None)
        typer.echo(format_table(scores.summary()))
        return
    opened: list = []  # the MLflow run, once open
    try:
        registered, scores = _tracked(run_train, ds, cfg, chosen, limit, tracking_uri, experiment, run_name, opened)
    except KeyboardInterrupt:
        _interrupted(ds, cfg, started, opened[0].run_id if opened else None)
    (run,) = opened
    typer.echo(format_table(scores.summary()))
    typer.echo(
        f"run {run.run_id}: model {run.model_name} v{registered.model_version}"
        f"{' is now champion' if registered.champion else ''} ({registered.promotion}); "
        f"test MACE {scores.results[NETWORK]['mean']:.3f} px"
    )


def _interrupted(ds, cfg, started: float, run_id: str | None) -> None:
    """Ctrl-C during ``homogen train``: one line saying what is kept and how to go on, exit 130 (128 + SIGINT).

    ``train`` writes ``last.pt`` atomically after every epoch (and every ``--checkpoint-every`` steps),
    and ``--resume`` continues from it; one written before this run started is another run's.
    """
    from homogen.model.train import LAST, checkpoint_dir

    last = checkpoint_dir(ds, cfg) / LAST
    try:
        written = last.stat().st_mtime
    except OSError:
        written = None
    mlflow = (
        f"MLflow run {run_id} is marked KILLED and no model was registered" if run_id else "no model was registered"
    )
    if written is not None and written >= started:
        kept = (
            f"the last checkpoint is {last} (written {time.strftime('%H:%M:%S', time.localtime(written))}); {mlflow}: "
            f"re-run the same command with --resume to continue from it"
        )
    else:
        kept = (
            f"stopped before this run wrote a checkpoint, so nothing was saved; {mlflow}: re-run the same command "
            f"to start again"
        )
    typer.secho(f"\ninterrupted: {kept}", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(130)


def _tracked(run_train, ds, cfg, chosen, limit, tracking_uri, experiment, run_name, holder: list):
    """Train and score inside an MLflow run (appended to ``holder`` as soon as it is open); returns
    (the registration, the test scores)."""
    from homogen.model.evaluate import score_test
    from homogen.model.mlflow_run import TrainingRun
    from homogen.model.tracking import TrackingError, setup_tracking
    from homogen.redaction import redact

    stack = contextlib.ExitStack()
    try:  # fail before hours of training, not after; TrainingRun runs train.preflight before it opens a run
        run = stack.enter_context(
            TrainingRun(
                ds, cfg, tracking_uri=tracking_uri, experiment=experiment, run_name=run_name, source="homogen train"
            )
        )
    except TrackingError as exc:
        _fail(f"{exc}; or pass --no-track")
    except (ValueError, RuntimeError) as exc:  # IncompatibleStoreError, NoValidationSplitError, CheckpointError
        _fail(redact(str(exc)))
    holder.append(run)
    with stack:  # the run closes when this block ends: FINISHED, KILLED on Ctrl-C, or FAILED on any other exception
        result = _train(run_train, ds, cfg, run.log_epoch)
        ckpt = result.best_checkpoint or result.last_checkpoint
        try:
            run.log_result(result)
            scores = score_test(ds, result.model, chosen, limit=limit, progress=True, version=result.dataset_version)
            run.log_test(scores)
            registered = run.register(result.model, scores)
        except Exception as exc:  # noqa: BLE001 - the checkpoint is safe on disk; say where
            why = f"evaluation or MLflow logging failed ({redact(str(exc))[:300]})"
            try:  # a store that went away is the likeliest cause: name it
                setup_tracking(tracking_uri, experiment=None)
            except TrackingError as lost:
                why = str(lost)
            _fail(f"{why}; the checkpoint is kept at {ckpt}", code=1)
    return registered, scores


def _train(run_train, ds, cfg, on_epoch, quiet: bool = False):
    """Train, turning bad input into a one-line error; prints the outcome (``quiet``: neither)."""
    from homogen.redaction import redact

    try:
        result = run_train(ds, cfg, progress=not quiet, on_epoch=on_epoch)
    except (ValueError, RuntimeError) as exc:
        _fail(redact(str(exc)))
    if quiet:
        return result
    ckpt = result.best_checkpoint or result.last_checkpoint
    typer.echo(f"trained: best val MACE {result.best_val_mace:.3f} px at epoch {result.best_epoch}; checkpoint {ckpt}")
    return result


def lineage(
    ref: str = typer.Argument(
        ..., help="a dataset version (or a store, for its version), or a model: models:/NAME/N, models:/NAME@champion"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the answer as JSON"),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow store (default: MLFLOW_TRACKING_URI, else work/mlflow.db)"
    ),
) -> None:
    """Which runs and model versions trained, validated and tested on a dataset version (with their test MACE
    and the champion); or which dataset versions a model version saw, and where each store lives.

    Exit 1 when the tracking store records nothing for a dataset version.
    """
    import json

    from homogen.model.lineage import LineageError, dataset_lineage, dataset_version_of, model_lineage
    from homogen.model.tracking import TrackingError

    try:
        if ref.startswith("models:/"):
            answer = model_lineage(ref, tracking_uri)
        else:
            answer = dataset_lineage(dataset_version_of(ref), tracking_uri)
    except (LineageError, TrackingError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(answer.to_dict(), indent=2) if as_json else answer.to_text())
    if not getattr(answer, "found", True):
        raise typer.Exit(1)


def datasets(
    stores: Optional[str] = typer.Option(
        None, "--stores", help="also list the stores under this folder (e.g. work/datasets), with their models"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the list as JSON"),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow store (default: MLFLOW_TRACKING_URI, else work/mlflow.db)"
    ),
) -> None:
    """The dataset versions the tracking store knows (version, recipe, pairs, store, models trained on it), newest
    first; with --stores DIR, also the stores present under DIR."""
    import json

    from homogen.lineage.catalog import find_stores, format_stores
    from homogen.model.lineage import LineageError, dataset_versions, format_datasets
    from homogen.model.tracking import TrackingError

    found = None
    if stores is not None:
        try:
            found = find_stores(stores)
        except OSError as exc:
            _fail(str(exc))
    try:
        rows = dataset_versions(tracking_uri)
    except (LineageError, TrackingError) as exc:
        if found is None:
            _fail(str(exc))
        rows, missing = None, str(exc)  # the folder can still be listed
    if as_json:
        out = {"tracking": [r.to_dict() for r in rows] if rows is not None else None}
        if found is not None:
            out["stores"] = [r.to_dict() for r in found]
        typer.echo(json.dumps(out if found is not None else out["tracking"], indent=2))
        return
    typer.echo(format_datasets(rows) if rows is not None else f"tracking store: {missing}")
    if found is not None:
        models = {r.version: r.models for r in rows} if rows is not None else None
        typer.echo(f"\nstores under {stores} (newest first):\n" + format_stores(stores, found, models))


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate``, ``predict``, ``lineage`` and ``datasets`` to the root ``homogen`` app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("predict")(predict)
    app.command("lineage")(lineage)
    app.command("datasets")(datasets)
