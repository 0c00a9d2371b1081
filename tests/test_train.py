"""Training runs on real generated stores: history, checkpoints, resume, refusals, stopping rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import homogen.model.train as training
from homogen.model.data import IncompatibleStoreError, load_split
from homogen.model.metrics import mace
from homogen.model.loading import load_model
from homogen.model.train import (
    CheckpointError,
    NoValidationSplitError,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    train,
)

from helpers import p32_store

# Small patches (P=32, rho=8) cut from real photographs keep every run to a fraction of a second.
FAST = dict(width=0.125, patch_size=32, batch_size=16, val_batch_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_store(path, val_fraction: float = 0.25) -> object:
    return p32_store(path, pairs_per_image=8, val_fraction=val_fraction, shard_size=4)


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """128 real pairs, P=32, zarr, with train, val and test images."""
    return _make_store(tmp_path_factory.mktemp("train") / "ds.zarr")


@pytest.fixture(scope="session")
def h5_store(tmp_path_factory):
    """The same pairs in an HDF5 store."""
    return _make_store(tmp_path_factory.mktemp("train-h5") / "ds.h5")


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_records_history_checkpoints_and_returns_a_cpu_model(store, tmp_path):
    seen = []
    cfg = TrainConfig(epochs=2, checkpoint_dir=str(tmp_path / "ck"), **FAST)
    result = train(store, cfg, progress=False, on_epoch=seen.append)

    n_train = store.split_counts()["train"]
    assert result.device == "cpu" and result.samples_seen == 2 * n_train
    assert [h["epoch"] for h in result.history] == [1, 2] and seen == result.history
    for record in result.history:
        assert {"epoch", "train_loss", "val_mace", "lr", "samples_per_s"} <= record.keys()
        assert np.isfinite(record["train_loss"]) and record["samples_per_s"] > 0
    assert not result.model.training
    assert all(p.device.type == "cpu" for p in result.model.parameters())

    # the returned model is the best checkpoint, and its MACE on the val split is the recorded one
    assert result.best_checkpoint.exists() and result.last_checkpoint.exists()
    assert same_weights(result.model.state_dict(), weights(result.best_checkpoint))
    pairs, offsets = load_split(store, "val")
    with torch.no_grad():
        pred = result.model(torch.from_numpy(pairs)).numpy()
    assert mace(pred, offsets) == pytest.approx(result.best_val_mace, rel=1e-5)
    assert result.best_val_mace == min(h["val_mace"] for h in result.history)

    last = load_checkpoint(result.last_checkpoint)
    assert last["epoch"] == 2 and last["dataset_version"] == store.version
    assert last["patch_size"] == 32 and last["config"]["epochs"] == 2
    assert {"optimizer", "scheduler", "scaler", "rng"} <= last.keys()
    assert not list((tmp_path / "ck").glob(".*tmp*"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("which", ["zarr", "h5"])
def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(which, store, h5_store, tmp_path):
    ds = store if which == "zarr" else h5_store
    full = train(ds, TrainConfig(epochs=3, checkpoint_dir=str(tmp_path / "full"), **FAST), progress=False)

    part = tmp_path / "part"
    train(ds, TrainConfig(epochs=1, checkpoint_dir=str(part), **FAST), progress=False)
    assert load_checkpoint(part / "last.pt")["epoch"] == 1
    epochs_run = []
    resumed = train(
        ds.uri,
        TrainConfig(epochs=3, checkpoint_dir=str(part), resume=True, **FAST),
        progress=False,
        on_epoch=lambda r: epochs_run.append(r["epoch"]),
    )
    assert epochs_run == [2, 3]  # continued after epoch 1, did not start over
    assert resumed.samples_seen == full.samples_seen
    assert resumed.history == [
        {**h, "samples_per_s": r["samples_per_s"]} for h, r in zip(full.history, resumed.history)
    ]
    assert same_weights(weights(part / "last.pt"), weights(full.last_checkpoint))
    assert same_weights(resumed.model.state_dict(), full.model.state_dict())


def test_training_reads_train_pairs_selects_on_val_pairs_and_never_reads_test_pairs(store, tmp_path, monkeypatch):
    counts = store.split_counts()
    assert min(counts["train"], counts["val"], counts["test"]) > 0
    requested = []
    real_make_loader = training.make_loader

    def recording_make_loader(ds, split, **kw):
        loader = real_make_loader(ds, split, **kw)
        requested.append((split, loader.dataset.num_samples()))
        return loader

    monkeypatch.setattr(training, "make_loader", recording_make_loader)
    result = train(store, TrainConfig(epochs=1, checkpoint_dir=str(tmp_path), **FAST), progress=False)
    assert requested == [("train", counts["train"]), ("val", counts["val"])]
    assert result.samples_seen == counts["train"]
    # the recorded validation MACE is the model's MACE on exactly the val pairs, not the test pairs
    for split, matches in (("val", True), ("test", False)):
        pairs, offsets = load_split(store, split)
        with torch.no_grad():
            err = mace(result.model(torch.from_numpy(pairs)).numpy(), offsets)
        assert (err == pytest.approx(result.best_val_mace, rel=1e-6)) is matches


def test_a_store_without_val_pairs_is_refused_before_training_saying_to_regenerate(tmp_path):
    ds = _make_store(tmp_path / "noval.zarr", val_fraction=0.0)
    assert ds.split_counts().get("val", 0) == 0
    with pytest.raises(NoValidationSplitError, match="no val pairs.*regenerate it from more images.*--val-fraction"):
        train(ds, TrainConfig(epochs=1, checkpoint_dir=str(tmp_path / "ck"), **FAST), progress=False)
    assert not (tmp_path / "ck").exists()  # nothing trained, nothing written


def _cli_train(args: list[str]):
    import typer
    from typer.testing import CliRunner

    from homogen.model.cli import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, ["train", *args])


def _mlflow_runs(uri: str) -> list:
    """Every run, of any status, in the MLflow store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_homogen_train_refuses_a_store_without_val_pairs_before_opening_an_mlflow_run(tmp_path):
    ds = _make_store(tmp_path / "noval.zarr", val_fraction=0.0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _cli_train(
        [
            ds.uri,
            "--tracking-uri",
            uri,
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--width",
            "0.125",
            "--methods",
            "none",
        ]
    )
    assert res.exit_code == 2, res.output
    assert "no val pairs" in res.output and "--val-fraction" in res.output and "more images" in res.output
    assert "installed homogen" not in res.output  # the schema is current: the store just has no val images
    assert _mlflow_runs(uri) == []  # no FAILED run left behind
    assert not (tmp_path / "ck").exists()


def test_homogen_train_resume_with_a_checkpoint_of_another_width_is_refused_before_opening_an_mlflow_run(
    store, tmp_path
):
    ck = tmp_path / "ck"
    train(store, TrainConfig(epochs=1, checkpoint_dir=str(ck), **FAST), progress=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _cli_train(
        [
            store.uri,
            "--tracking-uri",
            uri,
            "--checkpoint-dir",
            str(ck),
            "--resume",
            "--width",
            "0.25",
            "--methods",
            "none",
        ]
    )
    assert res.exit_code == 2, res.output
    assert "width=0.125" in res.output and "width=0.25" in res.output
    assert _mlflow_runs(uri) == []


def test_a_training_run_refuses_a_store_without_val_pairs_before_mlflow_holds_a_run(tmp_path):
    from homogen.model.mlflow_run import TrainingRun

    ds = _make_store(tmp_path / "noval.zarr", val_fraction=0.0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(NoValidationSplitError, match="no val pairs"):
        with TrainingRun(
            ds,
            TrainConfig(epochs=1, checkpoint_dir=str(tmp_path / "ck"), **FAST),
            tracking_uri=uri,
            system_metrics=False,
        ):
            train(ds, TrainConfig(epochs=1, checkpoint_dir=str(tmp_path / "ck"), **FAST), progress=False)
    assert _mlflow_runs(uri) == []


def test_resume_without_checkpoint_starts_afresh(store, tmp_path):
    result = train(store, TrainConfig(epochs=1, checkpoint_dir=str(tmp_path), resume=True, **FAST), progress=False)
    assert [h["epoch"] for h in result.history] == [1]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_refused_naming_the_file(store, tmp_path, damage):
    ck = tmp_path / "ck"
    train(store, TrainConfig(epochs=1, checkpoint_dir=str(ck), **FAST), progress=False)
    last = ck / "last.pt"
    data = last.read_bytes()
    last.write_bytes(b"not a checkpoint at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable") as err:
        train(store, TrainConfig(epochs=2, checkpoint_dir=str(ck), resume=True, **FAST), progress=False)
    assert str(last) in str(err.value)
    with pytest.raises(CheckpointError, match=str(last)):
        load_model(last)


def test_checkpoint_of_another_dataset_or_width_is_refused(store, tmp_path):
    ck = tmp_path / "ck"
    train(store, TrainConfig(epochs=1, checkpoint_dir=str(ck), **FAST), progress=False)
    with pytest.raises(CheckpointError, match=r"width=0.125.*width=0.25"):
        train(
            store, TrainConfig(epochs=2, checkpoint_dir=str(ck), resume=True, **{**FAST, "width": 0.25}), progress=False
        )
    payload = load_checkpoint(ck / "last.pt")
    save_checkpoint(ck / "last.pt", {**payload, "dataset_version": "0123456789ab"})
    with pytest.raises(CheckpointError, match=rf"0123456789ab.*{store.version}"):
        train(store, TrainConfig(epochs=2, checkpoint_dir=str(ck), resume=True, **FAST), progress=False)


def test_mismatched_patch_size_is_refused_before_training(store, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training, "train_one_epoch", must_not_run)
    ck = tmp_path / "ck"
    with pytest.raises(IncompatibleStoreError, match=r"patch_size 32.*patch_size 128.*TrainConfig\(patch_size=32\)"):
        train(store, TrainConfig(width=0.125, checkpoint_dir=str(ck)), progress=False)
    assert not ck.exists()


def test_sample_budget_stops_mid_epoch(store, tmp_path):
    result = train(store, TrainConfig(epochs=5, max_samples=40, checkpoint_dir=str(tmp_path), **FAST), progress=False)
    assert result.samples_seen == 40
    assert [h["samples"] for h in result.history] == [40]


def test_early_stopping_and_step_decay(store, tmp_path, monkeypatch):
    """Scripted validation MACE 5, 4, 4.5, 4.6: patience 2 stops after epoch 4, best is epoch 2."""
    scripted = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])

    def fake_evaluate(*args, **kwargs):
        v = next(scripted)
        return {"mean": v, "median": v, "p95": v, "failures": 0, "n": 1}

    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    best_kept = {}
    cfg = TrainConfig(epochs=10, patience=2, step_size=1, gamma=0.5, checkpoint_dir=str(tmp_path), **FAST)

    def snapshot(record):
        if record["epoch"] == 2:
            best_kept.update(weights(tmp_path / "best.pt"))

    result = train(store, cfg, progress=False, on_epoch=snapshot)
    assert [h["val_mace"] for h in result.history] == [5.0, 4.0, 4.5, 4.6]
    assert result.stopped_early and result.best_epoch == 2 and result.best_val_mace == 4.0
    assert [h["lr"] for h in result.history] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])
    assert same_weights(result.model.state_dict(), best_kept)
    assert not same_weights(best_kept, weights(result.last_checkpoint))


def test_mse_loss_trains_and_same_seed_repeats(store, tmp_path):
    runs = [
        train(
            store,
            TrainConfig(epochs=1, loss="mse", max_samples=32, checkpoint_dir=str(tmp_path / str(i)), **FAST),
            progress=False,
        )
        for i in range(2)
    ]
    assert np.isfinite(runs[0].history[0]["train_loss"])
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
    assert same_weights(runs[0].model.state_dict(), runs[1].model.state_dict())


def test_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(epoch=3)
    with pytest.raises(ValidationError):
        TrainConfig(loss="l1")
    assert TrainConfig().batch_size == 64 and TrainConfig().loss == "smooth_l1"


def test_amp_and_channels_last_paths_train(store, tmp_path):
    """The CUDA settings (autocast bf16 + channels_last) run on CPU too; the loss stays finite."""
    cfg = TrainConfig(epochs=1, max_samples=32, amp=True, channels_last=True, checkpoint_dir=str(tmp_path), **FAST)
    result = train(store, cfg, progress=False)
    assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(result.best_val_mace)
    assert result.samples_seen == 32
