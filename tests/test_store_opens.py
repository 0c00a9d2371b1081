"""A flow run opens its store once: the validate and train flows, run for real (Prefect's temporary
API), counted per task run. On object storage each open is several LIST/GET calls and each chunk
listing one LIST per array, so these counts are what a run costs before it reads a pair.

Counted: a :class:`homogen.store.Dataset` built (an open), a chunk listing
(:func:`homogen.store.chunk_problems`), a manifest read without arrays (:func:`homogen.store.read_manifest`,
what a dataset pin reads). Each is attributed to the task run (or flow run) it happened in.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from collections import Counter, defaultdict

import pytest
from prefect.context import FlowRunContext, TaskRunContext

import homogen.flows.tasks as flow_tasks
import homogen.model.dataset_pin  # noqa: F401 - imported before the count patches every binding
import homogen.model.evaluate  # noqa: F401
import homogen.model.train  # noqa: F401
import homogen.store
import homogen.validation.walk  # noqa: F401
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.flows.config import QUICK_TRAIN, EvaluateConfig, TrackingConfig
from homogen.flows.train import train_model
from homogen.flows.validate import validate_dataset_flow
from homogen.generate import generate
from homogen.model.dataset_pin import DatasetChanged
from homogen.store import Dataset
from homogen.stores import open_dataset

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("one_torch_thread")]

OPEN, LISTING, MANIFEST = "open", "chunk listing", "manifest read"


class StoreReads:
    """What each task run (or flow body) read of a store: ``{where: Counter(open=, chunk listing=, manifest read=)}``."""

    def __init__(self) -> None:
        self.by_run: dict[str, Counter] = defaultdict(Counter)

    def record(self, what: str) -> None:
        task, flow = TaskRunContext.get(), FlowRunContext.get()
        if task is not None:
            where = f"task {task.task_run.name}"
        elif flow is not None:
            where = f"flow {flow.flow_run.name}"
        else:
            where = "outside a run"
        self.by_run[where][what] += 1

    def total(self, what: str) -> int:
        return sum(c[what] for c in self.by_run.values())

    def runs_of(self, task_name: str) -> list[Counter]:
        return [c for where, c in self.by_run.items() if where.startswith(f"task {task_name}-")]


def patch_everywhere(monkeypatch, original, counting) -> None:
    """Replace ``original`` under every name a homogen module bound it to (``from ... import f`` copies the binding)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("homogen") and module is not None:
            for attr, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, attr, counting)


@pytest.fixture
def reads(monkeypatch) -> StoreReads:
    counts = StoreReads()
    init = homogen.store.Dataset.__init__

    def counted_init(self, *args, **kwargs):
        counts.record(OPEN)
        init(self, *args, **kwargs)

    monkeypatch.setattr(homogen.store.Dataset, "__init__", counted_init)
    for what, original in ((LISTING, homogen.store.chunk_problems), (MANIFEST, homogen.store.read_manifest)):

        def counted(*args, _what=what, _original=original, **kwargs):
            counts.record(_what)
            return _original(*args, **kwargs)

        patch_everywhere(monkeypatch, original, counted)
    return counts


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """The 32 bundled photographs, 2 pairs each (val and test not empty), chunks of 16 pairs."""
    out = tmp_path_factory.mktemp("opens") / "ds.zarr"
    manifest = generate(
        GenerateConfig(
            source=SourceConfig(max_images=32, test_fraction=0.25, val_fraction=0.25),
            sampling=SamplingConfig(pairs_per_image=2),
            chunk_size=16,
            output=str(out),
        ),
        progress=False,
    )
    assert manifest["splits"]["val"] > 0 and manifest["splits"]["test"] > 0
    return str(out)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMOGEN_WORKDIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_the_validate_flow_opens_its_store_once_and_a_retried_task_reuses_it(store, reads, prefect_api, monkeypatch):
    import homogen.validation as validation

    monkeypatch.setattr(flow_tasks.validate_task, "retry_delay_seconds", [0])
    attempts, real = [], validation.validate_dataset

    def flaky_validate(ds, *args, **kwargs):
        attempts.append(ds)
        if len(attempts) == 1:
            raise ConnectionResetError("object store reset the connection")  # transient: Prefect retries
        return real(ds, *args, **kwargs)

    monkeypatch.setattr(validation, "validate_dataset", flaky_validate)
    assert validate_dataset_flow(store, regenerate=2)["passed"]
    assert len(attempts) == 2 and isinstance(attempts[0], Dataset) and attempts[1] is attempts[0]  # reused on retry
    assert reads.total(OPEN) == 1, dict(reads.by_run)
    [opened] = reads.runs_of("open-store")
    [validate] = reads.runs_of("validate")
    assert (opened[OPEN], opened[LISTING]) == (1, 0)  # validation lists the chunks itself, to report each bad one
    assert validate[OPEN] == 0
    assert not reads.runs_of("publish-report")  # it reads its pairs through the handle: no open, no listing
    # listed by the walk (every array: arrays_match_digest hashes the rows the walk reads) and by
    # Dataset.sources (its one array)
    assert validate[LISTING] == 2


@pytest.mark.slow  # ~20 s: one epoch, MLflow's database setup and model registration
def test_the_train_flow_opens_its_store_once_and_its_pins_read_only_the_manifest(store, reads, prefect_api, workdir):
    result = train_model(
        store,
        QUICK_TRAIN.model_copy(update={"epochs": 1, "num_workers": 0}),
        EvaluateConfig(methods=("identity",), limit=8),
        TrackingConfig(uri=f"sqlite:///{workdir / 'mlflow.db'}", model_name="hn-opens"),
    )
    assert result["dataset_version"] == open_dataset(store).version
    reads.by_run.pop("outside a run", None)  # the line above
    assert reads.total(OPEN) == reads.total(LISTING) == 1, dict(reads.by_run)
    [opened] = reads.runs_of("open-store")
    assert (opened[OPEN], opened[LISTING]) == (1, 1)
    # the pins: each epoch's start and end, before and after the test pairs, before registration
    pins = {name: reads.runs_of(name) for name in ("train", "evaluate", "register")}
    assert all(len(runs) == 1 for runs in pins.values()), dict(reads.by_run)
    assert {name: (c[OPEN], c[LISTING], c[MANIFEST]) for name, [c] in pins.items()} == {
        "train": (0, 0, 2),
        "evaluate": (0, 0, 2),
        "register": (0, 0, 1),
    }


@pytest.mark.slow  # ~15 s: two stores, one epoch
def test_the_train_flow_stops_when_its_store_is_regenerated_during_training(
    tmp_path, prefect_api, workdir, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from homogen.model import train as training

    def make(seed: int, overwrite: bool = False) -> str:
        cfg = GenerateConfig(
            source=SourceConfig(max_images=32, test_fraction=0.25, val_fraction=0.25),
            sampling=SamplingConfig(pairs_per_image=2, seed=seed),
            chunk_size=16,
            output=str(tmp_path / "ds.zarr"),
            overwrite=overwrite,
        )
        return generate(cfg, progress=False)["dataset_version"]

    old = make(seed=0)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    real = training.train_one_epoch

    def regenerate_during_the_epoch(*args, **kwargs):
        stats = real(*args, **kwargs)
        assert make(seed=1, overwrite=True) != old  # `homogen generate --seed 1 --overwrite` meanwhile
        return stats

    monkeypatch.setattr(training, "train_one_epoch", regenerate_during_the_epoch)
    with pytest.raises(DatasetChanged, match=f"not {old} that this run started on"):
        train_model(
            str(tmp_path / "ds.zarr"),
            QUICK_TRAIN.model_copy(update={"epochs": 1}),
            EvaluateConfig(methods=("identity",), limit=8),
            TrackingConfig(uri=uri, model_name="hn-changed"),
        )
    client = MlflowClient(uri)
    assert not client.search_registered_models()  # nothing registered on mixed data


def test_an_hdf5_store_is_validated_through_one_open_and_closed_after(tmp_path, reads, prefect_api, monkeypatch):
    out = tmp_path / "ds.h5"
    cfg = GenerateConfig(source=SourceConfig(max_images=8), sampling=SamplingConfig(pairs_per_image=2), output=str(out))
    generate(cfg, progress=False)
    opened = []
    init = homogen.store.Dataset.__init__

    def keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(homogen.store.Dataset, "__init__", keep)
    assert validate_dataset_flow(str(out), regenerate=1)["passed"]
    [ds] = opened
    assert reads.total(OPEN) == 1 and not ds.arrays["image_id"].id.valid  # opened once, closed by the flow


def test_a_pickled_dataset_reopens_without_listing_its_chunks(store, reads):
    """A DataLoader worker (or a spawned rank) gets the store by pickle: the parent already checked its chunks."""
    from homogen.model.data import PairStream

    ds = open_dataset(store)
    assert reads.total(LISTING) == 1
    again = pickle.loads(pickle.dumps(ds))
    assert (again.version, len(again), again.uri) == (ds.version, len(ds), ds.uri)
    stream = pickle.loads(pickle.dumps(PairStream(ds, "train")))  # what each DataLoader worker receives
    assert stream.ds.version == ds.version
    assert reads.total(OPEN) == 3 and reads.total(LISTING) == 1  # two reopens, no listing


@pytest.mark.parametrize("damage", ["missing", "symlink"])
def test_a_store_with_an_unreadable_chunk_gets_its_report_without_its_pairs_read_again(
    store, tmp_path, prefect_api, damage
):
    """The flow opens without the chunk check, so the report must not read what validation found
    unreadable: a missing chunk reads as zeros, and a link may point at ``/dev/zero`` (read until memory
    runs out). Here the link points at a good copy: reading through it would go unnoticed but for the report."""
    from prefect.client.orchestration import get_client

    from homogen.flows.validate import ValidationFailed

    from helpers import latest_artifact

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    chunk = damaged / "offsets" / "c" / "1" / "0"
    if damage == "symlink":
        os.replace(chunk, tmp_path / "elsewhere")
        os.symlink(tmp_path / "elsewhere", chunk)
    else:
        chunk.unlink()
    version = open_dataset(store).version
    with pytest.raises(
        ValidationFailed, match=rf"failed checks \[.*'readable'.*see the artifact dataset-{version}-report"
    ):
        validate_dataset_flow(str(damaged), regenerate=0)
    with get_client(sync_client=True) as client:
        report = latest_artifact(client, f"dataset-{version}-report")["data"]
    assert "damaged.zarr/offsets/c/1/0" in report  # the report names the chunk file
    assert "Not computed: chunks of the store cannot be read" in report and "base64," not in report
