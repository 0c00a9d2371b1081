"""The Prefect settings of the project's command-line entry points, where the user has set none.

The entry points that may start Prefect's ephemeral server (``python -m homogen.flows.*``,
``homogen run``) run their flow inside :func:`prefect_settings`. It lays :data:`PREFECT_DEFAULTS`
over Prefect's current settings with Prefect's own ``temporary_settings``, for each setting the
user has not set (in the environment or the active profile: a user's own value always wins), and
says on stderr when a temporary server is about to start and how long it may take. Prefect passes
the current settings to the ephemeral server it starts, so the server gets them too.

Deployments, a served process and tests that import the flows keep Prefect's own defaults.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

EPHEMERAL_STARTUP_S = 180
"""Seconds the ephemeral server may take to start. Prefect's default, 20 s, is less than a first start
needs on a busy 2-core machine: it creates its SQLite database and runs every migration (17.7 s for a
do-nothing flow with a brand-new Prefect home on an idle machine; the README's first command timed out
after 21 s on a busy one). A later start, with the database made, takes a few seconds."""

PREFECT_DEFAULTS: dict[str, object] = {
    # The ephemeral server's telemetry service posts to Prefect's analytics endpoint on every start: offline it
    # logs "ERROR | prefect.server.services.telemetry - Failed to send telemetry", and its heartbeat's write to
    # the ephemeral SQLite database sometimes collides with the run's own ("database is locked").
    "PREFECT_SERVER_ANALYTICS_ENABLED": False,
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": EPHEMERAL_STARTUP_S,
}
"""Prefect settings of this project's entry points (Prefect's name of each -> value), applied where the user set none."""


def user_has_set(settings, dotted: str) -> bool:
    """Whether ``dotted`` (``"server.analytics_enabled"``) was set by the environment or the profile, not defaulted."""
    *parents, field = dotted.split(".")
    for name in parents:
        settings = getattr(settings, name)
    return field in settings.model_fields_set


@contextmanager
def prefect_settings() -> Iterator[None]:
    """Run the block with :data:`PREFECT_DEFAULTS` where the user has not set them, announcing a temporary server."""
    import prefect.settings
    from prefect.settings import get_current_settings, temporary_settings

    current = get_current_settings()
    wanted = {getattr(prefect.settings, name): value for name, value in PREFECT_DEFAULTS.items()}
    updates = {setting: value for setting, value in wanted.items() if not user_has_set(current, setting.accessor)}
    with temporary_settings(updates=updates) as settings:
        if settings.api.url is None and settings.server.ephemeral.enabled:
            timeout = settings.server.ephemeral.startup_timeout_seconds
            print(
                f"homogen: PREFECT_API_URL is not set, so Prefect starts a temporary server for this run; "
                f"its first start creates the database under {settings.home} and may take a minute on a small "
                f"machine (waiting up to {timeout} s: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)",
                file=sys.stderr,
                flush=True,
            )
        yield
