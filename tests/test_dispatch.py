"""Dispatched training (``train_deployment``): what the GPU deployment receives, and what is refused before
generation starts. The real server, pool and worker run in tests/test_dispatch_server.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from homogen.deployments.definitions import GPU_TRAIN, gpu_deployment
from homogen.flows.config import (
    InvalidParameters,
    PipelineConfig,
    apply_overrides,
    check_before_work,
    dispatched_train_config,
    shareable_tracking_uri,
)
from homogen.model.evaluate import DEFAULT_METHODS

GPU = "train-model/gpu"


def test_only_the_fields_a_user_set_override_the_gpu_deployments_settings():
    cfg = apply_overrides(PipelineConfig.model_validate({"train": {"lr": 0.01}}), epochs=3)
    assert cfg.train.width == 0.25 and cfg.train.epochs == 3  # in-process: the quick-start defaults
    sent = dispatched_train_config(gpu_deployment().parameters["config"], cfg.train)
    assert (sent.device, sent.width, sent.num_workers) == ("cuda", 1.0, GPU_TRAIN["num_workers"])  # the GPU's
    assert (sent.epochs, sent.lr) == (3, 0.01)  # the user's
    untouched = dispatched_train_config(gpu_deployment().parameters["config"], PipelineConfig().train)
    assert untouched.model_dump(exclude_unset=True) == GPU_TRAIN


def test_a_value_set_equal_to_the_quick_default_still_counts_as_set():
    cfg = PipelineConfig.model_validate({"train": {"width": 0.25}})
    assert dispatched_train_config(GPU_TRAIN, cfg.train).width == 0.25


def test_an_invalid_combination_is_refused_naming_the_field():
    with pytest.raises(InvalidParameters, match="train_deployment's config with yours: .*width"):
        dispatched_train_config({"width": "wide"}, PipelineConfig().train)


@pytest.mark.parametrize(
    "uri", ["sqlite:///work/mlflow.db", "sqlite:////abs/mlflow.db", "file:///data/mlruns", "/data/mlruns", None]
)
def test_a_tracking_store_the_worker_cannot_share_is_refused_before_generation(uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig.model_validate({"train_deployment": GPU, "tracking": {"uri": uri}})
    with pytest.raises(InvalidParameters, match="a store on this machine only.*set tracking.uri.*MLFLOW_TRACKING_URI"):
        check_before_work(cfg)


def test_a_tracking_server_is_shared_and_sent_without_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:pw@mlflow.example.com")
    assert shareable_tracking_uri(None, "x") == "https://mlflow.example.com"
    check_before_work(PipelineConfig.model_validate({"train_deployment": GPU}))


def test_homogen_run_refuses_a_sqlite_dispatch_before_starting_the_flow(monkeypatch):
    import typer

    import homogen.flows.generate_and_train as gat
    from homogen.flows.cli import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    monkeypatch.setattr(gat, "generate_and_train", lambda *a, **k: pytest.fail("the flow must not start"))
    config = '{"train_deployment": "train-model/gpu", "tracking": {"uri": "sqlite:///work/mlflow.db"}}'
    result = CliRunner().invoke(app, ["run", "--config", config])
    assert result.exit_code == 2 and "a store on this machine only" in result.output


def test_the_flows_evaluate_what_the_cli_evaluates_by_default():
    assert PipelineConfig().evaluate.methods == DEFAULT_METHODS == ("identity", "orb", "sift", "ecc")
