"""Ctrl-C (SIGINT) during ``homogen generate`` and ``homogen train``, in real processes: one line
saying what is kept and how to go on, exit 130, no traceback and no asyncio noise; the way on it
names works."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultlib import child_env, run_cli

from homogen.store import open_dataset
from homogen.validation import validate_dataset

pytestmark = pytest.mark.slow


def start_cli(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from homogen.cli import main; main()", *args],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def interrupt_when(ready, proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Send SIGINT to ``proc`` as soon as ``ready()``; its stdout and stderr once it has ended."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"ended (rc {proc.returncode}) before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "never got ready"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=60)


def the_one_line(err: str, start: str) -> str:
    """The one message line on stderr (progress bars redraw with carriage returns); nothing else speaks."""
    assert "Traceback" not in err and "Task was destroyed" not in err and "asyncio" not in err, err
    lines = [x.strip() for x in re.split(r"[\r\n]", err) if x.strip()]
    talk = [x for x in lines if not re.match(r"^(hash source images|generate [0-9a-f]+|epoch \d+/\d+):", x)]
    assert len(talk) == 1 and talk[0].startswith(start), err
    return talk[0]


def test_ctrl_c_during_generate_keeps_the_complete_shards_and_the_same_command_finishes(tmp_path):
    args = ["generate", "-o", "ds.zarr", "--shard-size", "1", "--pairs-per-image", "128", "--patch-size", "64"]
    args += ["--rho", "16"]
    parts = tmp_path / "ds.zarr.parts"

    def first_shard_staged() -> bool:
        return parts.is_dir() and any(re.fullmatch(r"shard-\d{5}", p.name) for p in parts.iterdir())

    proc = start_cli(args, tmp_path)
    out, err = interrupt_when(first_shard_staged, proc)
    assert proc.returncode == 130, (out, err)
    line = the_one_line(err, "interrupted: ")
    kept = sorted(p.name for p in parts.iterdir() if re.fullmatch(r"shard-\d{5}", p.name))
    assert re.search(
        rf"\b{len(kept)} of 32 shards of dataset [0-9a-f]+ are complete and kept in ds\.zarr\.parts \(a re-run makes only the others\); ",
        line,
    )
    assert "re-run the same command to finish the dataset" in line and 0 < len(kept) < 32, line

    again = run_cli(args, tmp_path)
    assert again.returncode == 0 and "4096 pairs" in again.stdout, (again.stdout, again.stderr)
    with open_dataset(str(tmp_path / "ds.zarr")) as ds:
        assert len(ds) == 4096 and validate_dataset(ds).passed


def test_ctrl_c_during_train_names_the_last_checkpoint_and_resume_continues_from_it(tmp_path):
    made = run_cli(
        ["generate", "-o", "ds.zarr", "--max-images", "16", "--patch-size", "64", "--rho", "16"]
        + ["--pairs-per-image", "8", "--val-fraction", "0.25"],
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    args = ["train", "ds.zarr", "--max-samples", "128", "--width", "0.25", "--batch-size", "16"]
    args += ["--checkpoint-every", "1", "--methods", "none", "--no-track", "--checkpoint-dir", "ck"]
    last = tmp_path / "ck" / "last.pt"

    proc = start_cli(args, tmp_path)
    out, err = interrupt_when(last.exists, proc)
    assert proc.returncode == 130, (out, err)
    line = the_one_line(err, "interrupted: ")
    assert "the last checkpoint is ck/last.pt" in line and "no model was registered" in line, line
    assert "re-run the same command with --resume" in line, line

    resumed = run_cli([*args, "--resume"], tmp_path, timeout=300)
    assert resumed.returncode == 0 and "trained: best val MACE" in resumed.stdout, (resumed.stdout, resumed.stderr)


def test_ctrl_c_before_this_run_wrote_a_checkpoint_says_nothing_was_saved(tmp_path, capsys):
    """A last.pt left by an earlier run is not this run's: never named as what was kept."""
    import os

    import typer
    from homogen.model.cli import _interrupted
    from homogen.model.config import TrainConfig

    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.generate import generate

    sampling = SamplingConfig(patch_size=64, rho=16)
    generate(GenerateConfig(output=str(tmp_path / "ds.zarr"), source=SourceConfig(max_images=4), sampling=sampling))
    old = tmp_path / "ck" / "last.pt"
    old.parent.mkdir()
    old.write_bytes(b"an older run's")
    os.utime(old, (time.time() - 60, time.time() - 60))
    cfg = TrainConfig(checkpoint_dir=str(old.parent), patch_size=64)
    with open_dataset(str(tmp_path / "ds.zarr")) as ds, pytest.raises(typer.Exit) as stop:
        _interrupted(ds, cfg, time.time() - 5, "abc123")
    assert stop.value.exit_code == 130
    line = the_one_line(capsys.readouterr().err, "interrupted: ")
    assert "before this run wrote a checkpoint, so nothing was saved" in line and "ck/last.pt" not in line, line
    assert "MLflow run abc123 is marked KILLED" in line and "re-run the same command to start again" in line, line


def test_ctrl_c_to_a_training_on_two_processes_is_the_same_line_not_the_launchers_traceback(tmp_path):
    """Ctrl-C in a terminal reaches every process of the group; the launcher stopped the ranks and
    raised its SignalException as a traceback."""
    made = run_cli(
        ["generate", "-o", "ds.zarr", "--max-images", "16", "--patch-size", "64", "--rho", "16"]
        + ["--pairs-per-image", "8", "--val-fraction", "0.25"],
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    args = ["train", "ds.zarr", "--max-samples", "256", "--width", "0.25", "--batch-size", "8", "--nproc-per-node", "2"]
    args += ["--checkpoint-every", "1", "--methods", "none", "--no-track", "--checkpoint-dir", "ck"]
    last = tmp_path / "ck" / "last.pt"
    proc = start_cli(
        args, tmp_path, start_new_session=True
    )  # its own process group, signalled whole as a terminal does
    deadline = time.monotonic() + 120
    while not last.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err and "Exception" not in err, err
    (line,) = [x.strip() for x in err.splitlines() if x.startswith("interrupted: ")]
    assert "the last checkpoint is ck/last.pt" in line and "--resume" in line, line
