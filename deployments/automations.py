"""``python -m homogen.deployments.automations [--notify BLOCK]``: what an operator's server reacts to.

Creates (again, replacing its own earlier copies, so it can be re-run) on the server at
``PREFECT_API_URL``:

- the global concurrency limit ``gpu`` (1 slot), which ``train-model`` holds while it trains
  (:data:`homogen.flows.train.GPU_LIMIT`): two runs never train on one GPU at once;
- the automation ``homogen-train-on-commit``: each ``homogen.dataset.committed`` event runs the
  deployment ``train-model/gpu`` on the committed store (``dataset`` = the event's ``uri``);
- with ``--notify`` (a notification block, ``<block type slug>/<name>``, e.g. ``slack-webhook/ops``),
  the automation ``homogen-regenerate-failed``: a failed ``generate-and-train/regenerate`` run sends
  the run's name, its state message and the command that prints its logs through that block.

Needs ``train-model/gpu`` registered (``python -m homogen.deployments.gpu``) and, for ``--notify``,
``generate-and-train/regenerate`` (``python -m homogen.deployments.serve``).
"""

from __future__ import annotations

import argparse
import sys

from prefect.automations import Automation, EventTrigger, RunDeployment, SendNotification
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectNotFound

from homogen.flows.events import DATASET_COMMITTED
from homogen.flows.train import GPU_LIMIT

TRAIN_ON_COMMIT = "homogen-train-on-commit"
REGENERATE_FAILED = "homogen-regenerate-failed"
TRAIN_DEPLOYMENT = "train-model/gpu"
REGENERATE_DEPLOYMENT = "generate-and-train/regenerate"

FAILED_BODY = (
    "{{ flow_run.name }} (generate-and-train/regenerate) failed: {{ flow_run.state.message }}\n"
    "Logs: prefect flow-run logs {{ flow_run.id }}"
)


class Refused(Exception):
    """Something the automations need is missing on the server (the message names the command that makes it)."""


def deployment_id(client, name: str, made_by: str):
    try:
        return client.read_deployment_by_name(name).id
    except ObjectNotFound:
        raise Refused(f"no deployment {name} on this server: register it first with `{made_by}`") from None


def notification_block_id(client, slug_and_name: str):
    slug, sep, name = slug_and_name.partition("/")
    if not sep or not slug or not name:
        raise Refused(f"--notify {slug_and_name!r}: give <block type slug>/<name>, e.g. slack-webhook/ops")
    try:
        return client.read_block_document_by_name(name=name, block_type_slug=slug, include_secrets=False).id
    except ObjectNotFound:
        raise Refused(
            f"--notify {slug_and_name}: no such block on this server (`prefect block ls` lists them)"
        ) from None


def gpu_limit(client, slots: int = 1) -> None:
    """Create the global concurrency limit ``gpu`` unless it exists (an operator's own size is kept)."""
    try:
        client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    except ObjectNotFound:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))


def replace(client, automation: Automation) -> Automation:
    """Create ``automation``, deleting the automations of the same name first (re-running the command)."""
    for old in client.read_automations_by_name(automation.name):
        client.delete_automation(old.id)
    return automation.create()


def train_on_commit(train_id) -> Automation:
    return Automation(
        name=TRAIN_ON_COMMIT,
        description=f"Run {TRAIN_DEPLOYMENT} on every dataset version committed ({DATASET_COMMITTED}).",
        trigger=EventTrigger(expect={DATASET_COMMITTED}, posture="Reactive", threshold=1),
        actions=[
            RunDeployment(source="selected", deployment_id=train_id, parameters={"dataset": "{{ event.payload.uri }}"})
        ],
    )


def regenerate_failed(regenerate_id, block_id) -> Automation:
    return Automation(
        name=REGENERATE_FAILED,
        description=f"Report a failed {REGENERATE_DEPLOYMENT} run.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed"},
            match_related={"prefect.resource.id": f"prefect.deployment.{regenerate_id}"},
            posture="Reactive",
            threshold=1,
        ),
        actions=[
            SendNotification(block_document_id=block_id, subject="homogen: a regenerate run failed", body=FAILED_BODY)
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notify", help="notification block for failed regenerate runs: <block type slug>/<name>")
    args = parser.parse_args(argv)
    try:
        with get_client(sync_client=True) as client:
            train_id = deployment_id(client, TRAIN_DEPLOYMENT, "python -m homogen.deployments.gpu --pool gpu")
            failed = None
            if args.notify:
                block_id = notification_block_id(client, args.notify)
                regenerate_id = deployment_id(client, REGENERATE_DEPLOYMENT, "python -m homogen.deployments.serve")
                failed = regenerate_failed(regenerate_id, block_id)
            gpu_limit(client)
            print(f"global concurrency limit {GPU_LIMIT!r}: train-model holds one slot while it trains")
            replace(client, train_on_commit(train_id))
            print(f"automation {TRAIN_ON_COMMIT}: {DATASET_COMMITTED} -> run {TRAIN_DEPLOYMENT}")
            if failed is not None:
                replace(client, failed)
                print(f"automation {REGENERATE_FAILED}: a failed {REGENERATE_DEPLOYMENT} run -> {args.notify}")
            else:
                print(f"no --notify block: failed {REGENERATE_DEPLOYMENT} runs are not reported")
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
