"""A run pins its dataset version: a store regenerated during training stops it, and nothing is registered."""

from __future__ import annotations

import pytest

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.model.dataset_pin import DatasetChanged
from homogen.model.evaluate import score_test
from homogen.model.train import LAST, TrainConfig, load_checkpoint, train
from homogen.stores import open_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(width=0.125, patch_size=32, batch_size=16, val_batch_size=64)


def make(path, seed: int, overwrite: bool = False):
    generate(
        GenerateConfig(
            output=str(path),
            chunk_size=16,
            overwrite=overwrite,
            sampling=SamplingConfig(pairs_per_image=4, patch_size=32, rho=8, seed=seed),
            source=SourceConfig(max_images=16, test_fraction=0.25, val_fraction=0.25),
        ),
        progress=False,
    )
    return open_dataset(str(path))


def test_a_store_regenerated_during_training_stops_it_and_nothing_is_registered(tmp_path):
    from mlflow.tracking import MlflowClient

    from homogen.model.mlflow_run import TrainingRun

    store = tmp_path / "ds.zarr"
    ds = make(store, seed=0)
    old = ds.version
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig(epochs=3, patience=None, checkpoint_dir=str(tmp_path / "ck"), **FAST)
    epochs_done = []

    def regenerate_after_the_first_epoch(record):
        epochs_done.append(record["epoch"])
        if record["epoch"] == 1:
            assert make(store, seed=1, overwrite=True).version != old  # `homogen generate --seed 1 --overwrite`

    with pytest.raises(DatasetChanged, match=f"not {old} that this run started on.*stopped before epoch 2"):
        with TrainingRun(ds, cfg, tracking_uri=uri, model_name="hn-pin", system_metrics=False):
            train(ds, cfg, progress=False, on_epoch=regenerate_after_the_first_epoch)
    assert epochs_done == [1]
    assert load_checkpoint(tmp_path / "ck" / LAST)["dataset_version"] == old  # no checkpoint of mixed data
    client = MlflowClient(uri)
    assert not client.search_registered_models()
    [run] = client.search_runs([client.get_experiment_by_name("homogen").experiment_id])
    assert run.info.status == "FAILED"


def test_the_test_scoring_refuses_a_store_regenerated_after_training(tmp_path):
    store = tmp_path / "ds.zarr"
    ds = make(store, seed=0)
    cfg = TrainConfig(epochs=1, patience=None, checkpoint_dir=str(tmp_path / "ck"), **FAST)
    result = train(ds, cfg, progress=False)
    assert score_test(ds, result.model, (), version=result.dataset_version).results  # unchanged: scored
    make(store, seed=1, overwrite=True)
    with pytest.raises(DatasetChanged, match="stopped before test scoring"):
        score_test(ds, result.model, (), version=result.dataset_version)
    with pytest.raises(DatasetChanged, match="stopped before test scoring"):
        score_test(str(store), result.model, (), version=result.dataset_version)  # reopened by URI: the new one
