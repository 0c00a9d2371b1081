"""``python -m homogen.deployments.gpu [--pool gpu]``: register ``train-model/gpu`` on a work pool.

On the GPU machine (same package installed, same Prefect server, a shared MLflow server):

    prefect work-pool create gpu --type process
    prefect worker start --pool gpu

Anywhere with access to the server: ``python -m homogen.deployments.gpu --pool gpu``. Then
``prefect deployment run generate-and-train/local --param config='{"train_deployment": "train-model/gpu"}'``
runs generation on the CPU host and training on the GPU worker. The dataset store must be
reachable from the GPU machine (a shared path or an fsspec URL for ``output``) and
``tracking.uri`` must be an MLflow server both machines reach.
"""

from __future__ import annotations

import argparse

from homogen.deployments.definitions import GPU_POOL, gpu_deployment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=GPU_POOL, help=f"work pool of the GPU worker (default {GPU_POOL})")
    args = parser.parse_args(argv)
    # RunnerDeployment.apply registers it as is: the code is the installed package (module-path
    # entrypoint), nothing to build or push.
    deployment_id = gpu_deployment(args.pool).apply()
    print(
        f"deployment train-model/gpu ({deployment_id}) on work pool {args.pool!r}: start a worker with `prefect worker start --pool {args.pool}`"
    )


if __name__ == "__main__":
    main()
