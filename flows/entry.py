"""What the project's command-line entry points set before Prefect is imported (this module imports no Prefect).

Prefect reads its settings once, when it is first imported (``prefect.context`` builds the root
settings from the environment), and its ephemeral server, started by the first flow run without
``PREFECT_API_URL``, inherits this process's environment. So the entry points that may start an
ephemeral server (``python -m homogen.flows.*``, ``homogen run``) call :func:`prefect_defaults`
first thing. A value the user set in the environment wins (``setdefault``). Long-running servers and
``deployments/serve.py`` keep Prefect's own defaults.
"""

from __future__ import annotations

import os

PREFECT_DEFAULTS: dict[str, str] = {
    # The ephemeral server's telemetry service posts to Prefect's analytics endpoint on every start: offline it
    # logs "ERROR | prefect.server.services.telemetry - Failed to send telemetry", and its heartbeat's write to
    # the ephemeral SQLite database sometimes collides with the run's own ("database is locked").
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""Environment defaults of this project's own entry points (variable -> value)."""


def prefect_defaults() -> None:
    """Set :data:`PREFECT_DEFAULTS` in this process's environment where the user has not set them; call before importing Prefect."""
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)
