"""Dispatched training through a real Prefect server, a process work pool and its worker, and a real MLflow
server, all on 127.0.0.1 (CPU): the deployment's training settings reach the worker, overridden only by
the fields the parent's config set, and the model comes back registered."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_server import PREFECT, Server, free_port, stop, wait_for

pytestmark = pytest.mark.slow

POOL = "gpu-test"
DEPLOYMENT_TRAIN = {"device": "cpu", "width": 0.125, "epochs": 1, "batch_size": 16, "val_batch_size": 64, "patience": 1}
"""What ``train-model/gpu`` is registered with here: CPU (no GPU in CI), and a width and epochs the
parent's quick-start defaults (width 0.25, 2 epochs) differ from."""

MLFLOW_SERVER = textwrap.dedent("""
    import os, sys
    db, art, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ.update({"_MLFLOW_SERVER_FILE_STORE": db, "_MLFLOW_SERVER_REGISTRY_STORE": db,
                       "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/", "_MLFLOW_SERVER_ARTIFACT_DESTINATION": art,
                       "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true"})
    from mlflow.server import app
    from werkzeug.serving import make_server
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()
""")

PARENT = textwrap.dedent("""
    import json, sys
    from prefect import flow
    from homogen.flows.config import PipelineConfig
    from homogen.flows.generate_and_train import train_remotely

    @flow(name="dispatch-parent")
    def parent(store: str, config: dict) -> dict:
        return train_remotely("train-model/gpu", store, PipelineConfig.model_validate(config))

    print(json.dumps(parent(sys.argv[1], json.loads(sys.argv[2]))))
""")


def make_store(path: Path) -> str:
    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.generate import generate

    generate(
        GenerateConfig(
            output=str(path),
            chunk_size=16,
            sampling=SamplingConfig(pairs_per_image=4, patch_size=32, rho=8),
            source=SourceConfig(max_images=16, test_fraction=0.25, val_fraction=0.25),
        ),
        progress=False,
    )
    return str(path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Prefect server, MLflow server, the ``train-model/gpu`` deployment on a process pool, and its worker."""
    root = tmp_path_factory.mktemp("dispatch")
    (root / "home").mkdir()
    srv = Server(root, free_port())
    mlflow_port = free_port()
    tracking = f"http://127.0.0.1:{mlflow_port}"
    logs = {name: root / f"{name}.log" for name in ("server", "mlflow", "worker")}
    port = srv.url.split(":")[2].split("/")[0]
    started = []

    def start(name, cmd, env, cwd=root):
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=logs[name].open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        started.append((name, proc, logs[name]))
        return proc

    try:
        start("server", [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port], srv.env)
        start(
            "mlflow",
            [
                sys.executable,
                "-c",
                MLFLOW_SERVER,
                f"sqlite:///{root / 'mlflow.db'}",
                str(root / "mlartifacts"),
                str(mlflow_port),
            ],
            srv.env,
        )
        wait_for("the Prefect server", lambda: srv.api("GET", "health"), 90, started)
        srv.cli("work-pool", "create", POOL, "--type", "process")
        out = subprocess.run(
            [sys.executable, "-m", "homogen.deployments.gpu", "--pool", POOL, "--config", json.dumps(DEPLOYMENT_TRAIN)],
            env=srv.client_env(),
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        worker_home = root / "worker-work"  # a lasting folder on the "GPU machine"
        start(
            "worker",
            [*PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
            srv.client_env() | {"PREFECT_WORKER_QUERY_SECONDS": "1", "HOMOGEN_WORKDIR": str(worker_home)},
        )
        store = make_store(root / "shared" / "ds.zarr")  # a path both "machines" reach
        yield {"srv": srv, "tracking": tracking, "store": store, "root": root, "procs": started}
    finally:
        for _, proc, _ in reversed(started):
            stop(proc)


def run_parent(cluster, config: dict) -> subprocess.CompletedProcess:
    srv = cluster["srv"]
    return subprocess.run(
        [sys.executable, "-c", PARENT, cluster["store"], json.dumps(config)],
        env=srv.client_env(),
        cwd=cluster["root"],
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_dispatched_training_runs_with_the_gpu_deployments_width_and_epochs(cluster):
    from mlflow.tracking import MlflowClient

    config = {
        "train_deployment": "train-model/gpu",
        "tracking": {"uri": cluster["tracking"], "model_name": "hn-dispatch"},
        "generate": {"sampling": {"patch_size": 32, "rho": 8}},
        "train": {"patch_size": 32, "lr": 0.002},  # set by the user: these override the deployment's
        "evaluate": {"methods": ["identity"], "limit": 8},
    }
    proc = run_parent(cluster, config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model_version"] == "1" and result["model_name"] == "hn-dispatch"

    # registry_uri too: an earlier test in this process may have set MLflow's process-wide registry URI
    client = MlflowClient(cluster["tracking"], registry_uri=cluster["tracking"])
    params = client.get_run(result["run_id"]).data.params
    # the deployment's width and epochs (not the parent's quick-start 0.25 and 2), the user's lr and patch size
    assert (params["width"], params["epochs"], params["device"]) == ("0.125", "1", "cpu")
    assert (params["lr"], params["patch_size"]) == ("0.002", "32")
    assert client.get_model_version("hn-dispatch", "1").run_id == result["run_id"]

    # the worker's flow run received exactly that config
    runs = cluster["srv"].flow_runs(name={"like_": "train"})
    [worker_run] = [r for r in runs if r["deployment_id"]]
    assert worker_run["parameters"]["config"] == {**DEPLOYMENT_TRAIN, "patch_size": 32, "lr": 0.002}
    assert worker_run["parameters"]["tracking"]["uri"] == cluster["tracking"]
    # the checkpoints are in the worker's lasting folder, not its removed temporary one
    assert list((cluster["root"] / "worker-work" / "checkpoints").glob("*/best.pt"))


def test_dispatch_with_a_sqlite_tracking_uri_is_refused_before_anything_runs_remotely(cluster):
    before = len(cluster["srv"].flow_runs())
    config = {"train_deployment": "train-model/gpu", "tracking": {"uri": "sqlite:///work/mlflow.db"}}
    proc = run_parent(cluster, config)
    assert proc.returncode != 0
    assert "a store on this machine only" in proc.stdout + proc.stderr
    assert len(cluster["srv"].flow_runs()) == before + 1  # the parent's own (failed) run, no train-model run
