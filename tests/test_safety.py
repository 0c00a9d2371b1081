"""Safety: no secret is written anywhere; nothing loads pickled code; servers stay on loopback.

Secrets are planted where users put them (credentials inside a source URL, tokens in the
environment) and every byte the pipeline writes is searched for them.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import struct
import threading
import tracemalloc
import zlib
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest

from homogen.config import SAMPLE_ROOT, GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.sources import SourceError, list_images
from homogen.stores import open_dataset

from helpers import PHOTOS, QuietHTTPServer

URL_SECRET = "pa55-In-URL-7f3a"
ENV_SECRET = "env-T0ken-91c2"
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS", "HF_TOKEN")


def files_containing(root: Path, *secrets: str) -> list[str]:
    """Every file under ``root`` (or ``root`` itself) whose bytes contain any of ``secrets``."""
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return sorted(str(f) for f in files if any(s.encode() in f.read_bytes() for s in secrets))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A folder served over HTTP on 127.0.0.1: (folder, its URL with ``alice:<URL_SECRET>@`` in it)."""
    root = tmp_path_factory.mktemp("http")
    server = QuietHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://alice:{URL_SECRET}@127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def http_coco(http_root):
    """A served COCO layout (3 bundled images + one corrupt file listed in the annotations); its
    URL with credentials."""
    folder, url = http_root
    root = folder / "coco"
    shutil.copytree(SAMPLE_ROOT, root)
    ann_path = root / "annotations" / "instances_train2017.json"
    ann = json.loads(ann_path.read_text())
    ann["images"] = ann["images"][:3] + [{"id": 999, "file_name": "broken.jpg", "width": 640, "height": 480}]
    ann_path.write_text(json.dumps(ann))
    (root / "train2017" / "broken.jpg").write_bytes(b"this is not a JPEG")
    return f"{url}/coco"


@pytest.fixture(scope="module")
def http_store(http_root):
    """A small finished store (P=32, 8 images, train and test pairs) served over HTTP; its URL with credentials."""
    folder, url = http_root
    generate(
        GenerateConfig(
            source=SourceConfig(max_images=8, test_fraction=0.3, val_fraction=0.3),
            output=str(folder / "ds.zarr"),
            sampling=SamplingConfig(patch_size=32, rho=8, pairs_per_image=4),
        ),
        progress=False,
    )
    return f"{url}/ds.zarr"


@pytest.fixture
def secret_env(monkeypatch):
    for name in SECRET_ENV_VARS:
        monkeypatch.setenv(name, ENV_SECRET)


# --------------------------------------------------------------------------- library: the store


@pytest.mark.parametrize("name", ["data.zarr", "data.h5"])
def test_no_credential_from_the_source_url_or_environment_reaches_the_store(name, tmp_path, http_coco, secret_env):
    output = tmp_path / name
    manifest = generate(
        GenerateConfig(
            source=SourceConfig(root=http_coco), sampling=SamplingConfig(pairs_per_image=1), output=str(output)
        ),
        progress=False,
    )
    # the credentials URL really was used: 3 images made pairs, the corrupt one was quarantined
    assert manifest["num_pairs"] == 3
    assert [q["image_id"] for q in manifest["quarantine"]] == [999]
    # ... and the store records where the data came from, without the credentials
    public = http_coco.replace(f"alice:{URL_SECRET}@", "")
    assert manifest["source"]["root"] == public
    assert manifest["quarantine"][0]["path"] == f"{public}/train2017/broken.jpg"
    assert open_dataset(str(output)).manifest == manifest
    # no byte of any file of the store (manifest, shard attributes, arrays) holds a secret
    store_files = [output] + ([Path(f"{output}.parts")] if name.endswith(".h5") else [])
    assert [f for root in store_files for f in files_containing(root, URL_SECRET, ENV_SECRET)] == []
    assert files_containing(tmp_path, URL_SECRET, ENV_SECRET) == []


def test_a_source_error_does_not_echo_the_credentials(http_coco):
    missing = http_coco.replace("/coco", "/nowhere")
    with pytest.raises(SourceError) as info:
        list_images(SourceConfig(root=missing, kind="coco"))
    # The one line names the missing source and the fix (issue 16), and never the credentials.
    assert "127.0.0.1" in str(info.value) and "does not exist" in str(info.value) and "--source" in str(info.value)
    assert URL_SECRET not in str(info.value)


@pytest.mark.slow
def test_no_secret_reaches_checkpoints_the_mlflow_run_or_its_artifacts(tmp_path, http_store, secret_env):
    """Train on a store read over HTTP with credentials in its URL, tokens in the environment, then
    log and register the model: no byte of the checkpoints, the MLflow database or the artifacts
    (model, evaluation, dataset manifest) holds a secret."""
    import mlflow

    from homogen.model.evaluate import score_test
    from homogen.model.mlflow_run import TrainingRun
    from homogen.model.train import TrainConfig, train

    ds = open_dataset(http_store)
    assert ds.split_counts()["test"] > 0 and ds.split_counts()["val"] > 0
    cfg = TrainConfig(epochs=1, width=0.125, patch_size=32, batch_size=8, checkpoint_dir=str(tmp_path / "ck"))
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    with TrainingRun(ds, cfg, tracking_uri=uri) as tracked:
        result = train(ds, cfg, progress=False, on_epoch=tracked.log_epoch)
        scores = score_test(ds, result.model, ("identity",))
        tracked.log_test(scores)
        assert tracked.register(result.model, scores).model_version == "1"
    run = mlflow.MlflowClient(uri).get_run(tracked.run_id)
    public = http_store.replace(f"alice:{URL_SECRET}@", "")
    assert run.data.tags["store_uri"] == public  # where the data came from is recorded, minus credentials
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["best.pt", "last.pt"]
    assert files_containing(tmp_path, URL_SECRET, ENV_SECRET) == []


# ------------------------------------------------------------------ inputs that attack memory


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grayscale PNG of ``width x height``, streamed: a few hundred kB on
    disk that would take width*height bytes (and more) to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_images_are_used_or_refused_in_bounded_memory(tmp_path):
    """A 10000x10000 JPEG (100 MB as pixels) makes its pairs, and a 12000x12000 PNG bomb (144 MB
    as pixels, 0.2 MB on disk) is quarantined, while generation's peak allocation stays a few MB."""
    import cv2
    import numpy as np

    src = tmp_path / "src"
    src.mkdir()
    photo = cv2.imread(str(Path(SAMPLE_ROOT) / "train2017" / "000000000009.jpg"), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(photo, (10000, 10000), interpolation=cv2.INTER_LINEAR)
    (src / "000000000001.jpg").write_bytes(cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
    del big
    (src / "000000000002.png").write_bytes(png_bomb(12000, 12000))
    cfg = GenerateConfig(source=SourceConfig(root=str(src), kind="folder"), output=str(tmp_path / "o.zarr"))

    tracemalloc.start()
    try:
        manifest = generate(cfg, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert manifest["num_pairs"] == 4 and manifest["num_images"] == 1
    [entry] = manifest["quarantine"]
    assert entry["image_id"] == 2 and "too large to decode in bounded memory: 12000x12000 PNG" in entry["reason"]
    assert peak < 20e6, f"generation peaked at {peak / 1e6:.0f} MB of allocations"
    pairs = open_dataset(cfg.output)[:]["pairs"]
    assert pairs.shape == (4, 2, 128, 128) and np.ptp(pairs) > 0  # real picture content, not a blank frame


# ------------------------------------------------------------- models: no pickled code is run


class Payload:
    """Unpickling this runs code: it writes ``marker`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint shaped like the trainer's, whose model weights are a code-running pickle."""
    import torch

    torch.save({"format": 1, "model": Payload(marker), "width": 0.125, "patch_size": 32, "dataset_version": "x"}, path)
    return path


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The control: a plain ``torch.load`` (weights_only=False) of the file does write the marker."""
    import torch

    marker = tmp_path / "pwned"
    torch.load(malicious_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.read_text() == "pwned"


def test_checkpoint_loaders_refuse_pickled_code(tmp_path):
    from homogen.model import train as training
    from homogen.model.loading import load_model

    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(training.CheckpointError, match=str(evil)) as info:
        training.load_checkpoint(evil)
    assert "refused" in str(info.value) and "weights_only=False" not in str(info.value)  # no unsafe advice
    with pytest.raises(training.CheckpointError, match="refused"):
        load_model(str(evil))
    assert not marker.exists()


def test_resuming_from_a_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    from homogen.model.train import CheckpointError, TrainConfig, train

    store = tmp_path / "ds.zarr"  # with val pairs: a store without them is refused before the checkpoint is read
    generate(
        GenerateConfig(
            source=SourceConfig(max_images=8, test_fraction=0.3, val_fraction=0.3),
            output=str(store),
            sampling=SamplingConfig(patch_size=32, rho=8, pairs_per_image=4),
        ),
        progress=False,
    )
    marker = tmp_path / "pwned"
    (tmp_path / "ck").mkdir()
    malicious_checkpoint(tmp_path / "ck" / "last.pt", marker)
    cfg = TrainConfig(
        epochs=1, width=0.125, patch_size=32, batch_size=8, checkpoint_dir=str(tmp_path / "ck"), resume=True
    )
    with pytest.raises(CheckpointError, match="last.pt"):
        train(store, cfg, progress=False)
    assert not marker.exists()


def test_cli_predict_refuses_a_malicious_checkpoint(tmp_path):
    import typer
    from typer.testing import CliRunner

    from homogen.model.cli import register

    app = typer.Typer()
    register(app)
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.pt", marker)
    result = CliRunner().invoke(app, ["predict", str(PHOTOS[0]), str(PHOTOS[1]), "--model", str(evil)])
    assert result.exit_code == 2 and "cannot load model" in result.output
    assert not marker.exists()


def test_mlflow_model_folder_with_pickled_code_is_refused(tmp_path):
    """A model folder (what ``models:/`` and ``runs:/`` URIs download to) whose weights would run
    code when unpickled: loading it must refuse, not execute it. Both the pickle format (which
    homogen never logs) and a pt2 archive edited to hold a pickled weight."""
    import io
    import json
    import zipfile

    import mlflow.pytorch
    import numpy as np
    import torch

    from homogen.model.loading import load_model
    from homogen.model.network import HomographyNet

    net = HomographyNet(width=0.125, patch_size=32).eval()
    marker = tmp_path / "pwned"
    pickled = tmp_path / "pickled"
    mlflow.pytorch.save_model(net, str(pickled), serialization_format="pickle", pip_requirements=["torch"])
    torch.save(Payload(marker), next(pickled.rglob("model.pth")))
    with pytest.raises(ValueError, match="not a HomographyNet MLflow model"):
        load_model(str(pickled))

    folder = tmp_path / "model"
    mlflow.pytorch.save_model(
        net,
        str(folder),
        serialization_format="pt2",
        input_example=np.zeros((2, 2, 32, 32), np.uint8),
        metadata={"patch_size": 32, "width": 0.125},
        pip_requirements=["torch"],
    )
    assert isinstance(load_model(str(folder)), HomographyNet)  # the genuine folder loads
    archive = next(folder.rglob("model.pt2"))
    with zipfile.ZipFile(archive) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    [config_name] = [n for n in entries if n.endswith("weights_config.json")]
    config = json.loads(entries[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    [weight_name] = [n for n in entries if n.endswith("/weights/" + first["path_name"])]
    entries[config_name], entries[weight_name] = json.dumps(config).encode(), buf.getvalue()
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(ValueError, match="pickled.*refused"):
        load_model(str(folder))
    assert not marker.exists()


# ------------------------------------------------------------------- servers stay on loopback

LOOPBACK = {"127.0.0.1", "::1"}
SERVER_COMMANDS = re.compile(r"(prefect server start|mlflow (?:server|ui)|dask[ -]scheduler)[^\n`]*")


def listening(pids: set[int]) -> set[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state owned by ``pids``."""
    import psutil

    return {
        (c.pid, c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{}, {"processes": False}, {"dashboard_address": None}, {"processes": False, "dashboard_address": None}],
    ids=["defaults", "threads", "no-dashboard", "threads-no-dashboard"],
)
def test_the_pipelines_dask_cluster_listens_on_loopback_only(options):
    """The LocalCluster the generate flow starts (scheduler, its HTTP server, workers, nannies),
    with its defaults and each documented option: every socket it opens listens on 127.0.0.1."""
    import psutil

    from homogen.flows.cluster import DaskConfig, cluster_kwargs, local_cluster

    kwargs = cluster_kwargs(DaskConfig(n_workers=1, **options))  # one worker
    me = psutil.Process()
    before = listening({me.pid})
    cluster = local_cluster(**kwargs)
    try:
        opened = listening({me.pid} | {p.pid for p in me.children(recursive=True)}) - before
    finally:
        cluster.close()
    assert len(opened) >= 2, opened  # at least the scheduler's HTTP server and a worker's
    assert {ip for _, ip, _ in opened} <= LOOPBACK, opened


def test_prefect_and_mlflow_servers_default_to_loopback():
    """The ephemeral Prefect server of the quick start and ``prefect server start`` / ``mlflow
    server`` without ``--host`` bind 127.0.0.1 (no project setting, e.g. a prefect.toml, widens it)."""
    import mlflow.cli
    from prefect.settings import get_current_settings

    assert get_current_settings().server.api.host in LOOPBACK
    [host] = [p for p in mlflow.cli.cli.commands["server"].params if p.name == "host"]
    assert host.default in LOOPBACK


def test_server_commands_in_the_docs_bind_loopback():
    """Every command of the README, docs, flows and deployments that starts a server either names
    --host 127.0.0.1 (or localhost) or leaves the loopback default."""
    repo = Path(__file__).resolve().parents[1]
    files = [
        repo / "README.md",
        *(repo / "docs").glob("*.md"),
        *(repo / "deployments").glob("*.py"),
        *(repo / "flows").glob("*.py"),
    ]
    found = []
    for f in files:
        for m in SERVER_COMMANDS.finditer(f.read_text()):
            command = m.group(0)
            found.append(f"{f.name}: {command}")
            host = re.search(r"--host[ =](\S+)", command)
            assert "0.0.0.0" not in command and (host is None or host.group(1) in LOOPBACK | {"localhost"}), found[-1]
    assert found, "no server command found: the pattern no longer matches the docs"
