"""The flows run for real against a temporary Prefect API (``prefect_test_harness``, one per session).

End to end: ``generate-and-train`` on the bundled images with a 2-worker Dask LocalCluster (worker
processes), a tiny training and a temporary MLflow store. Faults: a shard that keeps failing fails
the run naming it (after its retries), loses no finished shard, and a re-run completes it; a
second writer of the same output is refused; invalid parameters fail before any work. (A failed
attempt that is retried: tests/test_flow_tasks.py, without a flow run.)
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

import homogen.flows.shards as flow_shards
from homogen.flows.config import DaskConfig, InvalidParameters, PipelineConfig
from homogen.flows.generate import generate_dataset
from homogen.flows.generate_and_train import generate_and_train
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, plan
from homogen.stores import FIELDS, StoreLocked, open_dataset, open_writer

from helpers import latest_artifact

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMOGEN_WORKDIR", str(tmp_path))
    monkeypatch.delenv("HOMOGEN_DASK_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def small(output: str, max_images: int = 12, pairs: int = 2, shard_size: int = 3) -> GenerateConfig:
    return GenerateConfig(
        source=SourceConfig(max_images=max_images, test_fraction=0.25),
        sampling=SamplingConfig(pairs_per_image=pairs),
        shard_size=shard_size,
        chunk_size=8,
        output=output,
    )


def same_data(a: str, b: str) -> None:
    da, db = open_dataset(a), open_dataset(b)
    assert da.version == db.version and len(da) == len(db)
    for f in FIELDS:
        np.testing.assert_array_equal(da[:][f], db[:][f], err_msg=f)


def threads(n: int = 2) -> DaskConfig:
    """A LocalCluster of threads in this process (monkeypatches reach the shard tasks)."""
    return DaskConfig(n_workers=n, processes=False, dashboard_address=None)


def child_runs(client, parent_id) -> list:
    """Flow runs whose parent task run belongs to ``parent_id`` (the subflows), and task runs of ``parent_id``."""
    tasks = client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[parent_id])),
        sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        limit=200,
    )
    subflows = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=200,
    )
    return subflows, tasks


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_generate_and_train_end_to_end(prefect_api, workdir):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    config = PipelineConfig.model_validate(
        {
            "generate": small(
                str(workdir / "datasets" / "e2e.zarr"), max_images=16, pairs=8, shard_size=4
            ).model_dump(),
            "validate_regenerate": 2,
            "train": {"epochs": 1, "width": 0.125, "batch_size": 16},
            "evaluate": {"methods": ["identity"], "limit": 16},
            "tracking": {"uri": uri, "experiment": "e2e"},
            "dask": {"n_workers": 2, "dashboard_address": None},
        }
    )
    state = generate_and_train(config, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()

    # the dataset: the version the library plans for this config, complete
    version = plan(config.generate).version
    assert result["dataset_version"] == version
    ds = open_dataset(result["dataset_uri"])
    assert ds.version == version and len(ds) == result["pairs"] == 16 * 8

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(state.state_details.flow_run_id)
        assert parent.name == f"generate-and-train rho=32 v={version} epochs=1"
        subflows, _ = child_runs(client, parent.id)
        names = sorted(r.name for r in subflows)
        assert names == sorted(
            [f"generate rho=32 v={version}", f"validate v={version}", f"train v={version} epochs=1 width=0.125"]
        )
        assert all(r.state.is_completed() for r in subflows)
        gen = next(r for r in subflows if r.name.startswith("generate"))
        _, gen_tasks = child_runs(client, gen.id)
        # the recipe's steps as Prefect tasks; the 4 shards are Dask tasks under generate-shards
        assert [t.name.rsplit("-", 1)[0] for t in gen_tasks] == [
            "list-shards",
            "prepare-store",
            "generate-shards",
            "commit-dataset",
        ]
        assert all(t.state.is_completed() for t in gen_tasks)
        # the run graph links each step to the plan it works on (and commit to the shards' results),
        # although the plan is handed over opaque (not walked record by record)
        ids = {t.name.rsplit("-", 1)[0]: t.id for t in gen_tasks}
        upstream = {
            t.name.rsplit("-", 1)[0]: {i.id for inputs in t.task_inputs.values() for i in inputs} for t in gen_tasks
        }
        assert upstream["prepare-store"] == upstream["generate-shards"] == {ids["list-shards"]}
        assert upstream["commit-dataset"] == {ids["list-shards"], ids["generate-shards"]}

        # what people see: the progress reached 100 %, the report lists every check and passed
        assert float(latest_artifact(client, f"dataset-{version}-progress")["data"]) == 100.0
        report = latest_artifact(client, f"dataset-{version}-report")["data"]
        assert f"Validation of dataset {version}: PASSED" in report
        for check in ("pixels_match_homography", "no_duplicates", "split_disjoint", "regenerate"):
            assert f"| {check} |" in report
        # the grid as a markdown image (an image artifact would print its data: URL as text), 2 pairs a row
        assert "![sample pairs](data:image/png;base64," in report
        samples = latest_artifact(client, f"dataset-{version}-samples")
        assert samples["type"] == "markdown" and "![sample pairs](data:image/png;base64," in samples["data"]
        png = base64.b64decode(samples["data"].split("base64,", 1)[1].rstrip(")"))
        assert int.from_bytes(png[16:20], "big") <= 900  # PNG width: shown at its own size, captions readable
        # one evaluation artifact per registered model version
        evaluation = latest_artifact(client, f"model-homographynet-v{result['model_version']}-evaluation")
        assert "HomographyNet" in evaluation["data"]
        # ...which names the dataset's artifacts; the dataset's models artifact names this model, champion
        assert f"dataset-{version}-report" in evaluation["data"] and f"homogen lineage {version}" in evaluation["data"]
        models = latest_artifact(client, f"dataset-{version}-models")["data"]
        assert f"| `models:/homographynet/{result['model_version']}` | this version |" in models

    # the registered model: tagged with the dataset version; champion (first version) iff it beats the identity
    mlflow = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = mlflow.get_model_version(result["model_name"], result["model_version"])
    assert mv.tags["dataset_version"] == version
    assert mv.tags["store_uri"] == ds.uri  # where the data lives, on the model version's page
    beats = float(mv.tags["test_mace"]) <= 0.95 * float(mv.tags["identity_mace"])
    assert result["champion"] is beats and (mv.tags["promotion"].startswith("first champion") is beats)
    assert (models.count("| yes |") == 1) is beats  # the dataset's models artifact marks the champion
    if beats:
        assert str(mlflow.get_model_version_by_alias(result["model_name"], "champion").version) == str(
            result["model_version"]
        )


# ------------------------------------------------------------------------------------ faults


class Faults:
    """Injected shard faults, kept in files: Dask pickles the task function by value, so in-memory
    state would be copied; files are shared by every copy (and would be by every process).

    ``fail(shard, n)`` makes the first ``n`` attempts at ``shard`` raise; :meth:`attempts` counts them.
    """

    def __init__(self, folder):
        self.folder = folder
        folder.mkdir(exist_ok=True)

    def fail(self, shard: int, n: int) -> None:
        (self.folder / f"fail-{shard}").write_text(str(n))

    def failing(self, shard: int) -> int:
        path = self.folder / f"fail-{shard}"
        return int(path.read_text()) if path.exists() else 0

    def record(self, shard: int) -> int:
        with open(self.folder / "attempts", "a") as f:
            f.write(f"{shard}\n")
        return self.attempts().get(shard, 0)

    def attempts(self) -> dict[int, int]:
        path = self.folder / "attempts"
        lines = [int(x) for x in path.read_text().split()] if path.exists() else []
        return {i: lines.count(i) for i in sorted(set(lines))}


def inject(monkeypatch, faults: Faults) -> None:
    """Route the shards' library call through ``faults``."""
    real = flow_shards.generate_shard

    def flaky_generate_shard(writer, shard, cfg):
        n = faults.record(shard.index)
        if n <= faults.failing(shard.index):
            raise OSError(f"injected I/O error in shard {shard.index}, attempt {n}")
        return real(writer, shard, cfg)

    monkeypatch.setattr(flow_shards, "generate_shard", flaky_generate_shard)


def test_a_transient_error_in_a_storage_task_is_retried_by_prefect(tmp_path, monkeypatch, prefect_api):
    import homogen.flows.tasks as tasks
    from homogen.flows.tasks import list_shards

    monkeypatch.setattr(list_shards, "retry_delay_seconds", [0])
    calls, real = [], tasks.plan

    def flaky_plan(config):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("object store reset the connection")
        return real(config)

    monkeypatch.setattr(tasks, "plan", flaky_plan)
    p = list_shards(small(str(tmp_path / "retry.zarr")))
    assert len(calls) == 2 and p.num_images == 12


def test_a_shard_that_keeps_failing_fails_the_run_and_a_rerun_completes_it(prefect_api, workdir, monkeypatch):
    faults = Faults(workdir / "faults")
    faults.fail(shard=2, n=99)
    inject(monkeypatch, faults)
    monkeypatch.setattr(flow_shards, "SHARD_RETRIES", 1)
    cfg = small(str(workdir / "broken.zarr"))
    state = generate_dataset(cfg, threads(), return_state=True)
    assert state.is_failed() and "injected I/O error in shard 2, attempt 2" in state.message
    assert faults.attempts()[2] == 2  # first attempt + one retry
    writer = open_writer(cfg.output)
    assert writer.read_header()["state"] == "generating"  # not committed...
    assert [writer.shard_info(i) is not None for i in range(4)] == [True, True, False, True]  # ...finished shards kept

    faults.fail(shard=2, n=0)  # the fault is gone
    summary = generate_dataset(cfg, threads())
    assert summary["pairs"] == 12 * 2
    assert faults.attempts() == {0: 2, 1: 2, 2: 3, 3: 2}  # re-run: the library skipped 0, 1, 3 and made 2
    generate(small(str(workdir / "clean.zarr")), progress=False)
    same_data(cfg.output, str(workdir / "clean.zarr"))


def test_a_second_writer_of_the_same_output_is_refused_and_the_store_kept(prefect_api, workdir):
    cfg = small(str(workdir / "shared.zarr"), max_images=6)
    generate(cfg, progress=False)
    before = open_dataset(cfg.output)[:]
    with open_writer(cfg.output).lock():  # another generation holds the output
        state = generate_dataset(cfg, threads(), return_state=True)
    assert state.is_failed()
    with pytest.raises(StoreLocked, match="is being written by pid"):
        state.result()
    after = open_dataset(cfg.output)
    assert after.manifest["state"] == "complete"
    for f in FIELDS:
        np.testing.assert_array_equal(after[:][f], before[f])


def test_invalid_parameters_fail_the_run_at_once_naming_the_parameter(prefect_api, workdir):
    state = generate_and_train(rho=100, return_state=True)
    assert state.is_failed()
    with pytest.raises(InvalidParameters, match=r"rho=100.*|.*rho <= 56"):
        state.result()
    assert not (workdir / "datasets").exists()  # nothing was generated
