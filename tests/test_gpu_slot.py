"""The ``gpu`` concurrency slot of ``train-model`` (homogen.flows.train.gpu_slot) on a real Prefect API:
without the limit a run trains at once and says so in one INFO line (Prefect warned on every run);
with it, a second run waits for the first one's slot."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import pytest
from prefect import flow, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from homogen.flows.train import GPU_LIMIT, gpu_slot

pytestmark = pytest.mark.slow


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def prefect_logs():
    handler = Records()
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


@flow
def train_in_a_slot() -> bool:
    with gpu_slot():
        return True


def test_without_the_limit_training_does_not_wait_and_says_so_once_without_a_warning(prefect_api, prefect_logs):
    with get_client(sync_client=True) as client:
        with contextlib.suppress(Exception):
            client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
    assert train_in_a_slot()
    said = [(r.levelname, r.getMessage()) for r in prefect_logs]
    assert not [m for level, m in said if "do not exist" in m or level == "WARNING"], said
    assert [m for level, m in said if level == "INFO" and "no 'gpu' concurrency limit" in m], said


def test_with_the_limit_a_second_run_waits_for_the_first_runs_slot(prefect_api):
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=1))
    try:
        holding, release, times = threading.Event(), threading.Event(), {}

        def first():
            with gpu_slot():
                holding.set()
                release.wait(60)
                times["released"] = time.monotonic()

        def second():
            holding.wait(60)
            with gpu_slot():
                times["second"] = time.monotonic()

        a, b = threading.Thread(target=first), threading.Thread(target=second)
        a.start()
        b.start()
        assert holding.wait(60)
        time.sleep(3)  # the second has had time to take a free slot: it must not have
        assert "second" not in times
        release.set()
        a.join(60)
        b.join(60)
        assert times["second"] >= times["released"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
