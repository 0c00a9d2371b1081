"""A run pins the dataset version it started on: the store is read again and must still hold it.

Training reads its store for hours; ``homogen generate --overwrite`` into the same path meanwhile
would mix two datasets into one model and score it on pairs it was not selected for. The trainer
checks at every epoch (:func:`homogen.model.train.train`) and the test scoring before it reads the
test pairs and after (:func:`homogen.model.evaluate.score_test`): a change stops the run with
:class:`DatasetChanged`, and nothing is registered.
"""

from __future__ import annotations

from typing import Any

from homogen.redaction import redact

__all__ = ["DatasetChanged", "check_unchanged", "version_now"]


class DatasetChanged(RuntimeError):
    """The store holds another dataset version than the one the run started on."""


def version_now(ds: Any) -> str:
    """The dataset version the store at ``ds.uri`` holds now: its manifest read again, arrays not opened
    (:func:`homogen.store.read_manifest`: one small file on Zarr, one GET on object storage)."""
    from homogen.store import read_manifest

    return str(read_manifest(str(ds.uri))["dataset_version"])


def check_unchanged(ds: Any, version: str, when: str) -> None:
    """Refuse to go on when the store at ``ds.uri`` no longer holds ``version``.

    Args:
        when: what was about to happen (``"epoch 3"``, ``"test scoring"``), for the message.

    Raises:
        DatasetChanged: naming the store, both versions and what to do.
    """
    try:
        now = version_now(ds)
    except Exception as exc:  # noqa: BLE001 - a store being rewritten reads as half a store: also a change
        now = f"unreadable ({type(exc).__name__}: {redact(str(exc))[:200]})"
    if now != str(version):
        raise DatasetChanged(
            f"store {redact(str(ds.uri))} now holds dataset version {now}, not {version} that this run started on "
            f"(it was regenerated during the run): stopped before {when}, nothing registered; train again on "
            f"the new version, or generate into another output"
        )
