"""The pipeline's Prefect events: what an operator's automation can react to without polling.

- ``homogen.dataset.committed``: a dataset version's manifest was committed (``generate-dataset``).
  Resource ``homogen.dataset.<version>``; payload: ``version``, ``pairs``, ``recipe`` (the sampling
  config), ``uri`` (the store, without credentials).
- ``homogen.model.registered``: a model version was registered (``train-model``). Resource
  ``homogen.model.<name>.<version>``; related: its dataset version (role ``dataset``); payload:
  ``name``, ``version``, ``model_uri``, ``run_id``, ``test_mace``, ``champion``, ``promotion``.
- ``homogen.model.promoted``: that version became the champion (same resource, related, payload).

Sent with Prefect's public ``emit_event`` (inside a run, Prefect relates the event to the flow and
task run). Nothing here reads the store or the registry: the callers hand over what they hold.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from homogen.redaction import redact

DATASET_COMMITTED = "homogen.dataset.committed"
MODEL_REGISTERED = "homogen.model.registered"
MODEL_PROMOTED = "homogen.model.promoted"


def dataset_resource(version: str, role: str | None = None) -> dict[str, str]:
    """The Prefect resource of a dataset version (``role`` when it is a related resource)."""
    resource = {"prefect.resource.id": f"homogen.dataset.{version}", "prefect.resource.name": f"dataset {version}"}
    return resource | ({"prefect.resource.role": role} if role else {})


def dataset_committed(manifest: dict) -> None:
    """Emit ``homogen.dataset.committed`` for a committed manifest."""
    version = manifest["dataset_version"]
    emit_event(
        DATASET_COMMITTED,
        resource=dataset_resource(version),
        payload={
            "version": version,
            "pairs": manifest["num_pairs"],
            "recipe": manifest["config"]["sampling"],
            "uri": redact(manifest["config"]["output"]),
        },
    )


def model_registered(name: str, version: str | int, dataset_version: str, champion: bool, **details: Any) -> list[str]:
    """Emit ``homogen.model.registered``, and ``homogen.model.promoted`` when the version became champion.

    ``details`` (``model_uri``, ``run_id``, ``test_mace``, ``promotion``) go into the payload, URLs
    without credentials. Returns the names of the events sent.
    """
    resource = {"prefect.resource.id": f"homogen.model.{name}.{version}", "prefect.resource.name": f"{name} v{version}"}
    payload = {"name": name, "version": str(version), "champion": bool(champion)}
    payload |= {key: redact(value) for key, value in details.items()}
    sent = [MODEL_REGISTERED] + ([MODEL_PROMOTED] if champion else [])
    for event in sent:
        emit_event(event, resource=resource, related=[dataset_resource(dataset_version, "dataset")], payload=payload)
    return sent
