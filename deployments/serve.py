"""``python -m homogen.deployments.serve``: serve ``generate-and-train/local`` and ``generate-and-train/regenerate``.

Why ``prefect.serve`` rather than ``prefect.yaml`` + a process work pool + a worker: one command,
no pool to create, no code storage to configure; the serving process registers both deployments
(with their schedules) and runs their flow runs as subprocesses of itself, with the package
already importable. The flows fan generation out to Dask themselves, so the serving process
needs no scaling of its own. A work pool is the right tool where the code must run on another
machine: that is why ``train-model/gpu`` (training on a GPU machine) is a work-pool deployment
(``python -m homogen.deployments.gpu``), not a served one.

Stop with Ctrl-C: served deployments are paused on shutdown (their schedules stop creating runs)
and resume when served again.

Needs a Prefect API: ``prefect server start --host 127.0.0.1`` in another terminal and
``prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api``.
"""

from __future__ import annotations

import argparse

from prefect import serve

from homogen.deployments.definitions import served_deployments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=1, help="flow runs at once (default 1: runs share the CPU cores)")
    args = parser.parse_args(argv)
    serve(*served_deployments(), limit=args.limit)


if __name__ == "__main__":
    main()
