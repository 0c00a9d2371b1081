"""MLflow tracking on real stores and real stores of runs: a live run, its contents, the portable
model, the registry and champion rule, and what MLflow prints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import traceback

import numpy as np
import pytest
import torch

from homogen.model.data import load_split
from homogen.model.evaluate import score_test
from homogen.model.loading import load_model
from homogen.model.mlflow_run import TrainingRun, config_params
from homogen.model.network import HomographyNet
from homogen.model.registry import CHAMPION, IDENTITY_MARGIN, promote_if_better, register_model_tags
from homogen.model.tracking import (
    DEFAULT_EXPERIMENT,
    TrackingError,
    default_tracking_uri,
    experiment_name,
    resolve_tracking_uri,
    setup_tracking,
)
from homogen.model.train import TrainConfig, train

from helpers import p32_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(width=0.125, patch_size=32, batch_size=16, val_batch_size=64)


def const_net(bias: float, patch_size: int = 32) -> HomographyNet:
    """A tiny HomographyNet whose output is ``bias`` for every offset, whatever the input."""
    torch.manual_seed(0)
    net = HomographyNet(width=0.125, patch_size=patch_size).eval()
    with torch.no_grad():
        net.head[-1].weight.zero_()
        net.head[-1].bias.fill_(bias)
    return net


def fitted_net(ds, steps: int = 300, seed: int = 0) -> HomographyNet:
    """A tiny HomographyNet fitted on the test pairs of ``ds`` themselves: it beats the identity there by far.

    (Fitting on test pairs is what a real training must never do; here it makes a model whose
    test MACE is known to be good, quickly, to exercise the champion rule.)
    """
    pairs, offsets = load_split(ds, "test")
    torch.manual_seed(seed)
    net = HomographyNet(width=0.125, patch_size=int(ds.patch_size))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(pairs), torch.from_numpy(offsets)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.smooth_l1_loss(net(x), y).backward()
        opt.step()
    return net.eval()


def zero_mace(offsets: np.ndarray) -> float:
    """MACE of predicting zero offsets, by hand: mean over pairs of the mean corner offset norm."""
    return float(np.mean([np.mean([np.hypot(o[2 * k], o[2 * k + 1]) for k in range(4)]) for o in offsets]))


def const_mace(offsets: np.ndarray, b: float) -> float:
    return zero_mace(np.asarray(offsets, np.float64) - b)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    stores = [p32_store(root / f"ds{seed}.zarr", seed=seed) for seed in (0, 1)]
    assert stores[0].version != stores[1].version
    for ds in stores:
        counts = ds.split_counts()
        assert min(counts["train"], counts["val"], counts["test"]) > 0
    return {"root": root, "uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", "ds": stores}


def register_const(net, ds, uri, name):
    """A run that trains nothing: the test split scored once, logged, the model registered."""
    with TrainingRun(ds, {"kind": "const"}, tracking_uri=uri, model_name=name, system_metrics=False) as run:
        scores = score_test(ds, net, methods=())
        return run, run.register(net, scores), scores


# ----------------------------------------------------------------------------------- setup


def test_tracking_uri_and_experiment_come_from_argument_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("HOMOGEN_WORKDIR", str(tmp_path / "wd"))
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'wd' / 'mlflow.db'}"
    assert resolve_tracking_uri() == default_tracking_uri()
    assert experiment_name() == DEFAULT_EXPERIMENT == "homogen"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert resolve_tracking_uri() == "http://env:5000" and experiment_name() == "from-env"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db" and experiment_name("mine") == "mine"


def test_the_flows_and_the_cli_log_to_the_same_experiment():
    from homogen.flows.config import TrackingConfig

    assert TrackingConfig().experiment == DEFAULT_EXPERIMENT


def test_an_unreachable_store_fails_naming_it_with_no_credential_anywhere_in_the_traceback(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackingError) as err:
        setup_tracking(f"http://alice:hunter2@127.0.0.1:{port}")
    assert f"http://127.0.0.1:{port}" in str(err.value) and "unreachable" in str(err.value)
    assert err.value.__cause__ is not None  # the cause is kept for a maintainer...
    chain, exc = [], err.value
    while exc is not None:
        chain.append("".join(traceback.format_exception_only(exc)))
        exc = exc.__cause__ or exc.__context__
    assert len(chain) > 1 and not any("hunter2" in m or "alice" in m for m in chain)  # ...and holds no credential


def test_config_params_are_flat_and_without_credentials():
    params = config_params({"epochs": 2, "store": "s3://key:SECRETVALUE@bucket/ds.zarr", "nested": {"lr": 0.001}})
    assert params == {"epochs": 2, "store": "s3://bucket/ds.zarr", "nested.lr": 0.001}


# ----------------------------------------------------------------------------------- a live run


def test_metrics_reach_the_tracking_store_while_training_runs(env, tmp_path):
    from mlflow.tracking import MlflowClient

    ds = env["ds"][0]
    observer = MlflowClient(env["uri"])  # another client, as the MLflow UI would read the store
    seen = []
    cfg = TrainConfig(epochs=3, patience=None, checkpoint_dir=str(tmp_path / "ck"), **FAST)
    with TrainingRun(ds, cfg, tracking_uri=env["uri"], run_name="live", source="homogen test") as run:

        def on_epoch(record):
            run.log_epoch(record)
            r = observer.get_run(run.run_id)
            history = observer.get_metric_history(run.run_id, "val_mace")
            seen.append((record["epoch"], r.info.status, sorted(m.step for m in history), r.info.end_time))
            assert history[-1].value == pytest.approx(record["val_mace"])

        t0 = time.time()
        result = train(ds, cfg, progress=False, on_epoch=on_epoch)
        t1 = time.time()
    # Each epoch's metrics were in the store when that epoch ended, with the run still open.
    assert seen == [(1, "RUNNING", [1], None), (2, "RUNNING", [1, 2], None), (3, "RUNNING", [1, 2, 3], None)]
    r = observer.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.info.start_time / 1000 <= t0 + 0.5 and r.info.end_time / 1000 >= t1 - 0.5  # the run spans training
    assert {"train_loss", "val_mace", "val_mace_median", "val_mace_p95", "lr", "samples_per_s"} <= r.data.metrics.keys()
    assert [
        m.value for m in sorted(observer.get_metric_history(run.run_id, "val_mace"), key=lambda m: m.step)
    ] == pytest.approx([h["val_mace"] for h in result.history])
    assert r.data.tags["mlflow.source.name"] == "homogen test"  # this project, not the hosting process
    # The datasets: train, val, test splits of this version, each with its context.
    inputs = {
        i.dataset.name: ({t.key: t.value for t in i.tags}["mlflow.data.context"], i.dataset.digest)
        for i in r.inputs.dataset_inputs
    }
    assert inputs == {
        f"homogen-{ds.version}/train": ("training", ds.version),
        f"homogen-{ds.version}/val": ("validation", ds.version),
        f"homogen-{ds.version}/test": ("evaluation", ds.version),
    }
    # The validation metrics are linked to the val dataset and to the run's model.
    (model_input,) = r.inputs.model_inputs
    val = [m for m in observer.get_logged_model(model_input.model_id).metrics if m.key == "val_mace"]
    assert sorted(m.step for m in val) == [1, 2, 3]
    assert {m.dataset_name for m in val} == {f"homogen-{ds.version}/val"}


def test_a_failed_training_marks_its_run_failed(env, tmp_path):
    from mlflow.tracking import MlflowClient

    ds = env["ds"][0]
    with pytest.raises(RuntimeError, match="disk gone"):
        with TrainingRun(ds, None, tracking_uri=env["uri"], system_metrics=False) as run:
            raise RuntimeError("disk gone")
    assert MlflowClient(env["uri"]).get_run(run.run_id).info.status == "FAILED"


def test_a_training_stopped_by_ctrl_c_marks_its_run_killed_not_failed(env):
    from mlflow.tracking import MlflowClient

    ds = env["ds"][0]
    with pytest.raises(KeyboardInterrupt):
        with TrainingRun(ds, None, tracking_uri=env["uri"], system_metrics=False) as run:
            raise KeyboardInterrupt
    assert MlflowClient(env["uri"]).get_run(run.run_id).info.status == "KILLED"


def test_a_tracked_run_holds_test_scores_artifacts_and_a_registered_portable_model(env, tmp_path):
    import cv2
    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    ds = env["ds"][0]
    name = "hn-run"
    cfg = TrainConfig(epochs=2, checkpoint_dir=str(tmp_path / "ck"), **FAST)
    with TrainingRun(ds, cfg, tracking_uri=env["uri"], model_name=name, source="homogen test") as run:
        result = train(ds, cfg, progress=False, on_epoch=run.log_epoch)
        scores = score_test(ds, result.model, methods=("identity", "sift"))
        run.log_result(result)
        run.log_test(scores)
        registered = run.register(result.model, scores)
    client = MlflowClient(env["uri"])
    r = client.get_run(run.run_id)
    beats = r.data.metrics["test_mace"] <= (1 - IDENTITY_MARGIN) * r.data.metrics["identity_mace"]
    assert registered.model_version == "1" and registered.champion == beats
    assert r.data.metrics["best_epoch"] == result.best_epoch
    assert r.data.metrics["best_val_mace"] == pytest.approx(result.best_val_mace)
    assert r.data.metrics["best_val_mace"] == pytest.approx(min(h["val_mace"] for h in result.history))

    assert r.data.params["epochs"] == "2" and r.data.params["dataset.version"] == ds.version
    _, offsets = load_split(ds, "test")
    with torch.no_grad():
        pairs, _ = load_split(ds, "test")
        pred = result.model(torch.from_numpy(pairs)).numpy()
    from homogen.model.metrics import mace

    assert r.data.metrics["test_mace"] == pytest.approx(mace(pred, offsets), rel=1e-5)
    assert r.data.metrics["identity_mace"] == pytest.approx(zero_mace(offsets), rel=1e-5)
    assert r.data.metrics["test_pairs"] == len(offsets)
    for k in ("test_mace_median", "test_mace_p95", "sift_mace", "sift_failures", "sift_ms_per_pair"):
        assert k in r.data.metrics
    assert r.data.tags["model_version"] == "1" and r.data.tags["champion"] == str(beats).lower()

    # The evaluation files: the grid is homogen.render's (true quadrilaterals green, predicted red).
    arts = {a.path for a in client.list_artifacts(run.run_id, "evaluation")}
    assert {"evaluation/test_pairs.png", "evaluation/corner_errors.png", "evaluation/evaluation.md"} <= arts
    local = mlflow.artifacts.download_artifacts(
        run_id=run.run_id, artifact_path="evaluation", tracking_uri=env["uri"], dst_path=str(tmp_path / "dl")
    )
    grid = cv2.imread(f"{local}/test_pairs.png")
    green = (grid[..., 0] == 0) & (grid[..., 1] == 255) & (grid[..., 2] == 0)
    red = (grid[..., 0] == 0) & (grid[..., 1] == 0) & (grid[..., 2] == 255)
    assert green.any() and red.any()

    # The registered version: tags, metadata, signature, and the same network through homogen's loader.
    mv = client.get_model_version(name, "1")
    assert mv.run_id == run.run_id
    assert mv.tags["dataset_version"] == ds.version and float(mv.tags[f"test_mace.{ds.version}"]) == pytest.approx(
        r.data.metrics["test_mace"], rel=1e-5
    )
    folder = mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / "m"))
    spec = yaml.safe_load(open(os.path.join(folder, "MLmodel")))
    assert spec["metadata"]["patch_size"] == 32 and spec["metadata"]["width"] == 0.125
    assert spec["metadata"]["rho"] == 8 and spec["metadata"]["dataset_version"] == ds.version
    assert "uint8" in spec["signature"]["inputs"] and "[-1, 2, 32, 32]" in spec["signature"]["inputs"]
    assert os.path.isfile(os.path.join(folder, "artifacts", "model.pt2")) and "input_example.json" in os.listdir(folder)
    assert len(spec["metadata"]["archive_sha256"]) == 64
    loaded = load_model(f"models:/{name}/1", tracking_uri=env["uri"])
    with torch.no_grad():
        assert torch.allclose(loaded(torch.from_numpy(pairs)), result.model(torch.from_numpy(pairs)), atol=1e-5)


BLOCK_HOMOGEN = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("homogen", "model", "flows"):
                raise ImportError(f"{name} is not installed here")

    sys.meta_path.insert(0, Block())
""")


def test_the_champion_loads_with_mlflow_pyfunc_in_a_process_that_cannot_import_homogen(env, tmp_path):
    ds = env["ds"][0]
    name = "hn-portable"
    net = fitted_net(ds, steps=150)  # depends on its input, so the check is not trivial; and champion
    assert register_const(net, ds, env["uri"], name)[1].champion
    pairs, _ = load_split(ds, "test")
    pairs = pairs[:5]
    np.save(tmp_path / "pairs.npy", pairs)
    script = BLOCK_HOMOGEN + textwrap.dedent(f"""
        import numpy as np, mlflow
        try:
            import homogen
        except ImportError:
            pass
        else:
            raise SystemExit("homogen imported")
        mlflow.set_tracking_uri({env["uri"]!r})
        model = mlflow.pyfunc.load_model("models:/{name}@{CHAMPION}")
        out = model.predict(np.load({str(tmp_path / "pairs.npy")!r}))
        np.save({str(tmp_path / "out.npy")!r}, out)
        assert not [m for m in sys.modules if m.split(".")[0] in ("homogen", "model", "flows")]
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (5, 8) and out.dtype == np.float32
    with torch.no_grad():
        expected = net(torch.from_numpy(pairs)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert "pickle" not in proc.stderr.lower()  # no warning about a pickled model


def test_a_tampered_model_archive_with_pickled_weights_is_refused_by_homogens_loader(env, tmp_path):
    import json
    import zipfile

    import yaml

    from homogen.model.mlflow_model import archive_path
    from homogen.model.mlflow_pyfunc import file_sha256

    import mlflow

    ds = env["ds"][0]
    register_const(const_net(1.0), ds, env["uri"], "hn-tamper")  # registered, not champion: loads by version
    folder = mlflow.artifacts.download_artifacts(
        "models:/hn-tamper/1", dst_path=str(tmp_path / "m"), tracking_uri=env["uri"]
    )
    assert isinstance(load_model(folder), HomographyNet)  # the genuine folder loads
    archive = archive_path(folder)
    with zipfile.ZipFile(archive) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    [cfg_name] = [n for n in entries if n.endswith("weights_config.json")]
    cfg = json.loads(entries[cfg_name])
    next(iter(cfg["config"].values()))["use_pickle"] = True
    entries[cfg_name] = json.dumps(cfg).encode()
    with zipfile.ZipFile(archive, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="altered"):  # the digest recorded when it was logged no longer fits
        load_model(folder)
    # one who also rewrites the recorded digest still meets the pickle check
    mlmodel = os.path.join(folder, "MLmodel")
    text = open(mlmodel).read()
    old_digest = yaml.safe_load(text)["metadata"]["archive_sha256"]
    open(mlmodel, "w").write(text.replace(old_digest, file_sha256(archive)))
    with pytest.raises(ValueError, match="pickled.*refused"):
        load_model(folder)


# ----------------------------------------------------------------------------------- once per split


def test_each_split_is_scored_once_per_run(env, tmp_path, monkeypatch):
    """Val once per epoch (selection), test once after training; logging and registering score nothing again."""
    ds = env["ds"][0]
    counts = ds.split_counts()
    scored: list[int] = []
    forward = HomographyNet.forward

    def counting_forward(self, x):
        if not self.training and type(x) is torch.Tensor:  # real evaluation calls, not export's traced ones
            scored.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(HomographyNet, "forward", counting_forward)
    cfg = TrainConfig(epochs=2, patience=None, checkpoint_dir=str(tmp_path / "ck"), **FAST)
    with TrainingRun(ds, cfg, tracking_uri=env["uri"], model_name="hn-once", system_metrics=False) as run:
        result = train(ds, cfg, progress=False, on_epoch=run.log_epoch)
        assert sum(scored) == 2 * counts["val"]
        scored.clear()
        scores = score_test(ds, result.model, methods=("identity",))
        run.log_test(scores)
        run.register(result.model, scores)
    assert sum(scored) == counts["test"] == len(scores.pairs)


# ----------------------------------------------------------------------------------- champion rule


def test_champion_rule_on_the_same_and_on_another_dataset_version(env):
    from mlflow.tracking import MlflowClient

    ds0, ds1 = env["ds"]
    name = "hn-champion"
    client = MlflowClient(env["uri"])
    _, off0 = load_split(ds0, "test")

    good, better = fitted_net(ds0, steps=60), fitted_net(ds0, steps=300)
    (_, r1, s1), (_, r2, s2), (_, r3, _) = (register_const(n, ds0, env["uri"], name) for n in (good, better, good))
    m1, m2 = s1.results["homographynet"]["mean"], s2.results["homographynet"]["mean"]
    assert m2 < m1 <= (1 - IDENTITY_MARGIN) * zero_mace(off0)  # the premise, by hand
    assert (r1.champion, r2.champion, r3.champion) == (True, True, False)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == r2.model_version
    assert "<" in client.get_model_version(name, r2.model_version).tags["promotion"]
    # the alias is the one place that says "champion": v1's run no longer does
    r1_run = client.get_model_version(name, r1.model_version).run_id
    assert client.get_run(r1_run).data.tags["champion"] == "false"

    # Another dataset version: the champion (v2, scored on ds0) is scored on ds1's test pairs and cached there.
    _, r4, s4 = register_const(fitted_net(ds1, steps=300), ds1, env["uri"], name)
    champ = client.get_model_version(name, r2.model_version)
    assert champ.tags["dataset_version"] == ds0.version
    champ_on_ds1 = float(champ.tags[f"test_mace.{ds1.version}"])
    assert int(champ.tags[f"test_pairs.{ds1.version}"]) == len(s4.pairs)
    from homogen.model.metrics import pair_errors

    with torch.no_grad():
        pred = better(torch.from_numpy(s4.pairs)).numpy()
    assert champ_on_ds1 == pytest.approx(float(pair_errors(pred, s4.offsets).mean()), rel=1e-4)
    champ_is_bad = champ_on_ds1 > (1 - IDENTITY_MARGIN) * zero_mace(s4.offsets)
    assert r4.champion == (s4.results["homographynet"]["mean"] < champ_on_ds1 or champ_is_bad)


def test_a_nan_or_worse_than_identity_network_never_becomes_champion(env):
    from mlflow.tracking import MlflowClient

    from homogen.model.registry import NotRegistrable

    ds = env["ds"][0]
    name = "hn-gate"
    client = MlflowClient(env["uri"])
    with pytest.raises(NotRegistrable, match="not finite.*not registered.*lower the learning rate"):
        register_const(const_net(float("nan")), ds, env["uri"], name)
    assert not client.search_model_versions(f"name='{name}'")  # nothing registered
    [run] = client.search_runs(
        [client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id],
        filter_string="tags.not_registered LIKE '%not finite%'",
    )
    assert run.info.status == "FAILED"

    for bias in (0.0, 4.0):  # the identity itself, and worse than it: registered, never champion
        _, r, _ = register_const(const_net(bias), ds, env["uri"], name)
        assert not r.champion and "not 5% below the identity's" in r.promotion
        assert client.get_model_version(name, r.model_version).tags["promotion"] == r.promotion
    with pytest.raises(Exception, match="alias"):
        client.get_model_version_by_alias(name, CHAMPION)
    _, r, _ = register_const(fitted_net(ds), ds, env["uri"], name)
    assert r.champion and r.promotion.startswith("first champion")


def _crown(client, name: str, net, ds, uri: str) -> str:
    """Register ``net`` and set the alias on it by hand, as an older homogen (without the gate) did."""
    import mlflow

    from homogen.model.mlflow_model import log_network

    pairs, _ = load_split(ds, "test")
    setup_tracking(uri)
    with mlflow.start_run():
        meta = {"patch_size": int(ds.patch_size), "width": 0.125, "rho": int(ds.rho), "dataset_version": ds.version}
        info = log_network(net, pairs[:2], meta)
    v = str(mlflow.register_model(info.model_uri, name).version)
    register_model_tags(
        client, name, v, dataset_version=ds.version, rho=int(ds.rho), patch_size=int(ds.patch_size), test_mace=999.0
    )
    client.set_registered_model_alias(name, CHAMPION, v)
    return v


@pytest.mark.parametrize("bad", ["nan", "worse than identity"])
def test_a_later_good_model_is_promoted_over_a_bad_champion(env, bad):
    from mlflow.tracking import MlflowClient

    ds = env["ds"][0]
    name = f"hn-bad-champion-{bad.split()[0]}"
    client = MlflowClient(env["uri"])
    v_bad = _crown(client, name, const_net(float("nan") if bad == "nan" else 8.0), ds, env["uri"])
    _, r, _ = register_const(fitted_net(ds), ds, env["uri"], name)
    assert r.champion and f"replaced v{v_bad}" in r.promotion and "does not beat the identity" in r.promotion
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == r.model_version


def test_promote_if_better_rules_on_registry_entries(env):
    from mlflow.tracking import MlflowClient

    setup_tracking(env["uri"])
    client = MlflowClient(env["uri"])
    name = "hn-rules"
    client.create_registered_model(name)

    def version(dsv: str, m: float) -> str:
        v = str(client.create_model_version(name, source="file:///nonexistent/model").version)
        register_model_tags(client, name, v, dataset_version=dsv, rho=32, patch_size=128, test_mace=m, test_pairs=100)
        return v

    ident = {"identity_mace": 20.0, "test_pairs": 100}
    calls = []
    v0 = version("aaaa", 19.5)  # not 5 % better than the identity: registered, not champion
    ok, why = promote_if_better(client, name, v0, "aaaa", 19.5, **ident)
    assert not ok and "not 5% below the identity's 20.0000" in why
    v1 = version("aaaa", 10.0)
    ok, why = promote_if_better(client, name, v1, "aaaa", 10.0, **ident)
    assert ok and why.startswith("first champion")
    v2 = version("aaaa", 10.0)  # a tie is not better
    assert promote_if_better(client, name, v2, "aaaa", 10.0, **ident)[0] is False
    v3 = version("bbbb", 1.0)  # other dataset, no way to score the champion there: it stays
    ok, why = promote_if_better(client, name, v3, "bbbb", 1.0, **ident)
    assert not ok and "no test MACE on dataset bbbb" in why
    ok, _ = promote_if_better(client, name, v3, "bbbb", 1.0, score_champion=lambda v: calls.append(v) or 5.0, **ident)
    assert ok and calls == [v1]
    assert float(client.get_model_version(name, v1).tags["test_mace.bbbb"]) == 5.0
    # a cached score on another number of test pairs is not the same pairs: the champion is scored again
    v4 = version("bbbb", 0.9)
    ok, _ = promote_if_better(
        client,
        name,
        v4,
        "bbbb",
        0.9,
        score_champion=lambda v: calls.append(v) or 0.5,
        identity_mace=20.0,
        test_pairs=50,
    )
    assert not ok and calls == [v1, v3]
    v5 = version("cccc", 0.1)

    def unreachable(v):
        raise RuntimeError("tracking server went away")

    ok, why = promote_if_better(client, name, v5, "cccc", 0.1, score_champion=unreachable, **ident)
    assert not ok and "could not be scored" in why

    def other_patch(v):
        raise ValueError("patch size 64 differs from the dataset's 128")

    ok, why = promote_if_better(client, name, v5, "cccc", 0.1, score_champion=other_patch, **ident)
    assert ok and f"replaced v{v3}: it cannot be scored" in why
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v5


# ----------------------------------------------------------------------------------- credentials

SERVER = textwrap.dedent("""
    import os, sys
    db, art = sys.argv[1], sys.argv[2]
    os.environ.update({"_MLFLOW_SERVER_FILE_STORE": db, "_MLFLOW_SERVER_REGISTRY_STORE": db,
                       "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/", "_MLFLOW_SERVER_ARTIFACT_DESTINATION": art,
                       "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true"})
    from mlflow.server import app
    from werkzeug.serving import make_server
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()
""")


@pytest.mark.slow
def test_no_credential_of_the_tracking_uri_appears_in_mlflows_output(env, tmp_path):
    """``homogen train --tracking-uri http://user:password@host``: MLflow prints run links; none holds the password."""
    from mlflow.tracking import MlflowClient

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, f"sqlite:///{tmp_path / 'server.db'}", str(tmp_path / "art")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        deadline = time.time() + 180  # the server creates its tables on the first request: wait for it
        while True:
            try:
                MlflowClient(f"http://127.0.0.1:{port}").search_experiments(max_results=1)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        env_vars = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        proc = subprocess.run(
            [
                "homogen",
                "train",
                str(env["ds"][0].uri),
                "--epochs",
                "1",
                "--width",
                "0.125",
                "--batch-size",
                "16",
                "--methods",
                "identity",
                "--checkpoint-dir",
                str(tmp_path / "ck"),
                "--device",
                "cpu",
                "--tracking-uri",
                f"http://alice:hunter2@127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=500,
            env={**env_vars, "HOMOGEN_WORKDIR": str(tmp_path / "wd")},
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-3000:]
        assert "View run" in output and f"http://127.0.0.1:{port}/" in output  # MLflow did print its links
        assert "hunter2" not in output and "alice" not in output
        runs = MlflowClient(f"http://127.0.0.1:{port}").search_runs(
            [MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id]
        )
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert "hunter2" not in str(runs[0].data.tags) + str(runs[0].data.params)
    finally:
        server.terminate()
        server.wait(timeout=30)
