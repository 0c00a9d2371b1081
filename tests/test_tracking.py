"""MLflow tracking in a temporary SQLite store: run contents, registry, champion rule, secrets."""

import socket

import numpy as np
import pytest
import torch

from homogen.model.network import HomographyNet
from homogen.model.tracking import (
    CHAMPION,
    TrackingError,
    default_tracking_uri,
    load_model,
    log_training_run,
    promote_if_better,
    register_model_tags,
    resolve_tracking_uri,
    setup_tracking,
    strip_credentials,
)


def const_net(bias: float) -> HomographyNet:
    """A tiny HomographyNet whose output is ``bias`` for every offset, whatever the input."""
    torch.manual_seed(0)
    net = HomographyNet(width=0.125).eval()
    with torch.no_grad():
        net.head[-1].weight.zero_()
        net.head[-1].bias.fill_(bias)
    return net


def zero_mace(offsets: np.ndarray) -> float:
    """MACE of predicting zero offsets, by hand: mean over pairs of the mean corner offset norm."""
    return float(np.mean([np.mean([np.hypot(o[2 * k], o[2 * k + 1]) for k in range(4)]) for o in offsets]))


def const_mace(offsets: np.ndarray, b: float) -> float:
    """MACE of predicting ``b`` for every offset."""
    return zero_mace(np.asarray(offsets, np.float64) - b)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.generate import generate
    from homogen.stores import open_dataset

    root = tmp_path_factory.mktemp("tracking")
    stores = []
    for seed in (0, 1):
        out = root / f"ds{seed}.zarr"
        generate(GenerateConfig(output=str(out), sampling=SamplingConfig(pairs_per_image=4, seed=seed),
                                source=SourceConfig(max_images=8)))
        stores.append(open_dataset(str(out)))
    assert stores[0].version != stores[1].version
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    setup_tracking(uri)
    return {"root": root, "uri": uri, "ds": stores}


def test_strip_credentials():
    assert strip_credentials("s3://AKIA:s3cr3t@bucket/ds.zarr") == "s3://bucket/ds.zarr"
    assert strip_credentials("https://user:pw@host:5000/path?x=1") == "https://host:5000/path?x=1"
    assert strip_credentials("https://tok123@host/") == "https://host/"
    assert strip_credentials("postgresql://u:p@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    signed = strip_credentials("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&part=2&token=zzz")
    assert "abc" not in signed and "zzz" not in signed and "part=2" in signed
    text = strip_credentials("failed for http://a:b@h:1/x and gs://k:v@bkt/y")
    assert text == "failed for http://h:1/x and gs://bkt/y"
    assert strip_credentials("/data/user@host/ds.zarr") == "/data/user@host/ds.zarr"  # a path, not a URL
    assert strip_credentials("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert strip_credentials(3) == 3


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HOMOGEN_WORKDIR", str(tmp_path / "wd"))
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'wd' / 'mlflow.db'}"
    assert resolve_tracking_uri() == default_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri() == "http://env:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_unreachable_store_gives_clear_error_without_secret():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://alice:hunter2@127.0.0.1:{port}"
    with pytest.raises(TrackingError) as err:
        setup_tracking(uri)
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}" in msg and "unreachable" in msg
    assert "hunter2" not in msg and "alice" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no secret in a chained traceback


def test_logged_run_has_dataset_metrics_artifacts_tags_and_loads_by_alias(env, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from homogen.model.evaluate import load_test_pairs
    from homogen.model.predict import predict_homography

    ds = env["ds"][0]
    name = "hn-run"
    pairs, offsets = load_test_pairs(ds)
    history = [{"epoch": 1, "train_loss": 5.0, "val_mace": 30.0}, {"epoch": 2, "train_loss": 3.0, "val_mace": 28.0}]
    config = {"epochs": 2, "width": 0.125, "store": "s3://key:SECRETVALUE@bucket/ds.zarr", "nested": {"lr": 0.001}}
    run = log_training_run(const_net(0.0), ds, config=config, history=history, baselines=("identity", "sift"),
                           tracking_uri=env["uri"], model_name=name, checkpoint=tmp_path / "best.pt")
    assert run.model_version == "1" and run.champion
    client = MlflowClient(env["uri"])
    r = client.get_run(run.run_id)

    # Params: the whole config, flattened, without the secret.
    assert r.data.params["epochs"] == "2" and r.data.params["nested.lr"] == "0.001"
    assert r.data.params["store"] == "s3://bucket/ds.zarr"
    assert r.data.params["dataset.version"] == ds.version
    assert "SECRETVALUE" not in str(r.data.params) + str(r.data.tags)

    # Dataset input: digest = version, source = the store URI.
    (inp,) = r.inputs.dataset_inputs
    assert inp.dataset.digest == ds.version
    assert ds.uri in inp.dataset.source
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"

    # Metrics: per-epoch history as steps, test MACE beside the baselines'.
    hist = client.get_metric_history(run.run_id, "val_mace")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(1, 30.0), (2, 28.0)]
    assert len(client.get_metric_history(run.run_id, "train_loss")) == 2
    expect = zero_mace(offsets)
    assert r.data.metrics["test_mace"] == pytest.approx(expect, rel=1e-5)
    assert r.data.metrics["identity_mace"] == pytest.approx(expect, rel=1e-5)
    assert r.data.metrics["sift_mace"] < expect
    for k in ("test_mace_median", "test_mace_p95", "sift_failures", "sift_ms_per_pair"):
        assert k in r.data.metrics

    # Artifacts: the pair grid and the error histogram are real PNGs.
    arts = {a.path for a in client.list_artifacts(run.run_id, "evaluation")}
    assert {"evaluation/test_pairs.png", "evaluation/corner_errors.png", "evaluation/evaluation.md"} <= arts
    local = mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path="evaluation", tracking_uri=env["uri"],
                                                dst_path=str(tmp_path / "dl"))
    import cv2

    grid = cv2.imread(f"{local}/test_pairs.png")
    assert grid is not None and grid.shape[0] > 128
    assert (grid[..., 1] > 150).any() and (grid[..., 2] > 200).any()  # green and red quads drawn
    assert cv2.imread(f"{local}/corner_errors.png") is not None

    # Registry: version tags, alias, signature; loads back by alias and by run URI, predicts.
    mv = client.get_model_version(name, "1")
    assert mv.tags["dataset_version"] == ds.version
    assert mv.tags["rho"] == str(ds.rho) and mv.tags["patch_size"] == str(ds.patch_size)
    assert float(mv.tags["test_mace"]) == pytest.approx(expect, rel=1e-5)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    info = mlflow.models.get_model_info(f"models:/{name}/1")
    assert info.signature.inputs.inputs[0].type == np.dtype(np.uint8)
    assert tuple(info.signature.inputs.inputs[0].shape) == (-1, 2, 128, 128)

    net = load_model(f"models:/{name}@{CHAMPION}", tracking_uri=env["uri"])
    assert isinstance(net, HomographyNet)
    pred = predict_homography(net, pairs[0, 0], pairs[0, 1])
    np.testing.assert_allclose(pred.homography, np.eye(3), atol=1e-5)  # the zero-offset net: identity
    net2 = load_model(f"runs:/{run.run_id}", tracking_uri=env["uri"])
    assert isinstance(net2, HomographyNet)


def test_champion_rule_same_and_other_dataset_version(env):
    from mlflow.tracking import MlflowClient

    from homogen.model.evaluate import load_test_pairs

    ds0, ds1 = env["ds"]
    name = "hn-champion"
    client = MlflowClient(env["uri"])
    _, off0 = load_test_pairs(ds0)
    _, off1 = load_test_pairs(ds1)
    kw = dict(tracking_uri=env["uri"], model_name=name, baselines=())

    r1 = log_training_run(const_net(20.0), ds0, **kw)  # first: champion
    r2 = log_training_run(const_net(0.0), ds0, **kw)  # better on the same test set: moves
    r3 = log_training_run(const_net(10.0), ds0, **kw)  # worse: stays
    assert (r1.champion, r2.champion, r3.champion) == (True, True, False)
    assert const_mace(off0, 0) < const_mace(off0, 10) < const_mace(off0, 20)  # the premise, by hand
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == r2.model_version
    assert "<" in client.get_model_version(name, r2.model_version).tags["promotion"]

    # Another dataset version: the champion (v2, trained on ds0) is re-scored on ds1's test pairs.
    r4 = log_training_run(const_net(20.0), ds1, **kw)
    assert not r4.champion
    champ = client.get_model_version(name, r2.model_version)
    assert champ.tags["dataset_version"] == ds0.version  # unchanged: where it was trained
    assert float(champ.tags[f"test_mace.{ds1.version}"]) == pytest.approx(zero_mace(off1), rel=1e-4)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == r2.model_version


def test_promote_if_better_rules_on_registry_entries(env):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["uri"])
    name = "hn-rules"
    client.create_registered_model(name)

    def version(dsv: str, m: float) -> str:
        v = str(client.create_model_version(name, source="file:///nonexistent/model").version)
        register_model_tags(client, name, v, dataset_version=dsv, rho=32, patch_size=128, test_mace=m)
        return v

    calls = []
    v1 = version("aaaa", 10.0)
    assert promote_if_better(client, name, v1, "aaaa", 10.0) == (True, "first version: no champion yet")
    v2 = version("aaaa", 10.0)  # a tie is not better
    assert promote_if_better(client, name, v2, "aaaa", 10.0)[0] is False
    # Other dataset: without a way to score the champion there, it stays.
    v3 = version("bbbb", 1.0)
    ok, why = promote_if_better(client, name, v3, "bbbb", 1.0)
    assert not ok and "no test MACE on dataset bbbb" in why
    # With a scorer: the champion scores 5.0 on bbbb, the new one 1.0 -> moves; the score is cached.
    ok, _ = promote_if_better(client, name, v3, "bbbb", 1.0, score_champion=lambda v: calls.append(v) or 5.0)
    assert ok and calls == [v1]
    assert float(client.get_model_version(name, v1).tags["test_mace.bbbb"]) == 5.0
    # A champion that cannot be scored on the new dataset (e.g. other patch size) is kept.
    v4 = version("cccc", 0.1)

    def boom(v):
        raise ValueError("patch size 64 differs from the dataset's 128")

    ok, why = promote_if_better(client, name, v4, "cccc", 0.1, score_champion=boom)
    assert not ok and "cannot be scored" in why
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v3
    assert client.get_model_version(name, v4).tags["promotion"] == why
