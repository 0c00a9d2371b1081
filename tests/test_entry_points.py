"""What a new user meets at the flows' command lines: `config=` and `--help` on `python -m`, one
`error:` line and exit 2, one "invalid parameters" prefix, and no telemetry from the ephemeral Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import typer
from typer.testing import CliRunner

import homogen.flows.generate_and_train as gat
from homogen.cli import app as homogen_app
from homogen.flows.cli import register
from homogen.flows.config import FLAT_OVERRIDES, InvalidParameters, PipelineConfig, apply_overrides

ANALYTICS = "PREFECT_SERVER_ANALYTICS_ENABLED"


@pytest.fixture
def flow_calls(monkeypatch):
    """The calls ``main`` makes to the flow, which does not run."""
    calls = []
    monkeypatch.setattr(gat, "generate_and_train", lambda *a, **k: calls.append((a, k)) or {"ok": True})
    return calls


def test_python_m_takes_config_as_inline_json_and_flat_shortcuts_win_over_it(flow_calls):
    gat.main(['config={"train": {"epochs": 3}, "generate": {"sampling": {"rho": 16}}}', "epochs=5"])
    ((args, flat),) = flow_calls
    cfg = args[0]
    assert isinstance(cfg, PipelineConfig) and cfg.generate.sampling.rho == 16 and cfg.train.epochs == 3
    assert flat == {"epochs": 5}
    final = apply_overrides(cfg, **flat)
    assert final.train.epochs == 5 and final.generate.sampling.rho == 16
    assert (
        final.generate.sampling.pairs_per_image == PipelineConfig().generate.sampling.pairs_per_image
    )  # the rest kept


def test_python_m_takes_config_as_a_json_file_like_homogen_run(flow_calls, tmp_path):
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps({"generate": {"sampling": {"pairs_per_image": 4}}}))
    gat.main([f"config={path}"])
    ((args, _),) = flow_calls
    assert args[0].generate.sampling.pairs_per_image == 4


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_python_m_help_prints_the_usage_with_config_and_every_shortcut(flow_calls, capsys, flag):
    gat.main(["rho=24", flag])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m homogen.flows.generate_and_train")
    assert "config=JSON|FILE" in out and all(f"{name}=VALUE" in out for name in FLAT_OVERRIDES)
    assert flow_calls == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["foo"], "expected key=value with key config or one of"),
        (["colour=red"], "got 'colour=red'"),
        (["config={bad"], "config is neither a JSON object nor a JSON file"),
        (["config=[1, 2]"], "config must be a JSON object"),
        (['config={"train": {"epochs": 0}}'], "config: invalid parameters: train.epochs"),
        (["rho=100"], "invalid parameters: generate.sampling: rho=100"),
    ],
)
def test_python_m_refuses_a_bad_argument_with_one_error_line_and_exit_2(flow_calls, capsys, args, said):
    with pytest.raises(SystemExit) as err:
        gat.main(args)
    message = capsys.readouterr().err
    assert err.value.code == 2, message
    assert message.startswith("error: ") and message.count("\n") == 1 and said in message
    assert flow_calls == []


def homogen_run_app() -> typer.Typer:
    """A group with ``homogen run`` registered, as the root ``homogen`` app has it."""
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_homogen_run_and_python_m_refuse_a_malformed_config_with_the_same_words(flow_calls):
    result = CliRunner().invoke(homogen_run_app(), ["run", "--config", "{bad"])
    assert result.exit_code == 2 and "error: --config is neither a JSON object nor a JSON file" in result.output
    with pytest.raises(InvalidParameters, match="config is neither a JSON object"):
        gat.parse_args(["config={bad"])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["generate", "--rho", "100"], "error: invalid parameters: rho=100 exceeds"),
        (
            ["run", "--config", '{"generate": {"sampling": {"patch_size": 64, "rho": 16}}}'],
            "error: --config: invalid parameters: generate.sampling.patch_size=64 but train.patch_size=128",
        ),
    ],
)
def test_a_refused_parameter_is_described_with_one_invalid_parameters_prefix(tmp_path, flow_calls, args, said):
    out = tmp_path / "x.zarr"
    app = homogen_app if args[0] == "generate" else homogen_run_app()
    result = CliRunner().invoke(app, [*args, *(["-o", str(out)] if args[0] == "generate" else [])])
    assert result.exit_code == 2, result.output
    assert said in result.output and result.output.count("invalid parameters") == 1
    assert not out.exists() and flow_calls == []


def test_python_m_describes_a_whole_config_error_with_one_prefix(flow_calls, capsys):
    with pytest.raises(SystemExit):
        gat.main(['config={"generate": {"sampling": {"patch_size": 64, "rho": 16}}}'])
    message = capsys.readouterr().err
    assert message.startswith(
        "error: config: invalid parameters: generate.sampling.patch_size=64 but train.patch_size=128"
    )


# Run in a fresh interpreter: records the variable at the moment Prefect is first imported, then stops
# (nothing of the flow runs). `python -m` runs a module as runpy.run_module(name, run_name="__main__") does.
AT_PREFECT_IMPORT = textwrap.dedent(
    """
    import importlib.abc, os, sys

    class AtPrefectImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "prefect":
                print("at prefect import:", os.environ.get({var!r}), flush=True)
                os._exit(0)

    sys.meta_path.insert(0, AtPrefectImport())
    sys.argv = {argv!r}
    {entry}
    print("prefect was never imported")
    """
)


def _run(code: str, user_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != ANALYTICS}
    if user_value is not None:
        env[ANALYTICS] = user_value
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    ("argv", "entry"),
    [
        (["x"], "import runpy; runpy.run_module('homogen.flows.generate', run_name='__main__')"),
        (["x", "store.zarr"], "import runpy; runpy.run_module('homogen.flows.validate', run_name='__main__')"),
        (["x", "store.zarr"], "import runpy; runpy.run_module('homogen.flows.train', run_name='__main__')"),
        (["homogen", "run", "--help"], "from homogen.cli import main; main()"),
    ],
    ids=["generate", "validate", "train", "homogen run"],
)
def test_each_entry_point_turns_prefect_telemetry_off_before_prefect_is_imported(argv, entry):
    out = _run(AT_PREFECT_IMPORT.format(var=ANALYTICS, argv=argv, entry=entry), None)
    assert out.strip() == "at prefect import: false"


def test_python_m_turns_telemetry_off_but_importing_the_flow_module_does_not():
    entry = "import runpy; runpy.run_module('homogen.flows.generate_and_train', run_name='__main__')"
    out = _run(AT_PREFECT_IMPORT.format(var=ANALYTICS, argv=["x", "rho=24"], entry=entry), None)
    assert out.strip() == "at prefect import: false"
    out = _run(
        AT_PREFECT_IMPORT.format(var=ANALYTICS, argv=["x"], entry="import homogen.flows.generate_and_train"), None
    )
    assert out.strip() == "at prefect import: None"  # deployments and tests import it: Prefect's own default there


READ_BY_PREFECT = textwrap.dedent(
    """
    import runpy, sys
    sys.argv = ["x", "--help"]
    assert "prefect" not in sys.modules
    runpy.run_module("homogen.flows.generate_and_train", run_name="__main__")
    from prefect.settings import get_current_settings
    print("analytics_enabled:", get_current_settings().server.analytics_enabled)
    """
)


def test_prefect_reads_telemetry_off_in_python_m_unless_the_user_set_it():
    assert _run(READ_BY_PREFECT, None).strip().splitlines()[-1] == "analytics_enabled: False"
    assert _run(READ_BY_PREFECT, "true").strip().splitlines()[-1] == "analytics_enabled: True"  # the user's own wins
