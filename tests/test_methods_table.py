"""One table for every method on the same pairs: direct alignment, refinement, the network, noise levels, pictures."""

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import recipe_pairs
import typer

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.model.cli import register
from homogen.model.evaluate import METHODS, NETWORK, evaluate_methods, format_table, method_label
from homogen.model.methods import NETWORK_REFINE
from homogen.model.network import HomographyNet
from homogen.model.report import refinement_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")

app = typer.Typer()
register(app)


def test_the_table_lists_every_method_on_the_same_pairs(tmp_path):
    pairs, offsets = recipe_pairs(3, rho=16, seed=3)
    net = HomographyNet(width=0.125).eval()
    methods = [*METHODS, NETWORK_REFINE]
    assert {"direct-mse", "direct-ncc", "sift+refine", "direct-ncc+refine"} <= set(methods)
    res = evaluate_methods(pairs, offsets, methods=methods, model=net)
    assert list(res) == [NETWORK, *methods]
    table = format_table(res).splitlines()
    assert len(table) == 2 + len(methods) + 1
    for name in res:
        assert sum(f"| {method_label(name)} |" in line for line in table) == 1
        assert res[name]["n"] == 3 and res[name]["ms_per_pair"] > 0
    assert res["direct-ncc"]["median"] < 1.0 < res["identity"]["median"]
    gains = refinement_report(res)
    assert len(gains) == sum(m.endswith("+refine") for m in methods)
    with pytest.raises(ValueError, match="give a model"):
        evaluate_methods(pairs, offsets, methods=[NETWORK_REFINE])


@pytest.fixture(scope="module")
def noisy_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    out = {}
    for level in ("none", "hard"):
        cfg = GenerateConfig(
            output=str(root / f"{level}.zarr"),
            source=SourceConfig(max_images=3),
            sampling=SamplingConfig(rho=16, pairs_per_image=1, photometric=level),
        )
        generate(cfg, progress=False)
        out[level] = str(root / f"{level}.zarr")
    return out


def test_evaluate_command_shows_every_method_per_noise_level_and_writes_pictures(noisy_stores, tmp_path):
    plots = tmp_path / "plots"
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            noisy_stores["none"],
            noisy_stores["hard"],
            "--split",
            "all",
            "--threads",
            "1",
            "--methods",
            "identity,direct-ncc,direct-ncc+refine",
            "--plots",
            str(plots),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "photometric noise none" in r.output and "photometric noise hard" in r.output
    levels = r.output.split("by noise level:")[1].strip().splitlines()
    assert levels[0].startswith("| noise | method |")
    assert [line.split("|")[1].strip() for line in levels[2:]] == ["none"] * 3 + ["hard"] * 3
    assert "refinement:" in r.output and "ms/pair" in r.output
    for folder in plots.iterdir():
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(
            f"{kind}_{m}.png" for kind in ("errors", "overlay") for m in ("identity", "direct-ncc", "direct-ncc_refine")
        )
        assert all((folder / n).stat().st_size > 1000 for n in names)
    assert len(list(plots.iterdir())) == 2


def test_unknown_methods_are_refused_naming_the_choices(noisy_stores):
    r = CliRunner().invoke(app, ["evaluate", noisy_stores["none"], "--methods", "direct-l1"])
    assert r.exit_code == 2 and "direct-l1" in r.output and "direct-ncc" in r.output
    r = CliRunner().invoke(app, ["evaluate", noisy_stores["none"], "--methods", "network+refine"])
    assert r.exit_code == 2 and "network+refine" in r.output


def test_methods_all_scores_every_registered_method(noisy_stores, monkeypatch):
    import homogen.model.evaluate as ev

    seen = {}
    monkeypatch.setattr(
        ev, "evaluate_methods", lambda pairs, offsets, methods, **kw: seen.setdefault("m", list(methods)) and {}
    )
    r = CliRunner().invoke(app, ["evaluate", noisy_stores["none"], "--split", "all", "--methods", "all"])
    assert r.exit_code == 0, r.output
    assert seen["m"] == list(METHODS)


def test_run_artifacts_hold_a_histogram_and_an_overlay_per_method(tmp_path):
    from homogen.model.artifacts import write_evaluation
    from homogen.model.evaluate import score_test
    from homogen.stores import open_dataset

    cfg = GenerateConfig(output=str(tmp_path / "ds.zarr"), sampling=SamplingConfig(rho=16, pairs_per_image=1))
    generate(cfg, progress=False)
    ds = open_dataset(cfg.output)
    scores = score_test(ds, HomographyNet(width=0.125).eval(), ["identity", "identity+refine"], limit=2)
    assert len(scores.pairs) == 2
    paths = write_evaluation(tmp_path / "evaluation", ds, scores)
    names = {p.rsplit("/", 1)[-1] for p in paths}
    for m in ("homographynet", "identity", "identity_refine"):
        assert {f"errors_{m}.png", f"overlay_{m}.png"} <= names
    md = (tmp_path / "evaluation" / "evaluation.md").read_text()
    assert "identity + refine" in md and "Refinement:" in md


@pytest.mark.slow
def test_an_unsupervised_run_is_logged_and_registered_with_its_loss(tmp_path):
    from mlflow.tracking import MlflowClient

    from homogen.model.config import TrainConfig
    from homogen.model.evaluate import score_test
    from homogen.model.mlflow_run import TrainingRun
    from homogen.model.train import train
    from homogen.stores import open_dataset

    cfg = GenerateConfig(
        output=str(tmp_path / "ds.zarr"),
        chunk_size=16,
        sampling=SamplingConfig(pairs_per_image=4, patch_size=32, rho=8),
        source=SourceConfig(max_images=12, test_fraction=0.25, val_fraction=0.25),
    )
    generate(cfg, progress=False)
    ds = open_dataset(cfg.output)
    tc = TrainConfig(
        loss="photometric", epochs=1, width=0.125, patch_size=32, batch_size=16, checkpoint_dir=str(tmp_path / "ck")
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with TrainingRun(ds, tc, tracking_uri=uri, model_name="hn-photometric", system_metrics=False) as run:
        result = train(ds, tc, progress=False, on_epoch=run.log_epoch)
        registered = run.register(result.model, score_test(ds, result.model, methods=()))
    client = MlflowClient(uri)
    logged = client.get_run(run.run_id).data
    assert logged.params["loss"] == "photometric" and logged.tags["loss"] == "photometric"
    assert np.isfinite(logged.metrics["train_loss"]) and np.isfinite(logged.metrics["val_mace"])
    version = client.get_model_version("hn-photometric", str(registered.model_version))
    assert version.tags["loss"] == "photometric"
