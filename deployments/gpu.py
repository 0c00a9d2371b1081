"""``python -m homogen.deployments.gpu [--pool gpu] [--config JSON]``: register ``train-model/gpu`` on a work pool.

On the GPU machine (same package installed, the same ``PREFECT_API_URL``), with a lasting working
folder (checkpoints live there; a process worker runs each flow in a temporary folder it removes)
and the shared MLflow server::

    export HOMOGEN_WORKDIR=/data/homogen MLFLOW_TRACKING_URI=http://mlflow-host:5000
    prefect work-pool create gpu --type process
    prefect worker start --pool gpu

Anywhere with access to the server: ``python -m homogen.deployments.gpu --pool gpu`` (training
settings: CUDA, full width, 10 epochs; ``--config '{"epochs": 30}'`` replaces them). Then
``prefect deployment run generate-and-train/local --param config='{"train_deployment": "train-model/gpu",
"tracking": {"uri": "http://mlflow-host:5000"}}'`` generates on the CPU host and trains on the GPU
worker with the deployment's settings; only the ``train`` fields given in the parent's config
(or ``--param epochs=...``) override them. The dataset store must be reachable from the GPU machine
(a shared path or an fsspec URL for ``output``). A tracking URI the worker cannot share (SQLite, a
local path) is refused before generation starts.
"""

from __future__ import annotations

import argparse
import json
import sys

from homogen.deployments.definitions import GPU_POOL, GPU_TRAIN, gpu_deployment


def main(argv: list[str] | None = None) -> None:
    from pydantic import ValidationError

    from homogen.model.config import TrainConfig
    from homogen.param_errors import describe_errors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=GPU_POOL, help=f"work pool of the GPU worker (default {GPU_POOL})")
    parser.add_argument(
        "--config",
        default=None,
        help=f"the deployment's training settings as a JSON object (default {json.dumps(GPU_TRAIN)})",
    )
    args = parser.parse_args(argv)
    train = dict(GPU_TRAIN)
    if args.config:
        try:
            train = json.loads(args.config)
            TrainConfig.model_validate(train)
        except json.JSONDecodeError as exc:
            print(f"error: --config is not JSON ({exc}): e.g. --config '{{\"epochs\": 30}}'", file=sys.stderr)
            raise SystemExit(2) from exc
        except ValidationError as exc:
            print(f"error: --config: {describe_errors(exc)}", file=sys.stderr)
            raise SystemExit(2) from exc
    # RunnerDeployment.apply registers it as is: the code is the installed package (module-path
    # entrypoint), nothing to build or push.
    deployment_id = gpu_deployment(args.pool, train).apply()
    print(
        f"deployment train-model/gpu ({deployment_id}) on work pool {args.pool!r} with {json.dumps(train)}: "
        f"start a worker with `prefect worker start --pool {args.pool}`"
    )


if __name__ == "__main__":
    main()
