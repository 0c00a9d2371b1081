"""Faults during generation: a killed process, a full disk, two runs on one output.

The promise under test: whatever happens, nothing already done is lost, the store never looks
complete when it is not, and re-running the same generation finishes it with exactly the bytes an
uninterrupted run writes.
"""

from __future__ import annotations

import signal

import pytest

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.stores import FIELDS, StoreError, open_dataset, open_writer
from faultlib import (
    enospc,
    folder_digest,
    leftovers,
    patch_file_writes,
    run_cli,
    run_generation,
    small_disk,
    start_generation,
    tree_digest,
    wait_for,
)
from helpers import assert_same_arrays, read_store

FORMATS = {"zarr": "data.zarr", "hdf5": "data.h5"}


def config(output: str, **kw) -> GenerateConfig:
    """12 bundled images, 4 per shard (3 shards), 2 pairs each: 24 pairs."""
    return GenerateConfig(
        source=SourceConfig(max_images=12),
        sampling=SamplingConfig(pairs_per_image=2),
        output=output,
        shard_size=4,
        **kw,
    )


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory) -> dict:
    """One uninterrupted run per format, in its own folder, with the same relative output name."""
    out = {}
    for fmt, name in FORMATS.items():
        folder = tmp_path_factory.mktemp(f"clean-{fmt}")
        proc = run_generation(config(name).model_dump(mode="json"), folder)
        assert proc.returncode == 0, proc.stderr
        out[fmt] = folder / name
    return out


# ------------------------------------------------------------------------------- killed process


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_process_killed_mid_shard_then_rerun_gives_the_clean_bytes(fmt, tmp_path, clean_runs):
    name = FORMATS[fmt]
    cfg = config(name).model_dump(mode="json")
    output = tmp_path / name

    # Zarr: die in the 5th file of shard 1 (a chunk); HDF5: in the shard's one file write
    after_writes = {"zarr": 5, "hdf5": 1}[fmt]
    killed = run_generation(cfg, tmp_path, hook={"kind": "kill", "shard": 1, "after_writes": after_writes})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # the kill really was part-way through shard 1: its partial files are on disk ...
    assert any("shard-00001" in p for p in leftovers(output)), leftovers(output)
    # ... yet the store does not pretend to be usable, and shard 0 is complete
    with pytest.raises(StoreError, match="incomplete.*re-run the same generation"):
        open_dataset(str(output))
    writer = open_writer(str(output))
    assert writer.shard_info(0) is not None and writer.shard_info(1) is None

    rerun = run_generation(cfg, tmp_path)
    assert rerun.returncode == 0, rerun.stderr

    assert leftovers(output) == []
    assert not (tmp_path / f"{name}.lock").exists()
    # every file (arrays, chunk layout, manifest) is byte-for-byte the clean run's
    assert tree_digest(output) == tree_digest(clean_runs[fmt])
    assert_same_arrays(read_store(output), read_store(clean_runs[fmt]))


# ------------------------------------------------------------------------------------ disk full


def inject_disk_full(monkeypatch, shard: str) -> None:
    """Every file write of ``shard`` fails with ENOSPC (a disk that fills up at that shard)."""

    def charge(nbytes, path):
        raise enospc(path)

    patch_file_writes(monkeypatch, lambda path: shard in path, charge)


@pytest.mark.parametrize("fmt", FORMATS)
def test_disk_full_while_writing_a_shard_is_a_clear_error_and_a_rerun_completes(fmt, tmp_path, monkeypatch, clean_runs):
    output = tmp_path / FORMATS[fmt]
    cfg = config(str(output))
    with monkeypatch.context() as m:
        inject_disk_full(m, "shard-00002")
        with pytest.raises(StoreError) as info:
            generate(cfg, progress=False)
    message = str(info.value)
    assert "shard-00002" in message and str(output) in message
    assert "disk is full" in message and "re-run" in message

    writer = open_writer(str(output))
    assert [writer.shard_info(i) is not None for i in range(3)] == [True, True, False]
    assert leftovers(output) == []  # the failed shard's partial files are gone (space given back)
    assert not (tmp_path / f"{output.name}.lock").exists()  # the lock is released

    manifest = generate(cfg, progress=False)
    assert manifest["num_pairs"] == 24 and manifest["quarantine"] == []
    assert_same_arrays(read_store(output), read_store(clean_runs[fmt]))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_disk_full_on_a_small_filesystem(fmt, tmp_path, monkeypatch, clean_runs):
    """A real full disk (tmpfs; a write budget where mounting is not allowed): the same promise."""
    clean_size_kib = (
        sum(p.stat().st_size for root in [clean_runs[fmt].parent] for p in root.rglob("*") if p.is_file()) // 1024
    )
    with small_disk(tmp_path / "disk", size_kib=clean_size_kib // 2, monkeypatch=monkeypatch) as disk:
        output = disk.path / FORMATS[fmt]
        cfg = config(str(output))
        with pytest.raises(StoreError) as info:
            generate(cfg, progress=False)
        assert "disk is full" in str(info.value) and "re-run" in str(info.value), str(info.value)

        writer = open_writer(str(output))
        done = [i for i in range(3) if writer.shard_info(i) is not None]
        assert done and len(done) < 3  # some shards fitted, some did not
        before = {i: writer.shard_info(i) for i in done}
        assert leftovers(output) == []

        disk.grow(clean_size_kib * 4)
        manifest = generate(cfg, progress=False)
        assert manifest["num_pairs"] == 24
        assert {i: writer.shard_info(i) for i in done} == before  # kept, not rewritten
        assert_same_arrays(read_store(output), read_store(clean_runs[fmt]))


# -------------------------------------------------------------------------- two runs, one output


@pytest.mark.slow
def test_second_generation_into_the_same_output_is_refused_and_the_first_completes(tmp_path, clean_runs):
    name = FORMATS["zarr"]
    output = tmp_path / name
    holding, release = tmp_path / "holding", tmp_path / "release"
    first = start_generation(
        config(name).model_dump(mode="json"),
        tmp_path,
        hook={"kind": "hold", "shard": 1, "holding": str(holding), "release": str(release)},
    )
    try:
        wait_for(holding, first)  # the first run holds the output, shard 0 written
        # the same run again, and a different dataset with --overwrite: both refused at once
        same = run_cli(
            ["generate", "-o", name, "--max-images", "12", "--shard-size", "4", "--pairs-per-image", "2"], tmp_path
        )
        other = run_cli(["generate", "-o", name, "--max-images", "12", "--seed", "7", "--overwrite"], tmp_path)
        for second in (same, other):
            assert second.returncode == 2, second.stderr
            assert f"pid {first.pid}" in second.stderr and "wait for that run to finish" in second.stderr
            assert "Traceback" not in second.stderr
        assert open_writer(str(output)).shard_info(0) is not None  # --overwrite removed nothing
    finally:
        release.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert tree_digest(output) == tree_digest(clean_runs["zarr"])
    assert not (tmp_path / f"{name}.lock").exists()


# ----------------------------------------------------------------------- tracking store lost


@pytest.fixture(scope="module")
def p128_store(tmp_path_factory):
    """16 pairs (P = 128) with train, val and test pairs."""
    out = tmp_path_factory.mktemp("p128") / "ds.zarr"
    generate(
        GenerateConfig(
            source=SourceConfig(max_images=8, test_fraction=0.3, val_fraction=0.3),
            sampling=SamplingConfig(pairs_per_image=2),
            output=str(out),
        ),
        progress=False,
    )
    return out


def train_cli():
    import typer

    from homogen.model.cli import register

    app = typer.Typer()
    register(app)
    return app


def train_args(store, checkpoints, tracking_uri) -> list[str]:
    return [
        "train",
        str(store),
        "--epochs",
        "1",
        "--width",
        "0.125",
        "--batch-size",
        "8",
        "--methods",
        "none",
        "--checkpoint-dir",
        str(checkpoints),
        "--tracking-uri",
        tracking_uri,
    ]


@pytest.mark.slow
def test_tracking_store_lost_during_training_keeps_the_checkpoint_and_names_the_uri(tmp_path, monkeypatch, p128_store):
    import shutil

    import torch
    from typer.testing import CliRunner

    import homogen.model.train as training
    from homogen.model.loading import load_model

    tracking = tmp_path / "tracking"
    uri = f"sqlite:///{tracking}/mlflow.db"
    trained = {}

    def train_then_lose_the_store(*args, **kw):
        result = trained["result"] = real_train(*args, **kw)
        shutil.rmtree(tracking)  # the tracking volume goes away while the model trains
        tracking.write_text("not a folder any more")
        return result

    real_train = training.train
    monkeypatch.setattr(training, "train", train_then_lose_the_store)
    ck = tmp_path / "ck"
    result = CliRunner().invoke(train_cli(), train_args(p128_store, ck, uri))

    assert result.exit_code == 1, result.output
    assert "result" in trained  # training ran to the end: the store was reachable when it started
    assert f"MLflow tracking store {uri} is unreachable" in result.output
    assert f"the checkpoint is kept at {ck / 'best.pt'}" in result.output
    kept = load_model(ck / "best.pt")
    best = trained["result"].model.state_dict()
    assert all(torch.equal(v, best[k]) for k, v in kept.state_dict().items())


def test_tracking_store_unreachable_at_start_fails_before_training(tmp_path, p128_store):
    import socket

    from typer.testing import CliRunner

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    ck = tmp_path / "ck"
    result = CliRunner().invoke(train_cli(), train_args(p128_store, ck, uri))
    assert result.exit_code == 2, result.output
    assert f"MLflow tracking store {uri} is unreachable" in result.output and "--no-track" in result.output
    assert not ck.exists()  # no time spent training a model that could not be recorded


# ---------------------------------------------------------------------------- Dask worker lost


def kill_a_worker_when(output, cluster, shards_done: int, timeout: float = 120) -> dict:
    """Start a thread that SIGKILLs one Dask worker process once ``shards_done`` shards of
    ``output`` are complete; returns what it saw (the pid killed, shards complete at that moment)."""
    import os
    import threading
    import time

    from distributed import Client

    seen: dict = {}

    def watch():
        writer = open_writer(str(output))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = sum(writer.shard_info(i) is not None for i in range(seen["total"]))
            if done >= shards_done:
                with Client(cluster) as client:
                    pids = client.run(os.getpid)  # {worker address: pid}
                seen["pid"] = sorted(pids.values())[0]
                seen["done_at_kill"] = done
                os.kill(seen["pid"], signal.SIGKILL)
                return
            time.sleep(0.02)

    seen["thread"] = threading.Thread(target=watch, daemon=True)
    return seen


@pytest.mark.slow
def test_a_dask_worker_killed_during_generation_the_flow_completes_the_same_dataset(tmp_path, prefect_api, monkeypatch):
    import psutil

    from homogen.flows.cluster import DaskConfig, local_cluster
    from homogen.flows.generate import generate_dataset

    monkeypatch.setenv("HOMOGEN_WORKDIR", str(tmp_path))
    shards = 8
    cfg = GenerateConfig(
        source=SourceConfig(max_images=shards),
        sampling=SamplingConfig(pairs_per_image=128),
        output=str(tmp_path / "flow.zarr"),
        shard_size=1,  # 8 shards (~0.2 s of work each) on 2 workers
    )
    # the flows' own LocalCluster (worker processes), started here
    # so that the test knows its workers
    cluster = local_cluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        watcher = kill_a_worker_when(tmp_path / "flow.zarr", cluster, shards_done=1)
        watcher["total"] = shards
        watcher["thread"].start()
        state = generate_dataset(cfg, DaskConfig(address=cluster.scheduler_address), return_state=True)
        watcher["thread"].join(timeout=10)
    finally:
        cluster.close()

    assert "pid" in watcher, "no worker was killed"
    assert not psutil.pid_exists(watcher["pid"]) or psutil.Process(watcher["pid"]).status() == psutil.STATUS_ZOMBIE
    assert watcher["done_at_kill"] < shards  # the worker died while shards were still to be written
    assert state.is_completed(), state.message
    assert state.result()["pairs"] == shards * 128

    clean = tmp_path / "clean.zarr"
    generate(cfg.model_copy(update={"output": str(clean)}), progress=False)
    assert_same_arrays(read_store(tmp_path / "flow.zarr"), read_store(clean))
    for f in FIELDS:  # every array's metadata and chunk files, bit for bit
        assert folder_digest(tmp_path / "flow.zarr" / f) == folder_digest(clean / f) != {}
    flow_manifest, clean_manifest = (
        open_dataset(str(tmp_path / "flow.zarr")).manifest,
        open_dataset(str(clean)).manifest,
    )
    for m in (flow_manifest, clean_manifest):
        m["config"].pop("output")
    assert flow_manifest == clean_manifest
    assert leftovers(tmp_path / "flow.zarr") == []


FLOW_DRIVER = r"""
import json, sys
from homogen.flows.cluster import DaskConfig
from homogen.flows.generate import generate_dataset
from homogen.config import GenerateConfig

if __name__ == "__main__":
    cfg = GenerateConfig.model_validate(json.loads(sys.argv[1]))
    print(generate_dataset(cfg, DaskConfig(n_workers=2, dashboard_address=None)))
"""


@pytest.mark.slow
def test_flow_process_killed_mid_run_then_the_flow_rerun_gives_the_clean_dataset(tmp_path, prefect_api, monkeypatch):
    """The whole generate-dataset flow (a process with its 2 Dask worker processes) is SIGKILLed
    once 2 of 8 shards are written: its workers go with it, its lock and a half-done store stay;
    the flow re-run takes the stale lock over and ends with the clean run's dataset."""
    import os
    import subprocess
    import sys
    import time

    import psutil
    from prefect.client.orchestration import get_client

    from faultlib import child_env
    from homogen.flows.cluster import DaskConfig
    from homogen.flows.generate import generate_dataset

    monkeypatch.setenv("HOMOGEN_WORKDIR", str(tmp_path))
    shards = 8
    cfg = GenerateConfig(
        source=SourceConfig(max_images=shards),
        sampling=SamplingConfig(pairs_per_image=128),
        output=str(tmp_path / "flow.zarr"),
        shard_size=1,
    )  # 8 shards, ~0.2 s of work each
    env = {**child_env(), "PREFECT_API_URL": str(get_client(sync_client=True).api_url)}
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOW_DRIVER, cfg.model_dump_json()],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = open_writer(cfg.output)
    deadline = time.monotonic() + 180
    while sum(writer.shard_info(i) is not None for i in range(shards)) < 2:
        assert proc.poll() is None, f"the flow ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no shard was written in 180 s"
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    for p in alive:  # (the assertion below reports them; do not leave them running)
        p.kill()
    assert alive == [], f"Dask worker processes outlived the killed flow: {alive}"

    done = [i for i in range(shards) if writer.shard_info(i) is not None]
    assert 2 <= len(done) < shards and writer.read_header()["state"] == "generating"
    assert os.path.exists(f"{cfg.output}.lock")  # left by the killed run

    rerun = generate_dataset(cfg, DaskConfig(n_workers=2, processes=False, dashboard_address=None), return_state=True)
    assert rerun.is_completed(), rerun.message
    assert not os.path.exists(f"{cfg.output}.lock") and leftovers(tmp_path / "flow.zarr") == []

    clean = tmp_path / "clean.zarr"
    generate(cfg.model_copy(update={"output": str(clean)}), progress=False)
    assert_same_arrays(read_store(cfg.output), read_store(clean))
    for f in FIELDS:  # every array's metadata and chunk files, bit for bit
        assert folder_digest(tmp_path / "flow.zarr" / f) == folder_digest(clean / f) != {}
    ours, theirs = open_dataset(cfg.output).manifest, open_dataset(str(clean)).manifest
    assert {**ours, "config": {**ours["config"], "output": None}} == {
        **theirs,
        "config": {**theirs["config"], "output": None},
    }


@pytest.mark.slow
def test_train_flow_with_an_unreachable_tracking_store_fails_before_training_naming_the_uri(
    tmp_path, prefect_api, p128_store
):
    """The train-model flow opens its MLflow run before training: with the store unreachable the
    run fails at once with an error naming the store (credentials stripped), nothing trained."""
    import socket

    from homogen.flows.config import EvaluateConfig, TrackingConfig
    from homogen.flows.train import train_model
    from homogen.model.train import TrainConfig

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ck = tmp_path / "ck"
    state = train_model(
        str(p128_store),
        TrainConfig(epochs=1, width=0.125, batch_size=8, checkpoint_dir=str(ck)),
        EvaluateConfig(methods=("identity",), limit=8),
        TrackingConfig(uri=f"http://bob:hunter2@127.0.0.1:{port}"),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception) as info:
        state.result()
    assert f"MLflow tracking store http://127.0.0.1:{port} is unreachable" in str(info.value)
    assert "hunter2" not in str(info.value) and "hunter2" not in (state.message or "")
    assert not ck.exists()  # no time spent training a model that could not be recorded


@pytest.mark.slow
def test_train_flow_that_cannot_register_fails_naming_the_checkpoint(tmp_path, prefect_api, p128_store, monkeypatch):
    """Trained, then the registry refuses: the flow run fails (a worker would not report success and
    remove its folder silently) and its error says where the trained weights are; they are there."""
    from homogen.flows.config import EvaluateConfig, TrackingConfig
    from homogen.flows.train import train_model
    from homogen.model.mlflow_run import TrainingRun
    from homogen.model.train import TrainConfig, load_checkpoint

    def registry_down(self, model, scores, batch_size=64):
        raise RuntimeError("the model registry answered 503")

    monkeypatch.setattr(TrainingRun, "register", registry_down)
    ck = tmp_path / "ck"
    state = train_model(
        str(p128_store),
        TrainConfig(epochs=1, width=0.125, batch_size=8, checkpoint_dir=str(ck)),
        EvaluateConfig(methods=("identity",), limit=8),
        TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception) as info:
        state.result()
    assert "trained, but not registered (RuntimeError: the model registry answered 503)" in str(info.value)
    assert f"the checkpoint is at {ck / 'best.pt'}" in str(info.value)
    assert load_checkpoint(ck / "best.pt")["epoch"] == 1
