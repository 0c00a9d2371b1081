"""Imported once by the forkserver the flow's LocalCluster forks its workers from (:mod:`homogen.flows.cluster`).

It imports the modules the program's ``__main__`` imported (listed in :data:`PRELOAD_ENV` by
:func:`homogen.flows.cluster.worker_start_method`), so that each worker forked from the server
finds them loaded when multiprocessing re-runs ``__main__`` in it. Each module is imported on its
own and one that fails is skipped, its output with it: nothing here may stop the server, whose
death would leave the flow without workers. A module that parses ``sys.argv`` when imported, for
one, finds the server's ``['-c']`` there; the workers then import it themselves, with the program's
arguments.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys

PRELOAD_ENV = "HOMOGEN_FORKSERVER_PRELOAD"
"""JSON ``{"modules": [...], "path": [...]}``: what to import, and the program's ``sys.path`` entries
to find them by (the forkserver of Python 3.11 starts with its own)."""


def preload(spec: str | None) -> list[str]:
    """Import every module ``spec`` (:data:`PRELOAD_ENV`'s JSON) names; returns the names that failed."""
    if not spec:
        return []
    wanted = json.loads(spec)
    sys.path.extend(entry for entry in wanted.get("path", []) if entry not in sys.path)
    failed = []
    for name in wanted.get("modules", []):
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - SystemExit from an argument parser, anything: the workers import it
            failed.append(name)
        else:
            sys.stderr.write(output.getvalue())
    return failed


preload(os.environ.get(PRELOAD_ENV))  # in the forkserver; elsewhere the variable is unset: nothing
