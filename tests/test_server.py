"""A real Prefect server, the README's serving command, and Prefect's own CLI against them.

One server for the module (``prefect server start``: SQLite in a temporary PREFECT_HOME,
127.0.0.1, a free port, no telemetry) and one ``python -m homogen.deployments.serve`` beside it,
as the README's walk-through starts them. This is what catches a Prefect / FastAPI / SQLAlchemy
combination that installs but does not work: CLI reads answered with HTTP 422 (FastAPI >= 0.151
with Prefect 3.8.8), a scheduler that never inserts a run (SQLAlchemy 2.1), a failed run whose
reason cannot be read from the CLI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from homogen.deployments.definitions import REGENERATE_CYCLE

from helpers import stop_prefect_queue_services

pytestmark = pytest.mark.slow

_SCRIPT = Path(sys.executable).with_name("prefect")
PREFECT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prefect"]
"""The ``prefect`` command of this interpreter's environment (as the README runs it)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, procs=()) -> object:
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` (and a dead process's output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc, log in procs:
            if proc.poll() is not None:
                pytest.fail(
                    f"{name} exited with {proc.returncode} while waiting for {what}:\n{log.read_text()[-3000:]}"
                )
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    tails = "".join(f"\n--- {name}:\n{log.read_text()[-2000:]}" for name, _, log in procs)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{tails}")


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C (as a user stops it), then kill the process group it leads if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Server:
    """The running server: its API URL, its SQLite file, the environment that reaches it, the CLI."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.url = f"http://127.0.0.1:{port}/api"
        self.db = root / "home" / "prefect.db"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HOMOGEN_", "MLFLOW_"))} | {
            "PREFECT_HOME": str(root / "home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.db}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",  # the API is what is under test; the UI build costs seconds
            "HOMOGEN_WORKDIR": str(root / "work"),
            "NO_COLOR": "1",
            "COLUMNS": "250",  # the CLI's tables print whole ids
        }

    def client_env(self) -> dict:
        return self.env | {"PREFECT_API_URL": self.url}

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """``prefect <args>`` against this server, as a user types it."""
        out = subprocess.run(
            [*PREFECT, *args], env=self.client_env(), cwd=self.root, capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            pytest.fail(
                f"`prefect {' '.join(args)}` exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            )
        return out

    def api(self, method: str, path: str, body: dict | None = None):
        response = httpx.request(method, f"{self.url}/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def flow_runs(self, **filters) -> list[dict]:
        return self.api("POST", "flow_runs/filter", {"flow_runs": filters, "limit": 200})

    def deployment(self, name: str) -> dict:
        return self.api("GET", f"deployments/name/{name}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``prefect server start`` and ``python -m homogen.deployments.serve``, as the README starts them."""
    root = tmp_path_factory.mktemp("prefect-server")
    (root / "home").mkdir()
    srv = Server(root, free_port())
    port = srv.url.split(":")[2].split("/")[0]
    server_log, serve_log = root / "server.log", root / "serve.log"
    server_proc = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port],
        env=srv.env,
        cwd=root,
        stdout=server_log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs = [("prefect server start", server_proc, server_log)]
    serve_proc = None
    try:
        wait_for("the server's health check", lambda: srv.api("GET", "health"), 90, procs)
        serve_proc = subprocess.Popen(
            [sys.executable, "-m", "homogen.deployments.serve"],
            # polls for runs every second, not every 10 s: the test's deployment run starts sooner
            env=srv.client_env() | {"PREFECT_RUNNER_POLL_FREQUENCY": "1"},
            cwd=root,
            stdout=serve_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(("python -m homogen.deployments.serve", serve_proc, serve_log))
        srv.procs = procs
        wait_for(
            "both deployments to be registered", lambda: len(srv.api("POST", "deployments/filter", {})) == 2, 90, procs
        )
        yield srv
    finally:
        stop_prefect_queue_services()  # the events this process sent here are delivered; none stay bound to it
        if serve_proc is not None:
            stop(serve_proc)
        stop(server_proc)


def test_prefect_cli_lists_the_served_deployments(server):
    deployments = server.cli("deployment", "ls")
    assert "generate-and-train/local" in deployments.stdout and "generate-and-train/regenerate" in deployments.stdout


def test_the_scheduler_creates_the_weekly_regenerate_runs_each_with_its_rho(server):
    regenerate = server.deployment("generate-and-train/regenerate")
    runs = wait_for(
        "the scheduler to insert the regenerate runs",
        lambda: [
            r for r in server.flow_runs(deployment_id={"any_": [regenerate["id"]]}) if r["state_type"] == "SCHEDULED"
        ],
        60,
        server.procs,
    )
    by_rho: dict[int, list] = {}
    for run in runs:
        by_rho.setdefault(run["parameters"]["rho"], []).append(run)
    assert sorted(by_rho) == sorted(rho for rho, _ in REGENERATE_CYCLE) == [16, 24, 32]
    weekday = {16: 0, 24: 2, 32: 4}  # Monday, Wednesday, Friday (cron 1, 3, 5)
    for rho, scheduled in by_rho.items():
        for run in scheduled:
            when = time.strptime(run["expected_start_time"][:19], "%Y-%m-%dT%H:%M:%S")
            assert (when.tm_wday, when.tm_hour, when.tm_min) == (weekday[rho], 3, 0), run["expected_start_time"]
    # and `prefect flow-run ls` shows them
    listed = server.cli("flow-run", "ls", "--state", "Scheduled", "--limit", "50")
    assert sum(r["id"] in listed.stdout for r in runs) >= min(len(runs), 3)


def test_a_run_with_an_impossible_device_fails_and_the_cli_says_why(server):
    started = server.cli(
        "deployment",
        "run",
        "generate-and-train/local",
        "--param",
        "device=tpu",
        "--watch",
        "--watch-interval",
        "1",
        check=False,
        timeout=180,
    )
    run = server.flow_runs(deployment_id={"any_": [server.deployment("generate-and-train/local")["id"]]})[0]
    assert run["state_type"] == "FAILED", started.stdout + started.stderr
    logs = server.cli("flow-run", "logs", run["id"])
    assert "train.device: 'tpu' is not a device" in logs.stdout and "use auto, cpu, cuda" in logs.stdout
    inspected = server.cli("flow-run", "inspect", run["id"])
    assert "FAILED" in inspected.stdout.upper() and "train.device" in inspected.stdout
    assert not (server.root / "work" / "datasets").exists()  # refused before the first shard


SECRET = "n0t-in-the-database"


def test_credentials_in_url_parameters_are_refused_before_anything_is_stored(server):
    local = server.deployment("generate-and-train/local")
    of_local = {"deployment_id": {"any_": [local["id"]]}}  # the scheduler adds regenerate runs meanwhile
    before = len(server.flow_runs(**of_local))
    refused = server.cli(
        "deployment",
        "run",
        "generate-and-train/local",
        "--param",
        f"source=https://reader:{SECRET}@images.example.com/coco",
        check=False,
    )
    said = " ".join((refused.stdout + refused.stderr).split())  # the server's schema check, as the CLI prints it
    assert refused.returncode != 0 and "no credentials in a URL parameter" in said, said
    assert "name a Secret block holding the storage options in config.storage_secret" in said
    for params in (
        {"config": {"generate": {"output": f"s3://AKIAEXAMPLE:{SECRET}@bucket/ds.zarr"}}},
        {"config": {"tracking": {"uri": f"https://mlflow.example.com/?token={SECRET}"}}},
        {"output": f"gs://{SECRET}@bucket/ds.zarr"},
    ):
        response = httpx.post(f"{server.url}/deployments/{local['id']}/create_flow_run", json={"parameters": params})
        assert response.status_code == 409 and "name a Secret block" in response.text, params
    assert len(server.flow_runs(**of_local)) == before  # no run was created
    for path in server.db.parent.glob("prefect.db*"):  # the database, its WAL and journal, byte for byte
        assert SECRET.encode() not in path.read_bytes(), path.name


def test_storage_credentials_come_from_a_secret_block_into_this_process_and_its_workers(server, monkeypatch):
    import fsspec
    import fsspec.config
    from distributed import Client, LocalCluster
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from homogen.flows.cluster import SERVED_DASK_ADDRESS_ENV
    from homogen.flows.config import InvalidParameters, PipelineConfig
    from homogen.flows.generate_and_train import use_storage_secret

    monkeypatch.setattr(fsspec.config, "conf", {})
    monkeypatch.setenv("FSSPEC_MEMORY", "{}")  # restored (removed) after the test
    monkeypatch.setenv(SERVED_DASK_ADDRESS_ENV, "tcp://127.0.0.1:40000")  # a serving process's warm cluster
    token = "t0ken-from-a-secret-block"
    with temporary_settings({PREFECT_API_URL: server.url}):
        Secret(value={"memory": {"token": token}}).save("homogen-storage", overwrite=True)
        Secret(value="a plain string").save("not-storage-options", overwrite=True)
        assert use_storage_secret("homogen-storage") == ["memory"]
        assert SERVED_DASK_ADDRESS_ENV not in os.environ  # its workers lack the options: the run starts its own
        with pytest.raises(InvalidParameters, match="storage options per protocol"):
            use_storage_secret("not-storage-options")
    assert fsspec.filesystem("memory", skip_instance_cache=True).storage_options["token"] == token
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:  # a worker process started afterwards has them too
            seen = client.submit(
                lambda: fsspec.filesystem("memory", skip_instance_cache=True).storage_options.get("token")
            )
            assert seen.result() == token
    # what the run's parameters carry is the block's name; the server keeps the value encrypted
    assert PipelineConfig(storage_secret="homogen-storage").model_dump()["storage_secret"] == "homogen-storage"
    for path in server.db.parent.glob("prefect.db*"):
        assert token.encode() not in path.read_bytes(), path.name


# --- an external Dask cluster: `dask scheduler` + 2 `dask worker` processes on 127.0.0.1 ------------


def dask_command(name: str) -> list[str]:
    """``dask scheduler`` / ``dask worker`` of this interpreter's environment."""
    script = Path(sys.executable).with_name("dask")
    return [str(script), name] if script.exists() else [sys.executable, "-m", f"distributed.cli.dask_{name}"]


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory, server):
    """A scheduler and 2 single-threaded workers, started as a user starts them, with no Prefect setting at all.

    The workers' PREFECT_HOME is a folder of their own: a worker that started a Prefect server
    (ephemeral mode) would leave its SQLite database there.
    """
    root = tmp_path_factory.mktemp("dask-cluster")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {k: v for k, v in server.env.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(root / "prefect-home")
    }
    logs = [root / "scheduler.log", root / "worker-0.log", root / "worker-1.log"]
    procs = [
        subprocess.Popen(
            [*dask_command("scheduler"), "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            env=env,
            cwd=root,
            stdout=logs[0].open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ]
    procs += [
        subprocess.Popen(
            [
                *dask_command("worker"),
                address,
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--name",
                f"w{i}",
            ],
            env=env,
            cwd=root,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i, log in enumerate(logs[1:])
    ]
    from distributed import Client

    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield address, root, logs
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_the_flow_on_an_external_dask_cluster_makes_the_local_cluster_dataset_and_workers_never_touch_prefect(
    server, external_cluster, tmp_path
):
    import numpy as np
    from distributed import Client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.flows.cluster import DaskConfig
    from homogen.flows.generate import generate_dataset
    from homogen.stores import FIELDS, open_dataset

    address, root, logs = external_cluster
    config = GenerateConfig(
        source=SourceConfig(max_images=12, test_fraction=0.25),
        sampling=SamplingConfig(pairs_per_image=2),
        shard_size=3,
        chunk_size=8,
        output=str(tmp_path / "external.zarr"),
    )
    with temporary_settings({PREFECT_API_URL: server.url}):
        external = generate_dataset(config, DaskConfig(address=address))
        local = generate_dataset(
            config.model_copy(update={"output": str(tmp_path / "local.zarr")}),
            DaskConfig(n_workers=2, processes=False, dashboard_address=None),
        )
    assert external["version"] == local["version"] and external["pairs"] == local["pairs"] == 12 * 2
    a, b = open_dataset(external["uri"])[:], open_dataset(local["uri"])[:]
    for field in FIELDS:
        np.testing.assert_array_equal(a[field], b[field], err_msg=field)
    with Client(address) as client:
        imported = client.run(lambda: "prefect" in sys.modules)
    assert len(imported) == 2 and not any(imported.values())  # the workers never imported Prefect
    assert not (root / "prefect-home").exists()  # nor started a server of their own
    for log in logs:
        text = log.read_text()
        assert "database is locked" not in text and "Traceback" not in text, f"{log.name}:\n{text[-2000:]}"


# --- events, automations and the gpu concurrency limit ------------------------------------------------


@pytest.fixture
def receiver():
    """An HTTP endpoint on 127.0.0.1 that keeps the bodies POSTed to it (where the notification block points)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/notify", bodies
    finally:
        httpd.shutdown()


def events_named(server: Server, name: str) -> list[dict]:
    return server.api("POST", "events/filter", {"filter": {"event": {"name": [name]}}, "limit": 50})["events"]


def test_pipeline_events_arrive_and_drive_the_automations_and_the_gpu_limit_exists(server, receiver, tmp_path):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.flows.cluster import DaskConfig
    from homogen.flows.events import model_registered
    from homogen.flows.generate import generate_dataset

    url, received = receiver
    automations = [sys.executable, "-m", "homogen.deployments.automations", "--notify", "custom-webhook/homogen-ops"]
    refused = subprocess.run(automations, env=server.client_env(), cwd=server.root, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("error: no deployment train-model/gpu on this server")
    assert "python -m homogen.deployments.gpu --pool gpu" in refused.stderr and refused.stderr.count("\n") == 1
    # the README's walk-through: the GPU pool and deployment, a notification block, then the one command
    server.cli("work-pool", "create", "gpu", "--type", "process")
    command = [sys.executable, "-m", "homogen.deployments.gpu", "--pool", "gpu"]
    done = subprocess.run(
        command, env=server.client_env(), cwd=server.root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with temporary_settings({PREFECT_API_URL: server.url}):
        block = CustomWebhookNotificationBlock(name="ops", url=url, json_data={"text": "{{subject}}: {{body}}"})
        block.save("homogen-ops", overwrite=True)
    missing = [*automations[:-1], "custom-webhook/nobody"]
    refused = subprocess.run(missing, env=server.client_env(), cwd=server.root, capture_output=True, text=True)
    assert refused.returncode == 2 and "--notify custom-webhook/nobody: no such block" in refused.stderr
    done = subprocess.run(
        automations, env=server.client_env(), cwd=server.root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "automation homogen-train-on-commit" in done.stdout and "automation homogen-regenerate-failed" in done.stdout
    assert server.api("GET", "v2/concurrency_limits/gpu")["limit"] == 1
    names = {a["name"] for a in server.api("POST", "automations/filter", {})}
    assert {"homogen-train-on-commit", "homogen-regenerate-failed"} <= names
    again = subprocess.run(
        automations, env=server.client_env(), cwd=server.root, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and len(server.api("POST", "automations/filter", {})) == len(names)  # replaced

    # a dataset is committed by the generate-dataset flow: the event arrives...
    config = GenerateConfig(
        source=SourceConfig(max_images=8, test_fraction=0.25),
        sampling=SamplingConfig(pairs_per_image=2),
        shard_size=4,
        chunk_size=8,
        output=str(tmp_path / "committed.zarr"),
    )
    with temporary_settings({PREFECT_API_URL: server.url}):
        dataset = generate_dataset(config, DaskConfig(n_workers=1, processes=False, dashboard_address=None))
    resource = f"homogen.dataset.{dataset['version']}"
    [event] = wait_for(
        "homogen.dataset.committed",
        lambda: [
            e
            for e in events_named(server, "homogen.dataset.committed")
            if e["resource"]["prefect.resource.id"] == resource
        ],
        60,
        server.procs,
    )
    assert event["payload"]["uri"] == dataset["uri"] and event["payload"]["pairs"] == dataset["pairs"] == 16
    assert event["payload"]["recipe"]["rho"] == 32 and event["payload"]["version"] == dataset["version"]
    assert any(r["prefect.resource.id"].startswith("prefect.flow-run.") for r in event["related"])
    # ...and the automation runs train-model/gpu on that store
    gpu = server.deployment("train-model/gpu")
    wait_for(
        "the automation's train-model/gpu run",
        lambda: [
            r
            for r in server.flow_runs(deployment_id={"any_": [gpu["id"]]})
            if r["parameters"].get("dataset") == dataset["uri"]
        ],
        60,
        server.procs,
    )

    # model registered and promoted: both events, related to the dataset version
    with temporary_settings({PREFECT_API_URL: server.url}):
        sent = model_registered(
            "homographynet", 3, dataset["version"], True, model_uri="models:/homographynet/3", run_id="r", test_mace=1.5
        )
    assert sent == ["homogen.model.registered", "homogen.model.promoted"]
    for name in sent:
        [event] = wait_for(name, lambda name=name: events_named(server, name), 60, server.procs)
        assert event["resource"]["prefect.resource.id"] == "homogen.model.homographynet.3"
        assert {"prefect.resource.id": resource, "prefect.resource.role": "dataset"}.items() <= event["related"][
            0
        ].items()
        assert event["payload"]["test_mace"] == 1.5 and event["payload"]["champion"] is True

    # a failed regenerate run is reported through the block
    server.cli(
        "deployment",
        "run",
        "generate-and-train/regenerate",
        "--param",
        "device=tpu",
        "--watch",
        "--watch-interval",
        "1",
        check=False,
        timeout=180,
    )
    [report] = wait_for("the failure report", lambda: [b for b in received if "regenerate" in b], 60, server.procs)
    assert "homogen: a regenerate run failed" in report and "prefect flow-run logs" in report
    assert "train.device" in report  # the state message says why


def test_a_served_run_shards_on_the_serving_process_cluster_and_its_model_events_arrive(server):
    """The serving process keeps one Dask cluster for its runs (no worker start per run); a real run of
    generate-and-train/local on it completes, and its train-model subflow emits homogen.model.registered."""
    import json
    import re

    serving = server.procs[1][2].read_text()
    address = re.search(r"Dask cluster for the runs at (tcp://127\.0\.0\.1:\d+)", serving)
    assert address, serving[-3000:]
    config = {
        "generate": {
            "source": {"max_images": 8, "test_fraction": 0.25, "val_fraction": 0.25},
            "sampling": {"pairs_per_image": 4},
        },
        "train": {"epochs": 1},
        "evaluate": {"methods": ["identity"]},
    }
    local = server.deployment("generate-and-train/local")
    before = {r["id"] for r in server.flow_runs(deployment_id={"any_": [local["id"]]})}
    started = server.cli(
        "deployment",
        "run",
        "generate-and-train/local",
        "--param",
        f"config={json.dumps(config)}",
        "--watch",
        "--watch-interval",
        "2",
        check=False,
        timeout=500,
    )
    [run] = [r for r in server.flow_runs(deployment_id={"any_": [local["id"]]}) if r["id"] not in before]
    logs = server.cli("flow-run", "logs", run["id"]).stdout
    assert run["state_type"] == "COMPLETED", started.stdout[-2000:] + logs[-3000:]
    [generate] = [
        r for r in server.flow_runs(parent_flow_run_id={"any_": [run["id"]]}) if r["name"].startswith("generate ")
    ]
    generate_logs = " ".join(server.cli("flow-run", "logs", generate["id"]).stdout.split())
    assert f"shards on the Dask cluster at {address.group(1)}" in generate_logs, generate_logs[-3000:]
    dataset, version = re.search(r"dataset (\w+) -> homographynet version (\d+)", logs).groups()
    registered = wait_for(
        "the run's homogen.model.registered",
        lambda: [
            e
            for e in events_named(server, "homogen.model.registered")
            if e["resource"]["prefect.resource.id"] == f"homogen.model.homographynet.{version}"
        ],
        60,
        server.procs,
    )
    assert registered[0]["related"][0]["prefect.resource.id"] == f"homogen.dataset.{dataset}"
