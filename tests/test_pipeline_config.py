"""The pipeline's config checked before any work, its flat shortcuts defined once, no credentials in its URLs."""

from __future__ import annotations

import inspect
import time

import pytest
from typer.testing import CliRunner

from homogen.flows.config import (
    FLAT_OVERRIDES,
    InvalidParameters,
    PipelineConfig,
    apply_overrides,
    check_before_work,
    flat_parameters,
    torch_has_cuda,
    visible_cuda_devices,
)


def checked(**flat) -> None:
    """``apply_overrides`` then ``check_before_work``, as the flow and both CLIs run them before any work."""
    check_before_work(apply_overrides(PipelineConfig(), **flat))


@pytest.mark.parametrize(
    ("flat", "named"),
    [
        ({"device": "tpu"}, "train.device: 'tpu' is not a device"),
        ({"device": "cuda:7"}, "train.device='cuda:7'"),
        ({"device": "gpu0"}, "train.device: 'gpu0' is not a device"),
        ({"config": {"generate": {"sampling": {"patch_size": 64, "rho": 16}}}}, "train.patch_size=128"),
        ({"config": {"evaluate": {"methods": ["identity", "sfit"]}}}, "evaluate.methods"),
        ({"config": {"train_deployment": "gpu"}}, "train_deployment='gpu'"),
        ({"rho": 100}, "rho <= "),
    ],
)
def test_a_value_a_later_stage_would_refuse_fails_at_once_naming_it(flat, named):
    config = flat.pop("config", {})
    start = time.perf_counter()
    with pytest.raises(InvalidParameters, match=".") as err:
        try:
            check_before_work(apply_overrides(PipelineConfig.model_validate(config), **flat))
        except ValueError as exc:  # a config section refused by pydantic itself
            raise InvalidParameters(str(exc)) from exc
    assert time.perf_counter() - start < 1.0
    assert named in str(err.value)


def test_cuda_is_refused_only_where_this_machine_has_no_such_device():
    devices = visible_cuda_devices() if torch_has_cuda() else 0
    for index in range(devices):
        checked(device=f"cuda:{index}")
    with pytest.raises(InvalidParameters, match=f"cuda:{devices}"):
        checked(device=f"cuda:{devices}")
    checked(device="auto")
    checked(device="cpu")


def test_a_remote_training_deployment_checks_the_device_where_it_runs():
    cfg = PipelineConfig(
        train={"device": "cuda:7"}, train_deployment="train-model/gpu", tracking={"uri": "http://mlflow-host:5000"}
    )
    check_before_work(cfg)  # the GPU worker's machine has the device, not this one


def test_matching_patch_sizes_are_accepted():
    cfg = PipelineConfig(generate={"sampling": {"patch_size": 64, "rho": 16}}, train={"patch_size": 64})
    check_before_work(cfg)


@pytest.mark.parametrize(
    "config",
    [
        {"generate": {"source": {"root": "https://reader:s3cr3t@images.example.com/coco"}}},
        {"generate": {"output": "s3://AKIAEXAMPLE:s3cr3t@bucket/ds.zarr"}},
        {"tracking": {"uri": "https://mlflow.example.com/?token=s3cr3t"}},
    ],
)
def test_credentials_in_a_url_are_refused_without_being_repeated(config):
    with pytest.raises(ValueError) as err:
        PipelineConfig.model_validate(config)
    assert "carries credentials" in str(err.value) and "s3cr3t" not in str(err.value)
    assert "environment" in str(err.value)  # the fix: credentials outside the parameters


def test_a_flat_url_with_credentials_is_refused_without_being_repeated():
    with pytest.raises(InvalidParameters) as err:
        apply_overrides(PipelineConfig(), source="https://reader:s3cr3t@images.example.com/coco", rho=24)
    assert "generate.source.root" in str(err.value) and "s3cr3t" not in str(err.value)
    assert "s3cr3t" not in repr(err.value.__cause__)  # nor in the chained pydantic error a traceback would print


def test_the_flat_shortcuts_are_defined_once_for_the_flow_and_the_cli():
    from homogen.flows.cli import _options
    from homogen.flows.generate_and_train import generate_and_train

    flow_params = list(inspect.signature(generate_and_train.fn).parameters)
    assert flow_params == ["config", *FLAT_OVERRIDES]
    assert list(generate_and_train.parameters.properties) == ["config", *FLAT_OVERRIDES]
    assert list(_options().parameters) == ["config", *FLAT_OVERRIDES]
    kinds = {name: kind for name, (kind, _) in flat_parameters().items()}
    assert kinds["rho"] == kinds["epochs"] == (int | None) and kinds["width"] == (float | None)
    described = generate_and_train.parameters.properties["epochs"]["description"]
    assert "default: 2" in described and "train.epochs" in described  # the pipeline's default, not TrainConfig's 10


def test_homogen_run_refuses_a_bad_device_before_starting_prefect(monkeypatch):
    import typer

    import homogen.flows.generate_and_train as gat
    from homogen.flows.cli import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as the root `homogen` app is
    register(app)

    monkeypatch.setattr(gat, "generate_and_train", lambda *a, **k: pytest.fail("the flow must not start"))
    result = CliRunner().invoke(app, ["run", "--device", "tpu"])
    assert result.exit_code == 2
    assert "train.device: 'tpu' is not a device" in result.output and "use auto, cpu, cuda" in result.output
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "--pairs-per-image" in help_text and "default: 32" in help_text


def test_python_m_refuses_before_the_flow_is_called(monkeypatch, capsys):
    import homogen.flows.generate_and_train as gat

    monkeypatch.setattr(gat, "generate_and_train", lambda *a, **k: pytest.fail("the flow must not start"))
    with pytest.raises(SystemExit) as err:
        gat.main(["--device", "cuda:7"])
    assert err.value.code == 2 and "train.device='cuda:7'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        gat.main(["--output", "s3://AKIA:s3cr3t@bucket/ds.zarr"])
    message = capsys.readouterr().err
    assert err.value.code == 2 and "generate.output" in message and "s3cr3t" not in message
