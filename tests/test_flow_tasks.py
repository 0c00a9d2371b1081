"""Unit tests of the flows' tasks (``task.fn``, no Prefect server), the config overrides and the report."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from homogen.flows.config import FLAT_OVERRIDES, QUICK_GENERATE, InvalidParameters, PipelineConfig, apply_overrides
from homogen.flows.cluster import DaskConfig, dask_scheduler
from homogen.flows.shards import write_shard
from homogen.flows.tasks import (
    commit_dataset,
    generate_shards,
    label_statistics,
    list_shards,
    prepare_store,
    sample_grid_png,
    validate_task,
)
from homogen.flows.ui import artifact_key, checks_markdown, dataset_report_markdown
from homogen.config import SAMPLE_ROOT, GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, plan
from homogen.stores import FIELDS, open_dataset

from helpers import PHOTOS, read_store


def small_config(output: str, root: str = SAMPLE_ROOT, kind: str = "auto") -> GenerateConfig:
    """8 bundled images, 2 pairs each, 3 images per shard (3 shards)."""
    return GenerateConfig(
        source=SourceConfig(root=root, kind=kind, max_images=8),
        sampling=SamplingConfig(pairs_per_image=2),
        shard_size=3,
        chunk_size=4,
        output=output,
    )


THREADS = DaskConfig(n_workers=2, processes=False, dashboard_address=None)
"""A LocalCluster of 2 threads in this process (starts in a fraction of a second; monkeypatches reach it)."""


def run_tasks(cfg: GenerateConfig) -> dict:
    """The generate-dataset flow's task sequence, in this process, via ``.fn`` (shards on :data:`THREADS`)."""
    with dask_scheduler(THREADS) as scheduler:
        p = list_shards.fn(cfg)
        prepare_store.fn(p)
        return commit_dataset.fn(p, generate_shards.fn(p, scheduler))


# ------------------------------------------------------------------------------------ generation


def test_list_shards_plans_the_library_version_with_an_absolute_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = small_config("relative/ds.zarr")
    p = list_shards.fn(cfg)
    assert p.version == plan(cfg).version
    assert p.output == str(tmp_path / "relative" / "ds.zarr")  # workers elsewhere write the same place
    assert [s.index for s in p.shards] == [0, 1, 2]
    assert sum(len(s.records) for s in p.shards) == 8


def test_list_shards_leaves_urls_alone():
    cfg = small_config("memory://bucket/ds.zarr")
    assert list_shards.fn(cfg).output == "memory://bucket/ds.zarr"


def test_shard_tasks_make_the_same_dataset_as_the_library_in_one_process(tmp_path):
    manifest = run_tasks(small_config(str(tmp_path / "flow.zarr")))
    reference = generate(small_config(str(tmp_path / "direct.zarr")), progress=False)
    assert manifest["dataset_version"] == reference["dataset_version"]
    assert manifest["num_pairs"] == reference["num_pairs"] == 16
    got, want = read_store(str(tmp_path / "flow.zarr")), read_store(str(tmp_path / "direct.zarr"))
    for f in FIELDS:
        np.testing.assert_array_equal(got[f], want[f], err_msg=f)


def test_a_complete_shard_is_skipped_and_left_unchanged(tmp_path):
    cfg = small_config(str(tmp_path / "ds.zarr"))
    run_tasks(cfg)
    before = read_store(cfg.output)
    p = list_shards.fn(cfg)
    again = write_shard(p.output, cfg.store_format(), cfg.chunk_size, p.shards[1], cfg.sampling)
    assert again.skipped and again.pairs == 2 * len(p.shards[1].records)
    after = read_store(cfg.output)
    for f in FIELDS:
        np.testing.assert_array_equal(after[f], before[f])


def test_commit_refuses_while_a_shard_is_missing(tmp_path):
    cfg = small_config(str(tmp_path / "ds.zarr"))
    p = list_shards.fn(cfg)
    prepare_store.fn(p)
    results = [write_shard(p.output, cfg.store_format(), cfg.chunk_size, s, cfg.sampling) for s in p.shards[:2]]
    with pytest.raises(Exception, match="not complete"):
        commit_dataset.fn(p, results)


def flaky(monkeypatch, failures: dict[int, int], retries: int = 2) -> dict[int, int]:
    """Make the first ``failures[i]`` attempts at shard ``i`` raise ``OSError``, with ``retries`` Dask retries; returns the attempt counts."""
    import homogen.flows.shards as shards

    real, attempts = shards.generate_shard, {}

    def generate_shard(writer, shard, cfg):
        attempts[shard.index] = n = attempts.get(shard.index, 0) + 1
        if n <= failures.get(shard.index, 0):
            raise OSError(f"injected I/O error in shard {shard.index}, attempt {n}")
        return real(writer, shard, cfg)

    monkeypatch.setattr(shards, "generate_shard", generate_shard)
    monkeypatch.setattr(shards, "SHARD_RETRIES", retries)
    return attempts


def test_a_failed_shard_attempt_is_retried_by_dask_and_the_dataset_equals_the_library_s(tmp_path, monkeypatch):
    attempts = flaky(monkeypatch, {1: 2})
    cfg = small_config(str(tmp_path / "flaky.zarr"))
    manifest = run_tasks(cfg)
    assert attempts == {0: 1, 1: 3, 2: 1}
    reference = generate(small_config(str(tmp_path / "direct.zarr")), progress=False)
    assert manifest["dataset_version"] == reference["dataset_version"]
    for f, want in read_store(str(tmp_path / "direct.zarr")).items():
        np.testing.assert_array_equal(read_store(cfg.output)[f], want, err_msg=f)


def test_a_shard_failing_every_attempt_raises_its_error_and_keeps_the_other_shards(tmp_path, monkeypatch):
    from homogen.stores import open_writer

    attempts = flaky(monkeypatch, {2: 99})
    cfg = small_config(str(tmp_path / "broken.zarr"))
    p = list_shards.fn(cfg)
    prepare_store.fn(p)
    with dask_scheduler(THREADS) as scheduler, pytest.raises(OSError, match="injected I/O error in shard 2, attempt 3"):
        generate_shards.fn(p, scheduler)
    assert attempts[2] == 3  # the first attempt and the 2 retries
    writer = open_writer(cfg.output)
    assert [writer.shard_info(i) is not None for i in range(3)] == [True, True, False]


def test_storage_tasks_declare_retries_for_transient_errors_only():
    from prefect.states import Failed

    from homogen.flows.tasks import commit_dataset, open_store, transient_error, validate_task

    for t in (list_shards, prepare_store, commit_dataset, open_store, validate_task):
        assert t.retries == 3 and t.retry_delay_seconds == [2, 5, 15] and t.retry_condition_fn is transient_error
    assert generate_shards.retries == 0  # its shards are retried by Dask, one by one
    for error, retried in (
        (ConnectionResetError("peer reset"), True),
        (TimeoutError("read timed out"), True),
        (OSError(5, "Input/output error"), True),
        (FileNotFoundError("no such source"), False),
        (PermissionError("read-only output"), False),
        (OSError(28, "No space left on device"), False),
        (ValueError("rho=100 exceeds"), False),
        (RuntimeError("store locked"), False),
    ):
        assert transient_error(list_shards, None, Failed(data=error)) is retried, error


# ------------------------------------------------------------------------------------ validation and report


@pytest.fixture
def folder_with_a_bad_image(tmp_path) -> Path:
    """6 bundled photographs plus one truncated JPEG, as a plain folder."""
    root = tmp_path / "images"
    root.mkdir()
    for src in PHOTOS[:6]:
        shutil.copy(src, root / src.name)
    good = sorted(root.glob("*.jpg"))[0].read_bytes()
    (root / "999999999999.jpg").write_bytes(good[: len(good) // 3])
    return root


def test_validate_and_report_show_counts_checks_labels_and_quarantine(tmp_path, folder_with_a_bad_image):
    cfg = small_config(str(tmp_path / "ds.zarr"), root=str(folder_with_a_bad_image), kind="folder")
    manifest = run_tasks(cfg)
    assert [q["image_id"] for q in manifest["quarantine"]] == [999999999999]

    report = validate_task.fn(cfg.output, regenerate=2)
    assert report.passed, report.to_markdown()
    stats = label_statistics(cfg.output)
    offsets = open_dataset(cfg.output)[:]["offsets"]
    assert [s["label"] for s in stats][:2] == ["dx_TL", "dy_TL"]
    np.testing.assert_allclose([s["mean"] for s in stats], offsets.mean(axis=0), rtol=1e-6)
    assert all(-32 <= s["min"] <= s["max"] <= 32 for s in stats)

    png = sample_grid_png(cfg.output, n=8)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    grid = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert grid.shape[1] <= 900  # 2 pairs a row: shown at its own size in the Prefect UI, captions readable
    md = dataset_report_markdown(manifest, checks_markdown(report), stats, "data:image/png;base64,AAAA")
    assert manifest["dataset_version"] in md
    assert f"{manifest['num_pairs']} (train" in md
    assert "999999999999" in md and manifest["quarantine"][0]["reason"] in md
    for check in report.checks:  # every check, with its counts and its detail
        assert f"| {check.name} | pass |" in md or f"| {check.name} | n/a |" in md
        assert f"| {check.checked} | {check.failed} |" in md
        assert f"- **{check.name}** (" in md and check.detail.replace("|", "\\|").replace("\n", " ") in md
    assert "dx_TL" in md and "![sample pairs](data:image/png;base64,AAAA)" in md


def test_report_tables_hold_only_short_cells_so_the_ui_does_not_clip_them(tmp_path, folder_with_a_bad_image):
    """The Prefect UI does not wrap table cells: a long one (a check's detail, a path, a reason)
    would push the table past the pane and be cut off, so long text goes in lists."""
    cfg = small_config(str(tmp_path / "ds.zarr"), root=str(folder_with_a_bad_image), kind="folder")
    manifest = run_tasks(cfg)
    report = validate_task.fn(cfg.output, regenerate=0)
    md = dataset_report_markdown(manifest, checks_markdown(report), label_statistics(cfg.output), None)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) >= len(report.checks) + 8  # the checks and label statistics tables are there
    cells = [c.strip() for row in rows for c in row.strip("|").split(" | ")]
    assert max(len(c) for c in cells) <= 32, max(cells, key=len)


def test_artifact_keys_are_valid():
    key = artifact_key("dataset", "ABC_12.3", "report")
    assert key == "dataset-abc-12-3-report"


# ------------------------------------------------------------------------------------ parameters


def test_defaults_follow_the_recipe_at_a_quick_size():
    cfg = PipelineConfig()
    s = cfg.generate.sampling
    assert (s.rho, s.patch_size, s.image_width, s.image_height) == (32, 128, 320, 240)
    assert cfg.generate.source.root == SAMPLE_ROOT
    assert cfg.train.epochs <= 3 and cfg.train.width < 1


def test_a_partial_section_keeps_the_other_defaults():
    cfg = PipelineConfig.model_validate({"generate": {"sampling": {"rho": 24}}, "train": {"epochs": 5}})
    assert cfg.generate.sampling.rho == 24
    assert cfg.generate.sampling.pairs_per_image == QUICK_GENERATE.sampling.pairs_per_image
    assert cfg.generate.shard_size == QUICK_GENERATE.shard_size
    assert cfg.train.epochs == 5 and cfg.train.width == PipelineConfig().train.width


def test_unknown_fields_are_refused_by_name():
    with pytest.raises(ValidationError, match="rhoo"):
        PipelineConfig.model_validate({"generate": {"sampling": {"rhoo": 24}}})


def test_flat_overrides_win_and_none_means_not_given():
    base = PipelineConfig.model_validate({"generate": {"sampling": {"rho": 24}}})
    cfg = apply_overrides(base, rho=16, epochs=4, n_workers=2, source="/data/coco", max_images=None)
    assert cfg.generate.sampling.rho == 16 and cfg.train.epochs == 4 and cfg.dask.n_workers == 2
    assert cfg.generate.source.root == "/data/coco"
    assert apply_overrides(base, rho=None).generate.sampling.rho == 24
    for name, path in FLAT_OVERRIDES.items():  # every shortcut points at a real field
        node = PipelineConfig()
        for key in path:
            node = getattr(node, key)


def test_an_impossible_flat_value_names_the_parameter_and_the_limit():
    with pytest.raises(InvalidParameters) as err:
        apply_overrides(PipelineConfig(), rho=100)
    assert "rho=100" in str(err.value) and f"rho <= {SamplingConfig().patch_size // 4}" in str(err.value)
    with pytest.raises(InvalidParameters, match="epochs"):
        apply_overrides(PipelineConfig(), epochs=0)
    with pytest.raises(InvalidParameters, match="unknown parameter"):
        apply_overrides(PipelineConfig(), rhoo=3)


def test_dask_address_comes_from_the_parameter_then_the_environment(monkeypatch):
    from homogen.flows.config import DaskConfig

    monkeypatch.delenv("HOMOGEN_DASK_ADDRESS", raising=False)
    assert DaskConfig().resolved_address() is None
    monkeypatch.setenv("HOMOGEN_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert DaskConfig().resolved_address() == "tcp://10.0.0.5:8786"
    assert DaskConfig(address="tcp://sched:8786").resolved_address() == "tcp://sched:8786"
    assert DaskConfig(n_workers=3).resolved_workers() == 3 and DaskConfig().resolved_workers() >= 1


def test_a_run_takes_the_serving_process_cluster_only_with_default_dask_settings(monkeypatch):
    from homogen.flows.cluster import SERVED_DASK_ADDRESS_ENV
    from homogen.flows.config import PipelineConfig

    monkeypatch.delenv("HOMOGEN_DASK_ADDRESS", raising=False)
    monkeypatch.setenv(SERVED_DASK_ADDRESS_ENV, "tcp://127.0.0.1:40000")
    assert DaskConfig().resolved_address() == "tcp://127.0.0.1:40000"
    merged = PipelineConfig.model_validate({"train": {"epochs": 1}, "dask": {}}).dask  # a partial config
    assert merged.resolved_address() == "tcp://127.0.0.1:40000"
    assert DaskConfig(n_workers=1).resolved_address() is None  # settings of its own: a cluster of its own
    assert DaskConfig(processes=False).resolved_address() is None
    assert DaskConfig(address="tcp://sched:8786").resolved_address() == "tcp://sched:8786"
    monkeypatch.setenv("HOMOGEN_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert DaskConfig().resolved_address() == "tcp://10.0.0.5:8786"  # the user's own cluster first


def test_a_cluster_without_workers_fails_naming_the_scheduler_instead_of_waiting_forever(tmp_path, monkeypatch):
    import homogen.flows.tasks as flow_tasks
    from homogen.flows.cluster import local_cluster

    monkeypatch.setattr(flow_tasks, "WORKERS_WAIT_S", 0.5)
    cfg = small_config(str(tmp_path / "ds.zarr"))
    p = list_shards.fn(cfg)
    prepare_store.fn(p)
    with local_cluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(
            RuntimeError, match=f"no Dask worker joined the scheduler {cluster.scheduler_address} in 0.5 s"
        ):
            generate_shards.fn(p, cluster.scheduler_address)


def test_a_local_cluster_is_sized_from_the_config():
    from homogen.flows.cluster import cluster_kwargs

    kwargs = cluster_kwargs(DaskConfig(n_workers=2))
    assert kwargs["n_workers"] == 2 and kwargs["threads_per_worker"] == 1 and kwargs["processes"]


def test_the_flows_worker_processes_start_with_their_environment_and_dask_config_and_leave_this_one_alone(monkeypatch):
    """The flow's LocalCluster workers (distributed's default *spawn*) start with one OpenCV / OpenMP
    thread each, without Dask's MALLOC_TRIM_THRESHOLD_ (every buffer over 128 KiB a fresh mmap:
    shards 10-15 % slower) and without its statistical profiler, and with this process's environment
    as it is when the cluster starts (a storage option from a Secret block). This process keeps its
    own environment: Dask writes its pre-spawn variables here (OMP_NUM_THREADS=1 left there made
    torch train on one thread; PYTHONHASHSEED)."""
    import os

    import dask
    from distributed import Client

    def worker_state() -> dict:
        import cv2
        import dask

        return {
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "opencv_threads": cv2.getNumThreads(),
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "profile": dask.config.get("distributed.worker.profile.enabled"),
            "storage": os.environ.get("FSSPEC_S3"),
        }

    def cluster_state() -> dict:
        with dask_scheduler(DaskConfig(n_workers=1, dashboard_address=None)) as address, Client(address) as client:
            client.wait_for_workers(1, timeout=120)
            (state,) = client.run(worker_state).values()
        return state

    for var in ("OMP_NUM_THREADS", "FSSPEC_S3", "PYTHONHASHSEED", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(var, raising=False)
    want = {"omp": "1", "opencv_threads": 1, "malloc_trim": None, "profile": False, "storage": None}
    assert cluster_state() == want
    assert not {"OMP_NUM_THREADS", "PYTHONHASHSEED", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ)  # its own
    monkeypatch.setenv("FSSPEC_S3", '{"anon": true}')
    assert cluster_state()["storage"] == '{"anon": true}'
    # the settings stay scoped to the flow's cluster
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"] == 65536
    assert dask.config.get("distributed.worker.profile.enabled") is True


SCRIPT_IMPORTS = "from homogen.flows.cluster import DaskConfig, dask_scheduler\n"
START = (
    "with dask_scheduler(DaskConfig(n_workers=1, dashboard_address=None)) as address:\n    print('started', address)\n"
)


@pytest.mark.parametrize(
    ("script", "refused"),
    [
        (SCRIPT_IMPORTS + START, True),
        (SCRIPT_IMPORTS + "def main():\n" + textwrap.indent(START, "    ") + "main()\n", True),
        (SCRIPT_IMPORTS + 'if __name__ == "__main__":\n' + textwrap.indent(START, "    "), False),
        (SCRIPT_IMPORTS + "if '__main__' == __name__:\n" + textwrap.indent(START, "    "), False),
    ],
    ids=["module level", "a function called at module level", "guarded", "guarded, reversed"],
)
def test_a_script_that_starts_the_cluster_unguarded_is_refused_at_once_naming_the_guard(tmp_path, script, refused):
    """multiprocessing re-runs the main script in every worker process: unguarded, each would start the
    flow again and no worker would ever join (the flow used to wait 180 s, then blame the workers)."""
    (tmp_path / "make_data.py").write_text(script)
    done = subprocess.run([sys.executable, "make_data.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    if refused:
        assert done.returncode == 1 and "started" not in done.stdout
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("RuntimeError: ") and "make_data.py, line " in last
        assert 'Put that call under `if __name__ == "__main__":`' in last
    else:
        assert done.returncode == 0 and "started tcp://127.0.0.1:" in done.stdout, done.stderr[-3000:]


def test_python_m_and_interactive_mains_are_never_refused(monkeypatch):
    """``python -m pkg`` (``pkg.__main__``), ``python -c`` and notebooks are not re-run by
    multiprocessing; a module run with ``-m`` is, and its guarded call (as in every entry point here) passes."""
    import types

    import homogen.flows.cluster as cluster

    for spec, file in ((None, None), ("mytool.__main__", __file__), ("homogen.flows.generate", None)):
        module = types.ModuleType("__main__")
        module.__spec__ = types.SimpleNamespace(name=spec) if spec else None
        if file:
            module.__file__ = file
        monkeypatch.setitem(sys.modules, "__main__", module)
        assert cluster.unguarded_main_call() is None


# ------------------------------------------------------------------------------------ model tasks


@pytest.mark.slow  # ~25 s: training, MLflow's database setup and model logging
def test_train_evaluate_register_tasks(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from homogen.flows.model_tasks import evaluate_task, register_task, train_task
    from homogen.model.mlflow_run import TrainingRun
    from homogen.model.train import TrainConfig
    from homogen.stores import open_dataset

    monkeypatch.setenv("HOMOGEN_WORKDIR", str(tmp_path))
    cfg = GenerateConfig(
        source=SourceConfig(max_images=16, test_fraction=0.25, val_fraction=0.25),
        sampling=SamplingConfig(pairs_per_image=4),
        output=str(tmp_path / "ds.zarr"),
    )
    manifest = generate(cfg, progress=False)
    assert manifest["splits"]["test"] > 0 and manifest["splits"]["val"] > 0
    tcfg = TrainConfig(epochs=1, width=0.125, batch_size=16, checkpoint_dir=str(tmp_path / "ckpt"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    with TrainingRun(
        open_dataset(cfg.output),
        tcfg,
        tracking_uri=uri,
        experiment="test-flows",
        model_name="hn-test",
        tags={"origin": "unit"},
        system_metrics=False,
    ) as run:
        result = train_task.fn(cfg.output, tcfg, on_epoch=run.log_epoch)
        assert result.dataset_version == manifest["dataset_version"] and len(result.history) == 1
        assert result.best_checkpoint is not None and Path(result.best_checkpoint).is_file()

        scores = evaluate_task.fn(cfg.output, result.model, ("identity", "orb"), limit=8)
        assert set(scores.results) == {"homographynet", "identity", "orb"}
        assert len(scores.pairs) == scores.results["identity"]["n"] == min(8, manifest["splits"]["test"])

        registered = register_task.fn(run, result, scores)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version("hn-test", "1")
    assert registered.model_version == "1" and version.tags["dataset_version"] == manifest["dataset_version"]
    r = client.get_run(run.run_id)
    # champion exactly when it beats the identity by the margin on the same test pairs (model.registry)
    beats = r.data.metrics["test_mace"] <= 0.95 * r.data.metrics["identity_mace"]
    assert registered.champion == beats and r.data.tags["champion"] == str(beats).lower()
    assert r.data.metrics["best_epoch"] == result.best_epoch == 1
    assert r.data.tags["origin"] == "unit" and "val_mace" in r.data.metrics and "identity_mace" in r.data.metrics


def test_what_dask_workers_import_reaches_no_torch():
    """Dask workers import the shard function (no Prefect either), the config they unpickle and the
    ``-m`` entry points (spawn re-imports ``__main__``): none may pull in torch (half a second and
    140 MB per worker)."""
    code = (
        "import sys\n"
        "import homogen.flows.shards\n"
        "assert 'prefect' not in sys.modules  # what a worker unpickles to run a shard\n"
        "import homogen.flows.tasks, homogen.flows.config, homogen.flows.cluster, homogen.flows.generate, homogen.flows.generate_and_train\n"
        "from homogen.flows.config import PipelineConfig\n"
        "PipelineConfig(train={'epochs': 1})\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]


def test_train_config_is_one_class_wherever_imported():
    """``homogen.model.train.TrainConfig`` (older imports) is the torch-free ``homogen.model.config.TrainConfig``."""
    from homogen.model.config import TrainConfig
    from homogen.model.train import TrainConfig as Reexported

    assert Reexported is TrainConfig and PipelineConfig().train.__class__ is TrainConfig


def test_progress_artifact_is_throttled_but_always_reaches_100(monkeypatch):
    """Many short shards do not cost an artifact update each; the last update always says 100 %."""
    import homogen.flows.ui as ui

    class InARun:
        @staticmethod
        def get():
            return "a flow run"

    updates: list[float] = []
    monkeypatch.setattr(ui, "FlowRunContext", InARun)
    monkeypatch.setattr(ui, "create_progress_artifact", lambda *a, **k: "artifact-id")
    monkeypatch.setattr(ui, "update_progress_artifact", lambda artifact, value: updates.append(value))

    assert list(ui.with_progress(iter(range(5)), 5, "k", "d", interval_s=3600)) == [0, 1, 2, 3, 4]
    assert updates == [100.0]
    updates.clear()
    assert list(ui.with_progress(iter(range(5)), 5, "k", "d", interval_s=0)) == [0, 1, 2, 3, 4]
    assert updates == [20.0, 40.0, 60.0, 80.0, 100.0]


def test_local_cluster_workers_get_one_library_thread_per_dask_thread(monkeypatch):
    """OpenCV / Blosc / OpenMP pools are sized to ``threads_per_worker`` in worker processes (Dask's
    pre-spawn environment), so n single-threaded workers use n cores; a value the caller sets wins."""
    import dask

    import homogen.flows.cluster as cluster

    seen: dict = {}
    monkeypatch.setattr(
        cluster, "LocalCluster", lambda **kw: seen.update(dask.config.get("distributed.nanny.pre-spawn-environ"))
    )
    cluster.local_cluster(n_workers=2, threads_per_worker=1, env={"BLOSC_NTHREADS": "2"})
    assert seen["OPENCV_FOR_THREADS_NUM"] == seen["OMP_NUM_THREADS"] == "1" and seen["BLOSC_NTHREADS"] == "2"
    assert seen.get("MALLOC_TRIM_THRESHOLD_") is None
