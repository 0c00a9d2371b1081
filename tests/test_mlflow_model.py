"""The logged model's format: archives checked before use by both loaders, the serving contract through a
real ``mlflow models serve`` on 127.0.0.1, and pyfunc memory flat in the number of pairs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from homogen.model.loading import load_model
from homogen.model.mlflow_model import archive_path, log_network
from homogen.model.network import HomographyNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

P = 32


def net(seed: int = 0) -> HomographyNet:
    torch.manual_seed(seed)
    return HomographyNet(width=0.125, patch_size=P).eval()


def pairs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 2, P, P), dtype=np.uint8)


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[Path, HomographyNet]:
    """A network logged as homogen logs models, downloaded as a plain model folder."""
    import mlflow

    root = tmp_path_factory.mktemp("logged")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    model = net()
    exp = mlflow.create_experiment("t", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_network(model, pairs(2), {"patch_size": P, "width": 0.125, "rho": 8, "dataset_version": "v"})
    folder = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "model"))
    return Path(folder), model


def test_logging_and_loading_a_model_beside_a_training_batch_size_is_quiet(tmp_path, caplog, recwarn):
    """A training run logs its ``batch_size`` param; logging the model in that run, then loading it,
    gave two pieces of MLflow advice on every training ("Failed to log model config as params:
    Changing param values is not allowed", "Add type hints to the `predict` method"). Neither now,
    and the pyfunc's batch is still set when it is loaded."""
    import logging

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("quiet", artifact_location=(tmp_path / "art").as_uri())
    caplog.set_level(logging.WARNING)
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_param("batch_size", 32)  # as training logs it
        info = log_network(net(), pairs(2), {"patch_size": P, "width": 0.125, "rho": 8, "dataset_version": "v"})
    model = mlflow.pyfunc.load_model(info.model_uri, model_config={"predict_batch_size": 3})
    out = model.predict(pairs(7))
    assert out.shape == (7, 8) and model.unwrap_python_model().batch_size == 3
    said = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "model config as params" in m or "Add type hints" in m], said
    assert mlflow.get_run(run.info.run_id).data.params["batch_size"] == "32"


def copy_of(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def flip_bit_in_largest_member(archive: str) -> str:
    """Flip one exponent bit in the middle of the archive's largest member (a weight tensor), in place."""
    with zipfile.ZipFile(archive) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED  # raw tensor bytes: the flip lands inside a weight
    with open(archive, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        start = info.header_offset + 30 + int(name_len) + int(extra_len)
        at = start + (info.file_size // 2) // 4 * 4 + 3  # the high byte of a float32 (little-endian)
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x40]))  # an exponent bit
    return info.filename


def test_the_logged_archive_loads_in_both_loaders_and_they_agree(logged):
    import mlflow

    folder, model = logged
    x = pairs(5, seed=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load_model(folder)(torch.from_numpy(x)).detach().numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(str(folder)).predict(x), expected, atol=1e-5)


def test_a_flipped_bit_inside_a_weight_is_refused_by_both_loaders(logged, tmp_path):
    import mlflow

    folder = copy_of(logged[0], tmp_path)
    archive = archive_path(folder)
    member = flip_bit_in_largest_member(archive)
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() == member  # what Python's zipfile sees: Bad CRC-32
    with pytest.raises(ValueError, match=f"model archive {archive} is damaged \\(bad CRC-32 in {member}\\)"):
        load_model(folder)
    with pytest.raises(Exception, match="bad CRC-32") as err:
        mlflow.pyfunc.load_model(str(folder))
    assert archive in str(err.value)


def test_an_archive_rewritten_with_valid_crcs_is_refused_by_its_logged_digest(logged, tmp_path):
    import mlflow

    folder = copy_of(logged[0], tmp_path)
    archive = archive_path(folder)
    with zipfile.ZipFile(archive) as z:
        entries = [(i, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(archive, "w") as z:  # same members, one weight byte changed, every CRC right
        for k, (info, data) in enumerate(entries):
            if info.file_size == max(i.file_size for i, _ in entries):
                data = bytes([data[0] ^ 1]) + data[1:]
            z.writestr(info, data)
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
    for load in (load_model, lambda f: mlflow.pyfunc.load_model(str(f))):
        with pytest.raises(Exception, match="not the [0-9a-f]{64} recorded when it was logged: it was altered"):
            load(folder)


def test_a_truncated_archive_is_refused_naming_it(logged, tmp_path):
    folder = copy_of(logged[0], tmp_path)
    archive = archive_path(folder)
    size = os.path.getsize(archive)
    with open(archive, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match=f"model archive {archive} is not a readable zip"):
        load_model(folder)


MEMORY = textwrap.dedent("""
    import sys, threading, time
    import numpy as np, mlflow, psutil, torch
    torch.set_num_threads(1)
    folder, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = mlflow.pyfunc.load_model(folder, model_config={"predict_batch_size": batch})
    x = np.random.default_rng(0).integers(0, 256, (n, 2, 32, 32), dtype=np.uint8)
    model.predict(x[:8])
    # The resident size sampled during predict (the high-water mark ru_maxrss would hide a predict
    # peak below the import's peak).
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()
    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.0005)
    watcher = threading.Thread(target=watch)
    watcher.start()
    out = model.predict(x)
    done.set()
    watcher.join()
    assert out.shape == (n, 8) and np.isfinite(out).all()
    print((peak[0] - base) / 2**20)  # MiB
""")


def peak_growth_mib(folder: Path, n: int, batch: int) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY, str(folder), str(n), str(batch)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.strip().splitlines()[-1])


def test_pyfunc_memory_stays_flat_with_4096_pairs(logged):
    """4,096 pairs in batches of 256 (the default) grow the peak by little; in one piece, by much more."""
    folder = logged[0]
    bounded = peak_growth_mib(folder, 4096, 256)
    whole = peak_growth_mib(folder, 4096, 4096)  # the same model predicting all at once (the old behaviour)
    print(f"peak RSS growth, 4,096 pairs: batches of 256 {bounded:.0f} MiB, one piece {whole:.0f} MiB")
    # batches: a bounded working set (50 MiB here); one piece: the whole batch's activations (512 MiB here)
    assert bounded < 128, bounded
    assert whole > 4 * bounded, (bounded, whole)


# ------------------------------------------------------------------------------------ serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(logged, tmp_path_factory):
    """``mlflow models serve`` of the logged folder on 127.0.0.1 (the local environment, no conda/virtualenv)."""
    folder, model = logged
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    proc = subprocess.Popen(
        [*cmd, "models", "serve", "-m", str(folder), "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not answer /ping:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, model
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def invoke(url: str, payload) -> httpx.Response:
    return httpx.post(f"{url}/invocations", json={"inputs": payload}, timeout=60)


def test_served_model_answers_uint8_pairs_with_the_networks_offsets(served):
    url, model = served
    x = pairs(3, seed=2)
    r = invoke(url, x.tolist())
    assert r.status_code == 200, r.text
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(r.json()["predictions"], np.float32), expected, atol=1e-4)


@pytest.mark.parametrize(
    "payload",
    [
        (pairs(2) / 255.0).tolist(),  # float pixels in [0, 1]: MLflow alone would cast them to 0 and answer 200
        pairs(2).astype(np.float64).tolist(),  # floats, even integral ones: not pixels of this contract
        (pairs(2).astype(np.int64) + 300).tolist(),  # out of 0-255
        pairs(2)[:, :1].tolist(),  # one patch per pair: wrong shape
        np.zeros((2, 2, 64, 64), np.uint8).tolist(),  # another patch size
        pairs(2)[0].tolist(),  # no batch dimension
        [[[[0]]], [[[0, 1]]]],  # ragged
    ],
    ids=["float-0-1", "float-integral", "out-of-range", "one-channel", "wrong-size", "no-batch", "ragged"],
)
def test_served_model_refuses_a_bad_payload_with_a_4xx_naming_the_expected_input(served, payload):
    r = invoke(served[0], payload)
    assert 400 <= r.status_code < 500, r.text[:500]
    message = json.loads(r.text)["message"]
    assert f"expected uint8 pairs of shape (N, 2, {P}, {P})" in message, message[:500]


def test_served_model_refuses_a_payload_without_inputs(served):
    r = httpx.post(f"{served[0]}/invocations", json={"dataframe_split": {"data": [[1]]}}, timeout=60)
    assert 400 <= r.status_code < 500, r.text[:500]


def test_in_process_pyfunc_enforces_the_same_contract(logged):
    import mlflow

    model = mlflow.pyfunc.load_model(str(logged[0]))
    x = pairs(3, seed=5)
    np.testing.assert_array_equal(model.predict(x), model.predict(x.astype(np.int64)))  # integers 0-255 alike
    for bad in (x / 255.0, x.astype(np.float32), x[:, :1], x.astype(np.int16) - 1):
        with pytest.raises(Exception, match=r"expected uint8 pairs of shape \(N, 2, 32, 32\)"):
            model.predict(bad)
