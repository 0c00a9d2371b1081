"""``homogen lineage`` and ``homogen datasets`` against a real SQLite tracking store holding two
really trained (tiny, 1-epoch) and registered models, in two experiments."""

from __future__ import annotations

import json
import re

import pytest
from homogen.model.cli import register
from homogen.model.evaluate import score_test
from homogen.model.lineage import dataset_lineage, dataset_versions, model_lineage
from homogen.model.mlflow_run import TrainingRun
from homogen.model.train import TrainConfig, train
from typer.testing import CliRunner

from homogen.cli import app
from homogen.stores import open_dataset

from helpers import p32_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

register(app)  # the model commands, as the homogen.cli entry point adds them

NAME = "hn-lineage"


def fit_on_test_pairs(net, ds, steps: int = 300):
    """Go on fitting ``net`` on the test pairs of ``ds`` themselves, so that it beats the identity there
    (what a real training must never do; here it makes a version the champion rule will compare)."""
    import torch

    from homogen.model.data import load_split

    pairs, offsets = load_split(ds, "test")
    x, y = torch.from_numpy(pairs), torch.from_numpy(offsets)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.smooth_l1_loss(net(x), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Store 0 trained on (1 epoch) in experiment ``homogen``, its version made champion by hand when the
    rule did not (a 1-epoch network rarely beats the identity by 5 %); then store 1 (1 epoch, then fitted
    on its test pairs) in experiment ``other``: registering it scores the champion on store 1 (rule 3)."""
    import torch
    from mlflow.tracking import MlflowClient

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lineage")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    stores, runs = [], []
    for seed, experiment in ((0, "homogen"), (1, "other")):
        ds = p32_store(root / f"ds{seed}.zarr", seed=seed)
        cfg = TrainConfig(
            epochs=1,
            width=0.125,
            patch_size=32,
            batch_size=16,
            val_batch_size=64,
            checkpoint_dir=str(root / f"ck{seed}"),
        )
        with TrainingRun(
            ds, cfg, tracking_uri=uri, experiment=experiment, model_name=NAME, system_metrics=False
        ) as run:
            model = train(ds, cfg, progress=False, on_epoch=run.log_epoch).model
            if seed == 1:
                model = fit_on_test_pairs(model, ds)
            scores = score_test(ds, model, methods=())
            run.log_test(scores)
            registered = run.register(model, scores)
        if seed == 0 and not registered.champion:  # as an operator pins a release
            MlflowClient(uri).set_registered_model_alias(NAME, "champion", registered.model_version)
        stores.append(ds)
        runs.append((run.run_id, registered))
    assert "test MACE" in runs[1][1].promotion and f"v{runs[0][1].model_version}" in runs[1][1].promotion
    return {"uri": uri, "ds": stores, "runs": runs, "root": root}


def cli(*args):
    return CliRunner().invoke(app, list(args))


def champion(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_model_version_by_alias(NAME, "champion").version


def test_lineage_of_a_dataset_names_the_run_and_model_version_trained_on_it(tracked):
    uri, ds0 = tracked["uri"], tracked["ds"][0]
    run0, reg0 = tracked["runs"][0]
    answer = dataset_lineage(ds0.version, uri)
    (use,) = answer.runs
    assert use.run_id == run0 and use.roles == ["train", "val", "test"] and use.store_uri == ds0.uri
    assert use.models and use.models[0].startswith(f"{NAME} v{reg0.model_version}")
    from mlflow.tracking import MlflowClient

    test_mace = MlflowClient(uri).get_run(run0).data.metrics["test_mace"]
    assert use.test_mace == pytest.approx(test_mace)
    mine = [m for m in answer.models if m.version == reg0.model_version]
    assert (
        len(mine) == 1 and mine[0].trained_on == ds0.version and mine[0].test_mace == pytest.approx(test_mace, abs=1e-5)
    )
    assert answer.champions == {NAME: str(champion(uri))}
    result = cli("lineage", ds0.version, "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    assert run0[:12] in result.output and f"{NAME} v{reg0.model_version}" in result.output
    assert f"champion of {NAME}: v{champion(uri)}" in result.output
    # a store path gives the same answer as its version
    assert json.loads(cli("lineage", ds0.uri, "--json", "--tracking-uri", uri).output)["runs"][0]["run_id"] == run0


def test_lineage_of_the_newer_dataset_also_lists_the_champion_scored_on_it(tracked):
    """v1 was champion when v2 was registered on store 1: the champion rule scored v1 on store 1's test
    pairs, so v1 has a test MACE on store 1 although it never trained there."""
    uri, ds1 = tracked["uri"], tracked["ds"][1]
    (_, reg0), (run1, reg1) = tracked["runs"]
    answer = dataset_lineage(ds1.version, uri)
    assert [u.run_id for u in answer.runs] == [run1]
    by_version = {m.version: m for m in answer.models}
    assert set(by_version) == {reg0.model_version, reg1.model_version}
    assert by_version[reg0.model_version].trained_on == tracked["ds"][0].version
    assert by_version[reg1.model_version].trained_on == ds1.version
    assert [m.version for m in answer.models if m.champion] == [str(champion(uri))]


def test_lineage_of_a_model_version_names_its_train_val_and_test_datasets_and_stores(tracked):
    uri = tracked["uri"]
    for (run_id, reg), ds in zip(tracked["runs"], tracked["ds"]):
        answer = model_lineage(f"models:/{NAME}/{reg.model_version}", uri)
        assert answer.run_id == run_id
        assert [(d.role, d.version, d.store_uri) for d in answer.datasets] == [
            ("train", ds.version, ds.uri),
            ("val", ds.version, ds.uri),
            ("test", ds.version, ds.uri),
        ]
    best = model_lineage(f"models:/{NAME}@champion", uri)
    assert best.version == str(champion(uri)) and best.aliases == ["champion"]
    result = cli("lineage", f"models:/{NAME}@champion", "--tracking-uri", uri)
    assert result.exit_code == 0 and re.search(rf"train\s+dataset {best.datasets[0].version}", result.output)


def test_the_model_version_carries_the_store_uri(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracked["uri"])
    for (_, reg), ds in zip(tracked["runs"], tracked["ds"]):
        assert client.get_model_version(NAME, reg.model_version).tags["store_uri"] == ds.uri


def test_datasets_lists_both_versions_newest_first_with_recipe_pairs_store_and_models(tracked):
    uri, (ds0, ds1) = tracked["uri"], tracked["ds"]
    rows = dataset_versions(uri)
    assert [r.version for r in rows] == [ds1.version, ds0.version]
    for r, ds, (_, reg) in zip(rows, (ds1, ds0), tracked["runs"][::-1]):
        assert r.pairs == len(ds) and r.stores == [ds.uri] and r.runs == 1
        assert "P=32 rho=8" in r.recipe and f"seed={ds.sampling['seed']}" in r.recipe
        assert [m.split(" (")[0] for m in r.models] == [f"{NAME} v{reg.model_version}"]
    result = cli("datasets", "--tracking-uri", uri)
    lines = result.output.splitlines()
    assert result.exit_code == 0 and lines[0].startswith("version")
    assert lines[1].startswith(ds1.version) and lines[2].startswith(ds0.version)


def test_questions_nobody_can_answer_are_one_line_and_create_nothing(tracked, tmp_path):
    uri = tracked["uri"]
    result = cli("lineage", "abcdefabcdef", "--tracking-uri", uri)
    assert result.exit_code == 1 and "no run in this tracking store used it" in result.output
    for ref in (f"models:/{NAME}/99", "models:/nobody@champion", "models:/", "not-a-version"):
        result = cli("lineage", ref, "--tracking-uri", uri)
        assert result.exit_code == 2 and result.output.startswith("error:") and result.output.count("\n") == 1, ref
    missing = tmp_path / "typo.db"
    result = cli("datasets", "--tracking-uri", f"sqlite:///{missing}")
    assert result.exit_code == 2 and "no MLflow tracking store" in result.output and not missing.exists()


def test_a_store_opened_by_a_relative_path_is_recorded_where_it_lives(tracked, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tracked["root"])
    ds = open_dataset("ds0.zarr")
    assert ds.uri == "ds0.zarr"
    with TrainingRun(ds, None, tracking_uri=tracked["uri"], experiment="relative", system_metrics=False) as run:
        pass
    r = MlflowClient(tracked["uri"]).get_run(run.run_id)
    where = str(tracked["root"] / "ds0.zarr")
    assert r.data.tags["store_uri"] == where
    assert {json.loads(i.dataset.source)["uri"] for i in r.inputs.dataset_inputs} == {where}
    monkeypatch.chdir("/")
    assert dataset_lineage(ds.version, tracked["uri"]).runs[0].store_uri == where  # from anywhere


def test_datasets_with_stores_lists_the_folder_with_each_store_s_models_and_names_a_broken_one(tracked):
    root, (ds0, ds1) = tracked["root"], tracked["ds"]
    broken = root / "broken.zarr"
    broken.mkdir(exist_ok=True)
    (broken / "zarr.json").write_text("{")  # truncated
    result = cli("datasets", "--stores", str(root), "--json", "--tracking-uri", tracked["uri"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["version"] for r in out["tracking"]] == [ds1.version, ds0.version]
    by_path = {r["path"]: r for r in out["stores"]}
    assert set(by_path) == {str(root / "ds0.zarr"), str(root / "ds1.zarr"), str(broken)}
    assert by_path[str(root / "ds0.zarr")]["version"] == ds0.version
    assert by_path[str(root / "ds1.zarr")]["pairs"] == len(ds1)
    assert "not valid JSON" in by_path[str(broken)]["problem"] and by_path[str(broken)]["version"] is None
    text = cli("datasets", "--stores", str(root), "--tracking-uri", tracked["uri"]).output
    folder_table = text.split("stores under", 1)[1]
    (line,) = [x for x in folder_table.splitlines() if x.endswith("ds0.zarr")]
    assert line.startswith(ds0.version) and f"{NAME} v{tracked['runs'][0][1].model_version}" in line
