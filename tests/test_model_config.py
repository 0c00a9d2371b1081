"""TrainConfig: every hyperparameter finite and bounded, refused before any work with one line naming it."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from homogen.flows.config import InvalidParameters, checked_config, load_config
from homogen.model.config import TrainConfig
from homogen.param_errors import describe_errors


@pytest.mark.parametrize("field", ["lr", "weight_decay", "gamma", "width"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_hyperparameter_is_refused_naming_it(field, value):
    with pytest.raises(ValidationError) as err:
        TrainConfig(**{field: value})
    line = describe_errors(err.value)
    assert line.startswith(f"invalid parameters: {field}: ") and "\n" not in line


@pytest.mark.parametrize(("field", "value"), [("lr", 1000.0), ("lr", 0.0), ("weight_decay", 2.0), ("width", 100.0)])
def test_a_hyperparameter_outside_its_bounds_is_refused(field, value):
    with pytest.raises(ValidationError, match=field):
        TrainConfig(**{field: value})


def test_the_bounds_keep_every_useful_value():
    TrainConfig(lr=1.0, weight_decay=1.0, width=8.0, gamma=1.0, device="cuda:1")


def test_infinity_in_a_json_pipeline_config_is_refused_naming_the_field():
    data = load_config('{"train": {"lr": Infinity}}', "config")  # json.loads accepts Infinity
    assert data["train"]["lr"] == math.inf
    with pytest.raises(InvalidParameters, match=r"^config: invalid parameters: train\.lr: ") as err:
        checked_config(data, "config")
    assert "\n" not in str(err.value)


def test_an_unknown_device_is_refused_by_the_config_itself():
    with pytest.raises(ValidationError, match="'gpu' is not a device the trainer uses"):
        TrainConfig(device="gpu")


def test_homogen_train_lr_inf_fails_in_one_line_before_opening_an_mlflow_run(small_store, tmp_path):
    import typer
    from typer.testing import CliRunner

    from homogen.model.cli import register

    app = typer.Typer()
    register(app)
    db = tmp_path / "mlflow.db"
    out = CliRunner().invoke(
        app, ["train", str(small_store[0]), "--lr", "inf", "--tracking-uri", f"sqlite:///{db}", "--epochs", "1"]
    )
    assert out.exit_code != 0
    text = out.output.strip()
    assert "lr: " in text and "finite" in text and len(text.splitlines()) == 1, text
    assert not db.exists()  # refused before MLflow was touched
