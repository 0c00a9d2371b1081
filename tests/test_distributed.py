"""Training on two CPU processes (gloo) with two loader workers each, through torch's elastic launcher:
every train pair once per epoch, the same weights on both ranks after every step, a run stopped
mid-epoch resumed with exactly the remaining pairs (on the same and on another number of processes),
one MLflow run and one model version."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import record

from homogen.schema import SPLIT_CODES
from homogen.model.distributed import LaunchError, launch, process_group, rank
from homogen.model.train import TrainConfig, load_checkpoint, network_from_checkpoint, train

from helpers import p32_store

# width 0.125 on 32 x 32 patches: a step takes milliseconds; two processes x two workers each
TINY = dict(width=0.125, patch_size=32, batch_size=8, val_batch_size=64, num_workers=2, device="cpu", patience=None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """128 real pairs (P=32) in 8 chunks of 16, with train, val and test images."""
    return p32_store(tmp_path_factory.mktemp("ddp") / "ds.zarr", pairs_per_image=8, shard_size=4)


def train_rows(ds) -> list[int]:
    return np.flatnonzero(ds.read_field("split", 0, len(ds)) == SPLIT_CODES["train"]).tolist()


def digest(model: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()


@record
def _rank(uri: str, cfg_json: str, out: str) -> None:
    """One launched process: train, recording per step the rows it trained on and its weights."""
    steps: list[dict] = []

    def on_step(step, model, rows):
        steps.append({"step": step, "rows": rows.tolist(), "weights": digest(model)})

    cfg = TrainConfig.model_validate_json(cfg_json)
    with process_group("cpu"):
        train(uri, cfg, progress=False, on_step=on_step)
        Path(out, f"rank{rank()}.json").write_text(json.dumps(steps))


def run_two_ranks(ds, cfg: TrainConfig, out: Path) -> list[list[dict]]:
    """Train on 2 processes; each rank's steps."""
    out.mkdir(parents=True, exist_ok=True)
    launch(2, _rank, ds.uri, cfg.model_dump_json(), str(out))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def epochs_of(steps: list[dict]) -> list[list[dict]]:
    out: list[list[dict]] = []
    for s in steps:
        if s["step"] == 1:
            out.append([])
        out[-1].append(s)
    return out


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    """Run A: ``homogen train --nproc-per-node 2`` (2 loader workers each) with MLflow, stopped by its
    sample budget 20 pairs into epoch 2. Run B: 2 processes resume A's checkpoint to the end of epoch
    3, recording every step. Run C: one process resumes a copy of A's checkpoint to the end of epoch 2."""
    import typer
    from typer.testing import CliRunner

    from homogen.model.cli import register

    tmp = tmp_path_factory.mktemp("runs")
    n_train = len(train_rows(store))
    app = typer.Typer()
    register(app)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    args = ["train", store.uri, "--nproc-per-node", "2", "--device", "cpu", "--num-workers", "2", "--epochs", "2"]
    args += ["--max-samples", str(n_train + 20), "--batch-size", "8", "--width", "0.125", "--patience", "9"]
    args += ["--methods", "none", "--tracking-uri", uri, "--checkpoint-dir", str(tmp / "ck"), "--experiment", "ddp"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    stopped = load_checkpoint(tmp / "ck" / "last.pt")
    shutil.copytree(tmp / "ck", tmp / "ck1")

    resume = dict(TINY, resume=True)
    b = run_two_ranks(store, TrainConfig(epochs=3, checkpoint_dir=str(tmp / "ck"), **resume), tmp / "b")
    c: list[int] = []
    cfg = TrainConfig(epochs=2, checkpoint_dir=str(tmp / "ck1"), **resume)
    train(store, cfg, progress=False, on_step=lambda step, model, rows: c.extend(rows.tolist()))
    return {"uri": uri, "stopped": stopped, "b": b, "c": c, "last": load_checkpoint(tmp / "ck" / "last.pt")}


def test_two_ranks_read_every_train_pair_once_per_epoch(store, runs):
    epochs = list(zip(*(epochs_of(steps) for steps in runs["b"])))
    assert len(epochs) == 2  # the rest of epoch 2, then epoch 3
    a, b = epochs[1]
    rows_a, rows_b = [i for s in a for i in s["rows"]], [i for s in b for i in s["rows"]]
    assert rows_a and rows_b  # both ranks trained on their share
    assert not set(rows_a) & set(rows_b)
    assert sorted(rows_a + rows_b) == train_rows(store)  # each train pair exactly once


def test_both_ranks_hold_the_same_weights_after_every_step(runs):
    r0, r1 = runs["b"]
    assert len(r0) == len(r1) > 4  # the ranks step together
    assert [s["weights"] for s in r0] == [s["weights"] for s in r1]
    assert len({s["weights"] for s in r0}) == len(r0)  # and every step changed them
    last = runs["last"]  # written by rank 0: the trained weights
    assert digest(network_from_checkpoint(last)) == r0[-1]["weights"]
    assert last["epoch"] == 3 and last["stream"] is None and last["world_size"] == 2


def test_a_run_stopped_mid_epoch_resumes_with_exactly_the_remaining_pairs(store, runs):
    stopped = runs["stopped"]
    assert stopped["state"]["epoch"] == 1 and stopped["stream"]["epoch"] == 1  # epoch 2 (0-based 1) unfinished
    read = np.flatnonzero(np.unpackbits(stopped["stream"]["read"].numpy(), count=len(store))).tolist()
    assert len(read) == 20 and set(read) <= set(train_rows(store))  # the checkpoint carries the position
    remaining = sorted(set(train_rows(store)) - set(read))
    rest = [i for steps in runs["b"] for s in epochs_of(steps)[0] for i in s["rows"]]
    assert sorted(rest) == remaining  # on 2 processes x 2 workers
    assert sorted(runs["c"]) == remaining  # and on one process: resumable on another N
    assert runs["last"]["state"]["samples_seen"] == 3 * len(train_rows(store))


def test_homogen_train_on_two_processes_logs_one_mlflow_run_and_one_model_version(runs):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(runs["uri"])
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(found) == 1
    params = found[0].data.params
    assert params["world_size"] == "2" and params["batch_size_per_rank"] == "8" and params["global_batch_size"] == "16"
    assert params["nproc_per_node"] == "2"
    assert [h.step for h in client.get_metric_history(found[0].info.run_id, "val_mace")] == [1, 2]  # rank 0's, once
    versions = client.search_model_versions()
    assert len(versions) == 1 and versions[0].run_id == found[0].info.run_id


def test_mid_epoch_checkpoints_hold_the_position(store, tmp_path):
    """checkpoint_every: last.pt is rewritten inside the epoch, with the rows already trained on."""
    ck = tmp_path / "ck"
    rows: list[int] = []
    saved: list[dict] = []

    def on_step(step, model, batch_rows):
        rows.extend(batch_rows.tolist())
        if step == 3:  # the step-2 checkpoint is on disk
            saved.append(load_checkpoint(ck / "last.pt"))

    cfg = TrainConfig(epochs=1, checkpoint_every=2, checkpoint_dir=str(ck), **dict(TINY, num_workers=0))
    train(store, cfg, progress=False, on_step=on_step)
    (payload,) = saved
    assert payload["state"]["samples_seen"] == 16 and payload["state"]["epoch"] == 0  # two steps of 8
    read = np.flatnonzero(np.unpackbits(payload["stream"]["read"].numpy(), count=len(store))).tolist()
    assert read == sorted(rows[:16])


def test_a_failing_process_ends_the_launch_with_its_error_in_one_line():
    with pytest.raises(LaunchError, match=r"rank \d failed: .*ValueError: bad input on rank"):
        launch(2, _fail_on_rank_one)


@record
def _fail_on_rank_one() -> None:
    import os

    if os.environ["RANK"] == "1":
        raise ValueError("bad input on rank 1")


def refused_by_homogen_train(store, tmp_path, *options: str) -> str:
    """``homogen train STORE --width 0.125 --methods none OPTIONS``: its output, after checking that it
    exited 2 with one line (no traceback), opened no MLflow run and wrote no checkpoint."""
    import typer
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from homogen.model.cli import register

    app = typer.Typer()
    register(app)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", store.uri, *options, "--width", "0.125", "--methods", "none"]
    res = CliRunner().invoke(app, [*args, "--tracking-uri", uri, "--checkpoint-dir", str(tmp_path / "ck")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    client = MlflowClient(uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert not (tmp_path / "ck").exists()
    return res.output


def test_homogen_train_on_one_process_refuses_cuda_without_it_before_opening_an_mlflow_run(
    store, tmp_path, monkeypatch
):
    """A CPU-only torch asked for cuda: one line, exit 2, no MLflow run (was an assertion mid-training)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CI's torch is CPU-only; a GPU machine's too, here
    output = refused_by_homogen_train(store, tmp_path, "--device", "cuda")
    assert "installed torch has no CUDA" in output and "use device 'auto' or 'cpu'" in output


@pytest.mark.parametrize(
    "device, match",
    [
        ("cuda:1", r"device 'cuda:1' names one GPU, but nproc_per_node=2 .*give device 'cuda'"),
        ("mps", r"device 'mps': several training processes run on cuda \(one GPU each\) or cpu only"),
    ],
)
def test_a_device_the_processes_cannot_share_is_refused_before_anything_starts(store, tmp_path, device, match):
    cfg = TrainConfig(nproc_per_node=2, checkpoint_dir=str(tmp_path / "ck"), **dict(TINY, device=device))
    with pytest.raises(ValueError, match=match):
        train(store, cfg, progress=False)
    assert not (tmp_path / "ck").exists()


def test_more_processes_than_gpus_is_refused_naming_the_count(store, tmp_path):
    have = torch.cuda.device_count()
    cfg = TrainConfig(nproc_per_node=have + 2, **dict(TINY, device="cuda"))
    with pytest.raises(ValueError, match=rf"needs {have + 2} GPUs \(one per process\), this machine has {have}"):
        train(store, cfg, progress=False)


def test_homogen_train_refuses_one_named_gpu_for_two_processes_before_opening_an_mlflow_run(store, tmp_path):
    output = refused_by_homogen_train(store, tmp_path, "--nproc-per-node", "2", "--device", "cuda:1")
    assert "names one GPU" in output and "give device 'cuda'" in output
