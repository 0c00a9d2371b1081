"""Where MLflow records runs and models: the tracking URI, the experiment, and their check.

Tracking URI, in order: the ``tracking_uri`` argument, ``$MLFLOW_TRACKING_URI``, else SQLite in
the project's working folder, ``sqlite:///<HOMOGEN_WORKDIR or ./work>/mlflow.db``, with artifacts
in ``<workdir>/mlartifacts``. For any ``sqlite:///DIR/NAME.db`` URI the experiment's artifacts go to
``DIR/mlartifacts`` (not MLflow's ``./mlruns`` relative to the current directory).

Experiment: the ``experiment`` argument, else ``$MLFLOW_EXPERIMENT_NAME``, else ``homogen``; the
CLI and the flows use the same one.

A URI with credentials (``http://user:password@host``) is never handed to MLflow as such: MLflow
prints its tracking URI ("View run ... at: http://user:password@..."). :func:`setup_tracking`
moves them to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (MLflow's own basic-auth
variables) and gives MLflow the URI without them.

Related modules, one job each: :mod:`homogen.model.mlflow_run` (the run of one training),
:mod:`homogen.model.artifacts` (evaluation files), :mod:`homogen.model.mlflow_model` (the logged
model format), :mod:`homogen.model.registry` (registered versions and the champion rule),
:mod:`homogen.model.loading` (one ``load_model(uri)``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from homogen.config import workdir
from homogen.environment import environment
from homogen.redaction import redact

__all__ = [
    "DEFAULT_EXPERIMENT",
    "TrackingError",
    "artifact_location",
    "default_tracking_uri",
    "experiment_name",
    "resolve_tracking_uri",
    "setup_tracking",
]

DEFAULT_EXPERIMENT = "homogen"
ARTIFACTS_DIR = "mlartifacts"


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used; the message names the URI (without credentials)."""


def default_tracking_uri() -> str:
    """``sqlite:///<workdir>/mlflow.db`` (absolute path; workdir = ``$HOMOGEN_WORKDIR`` or ``./work``)."""
    return f"sqlite:///{(Path(workdir()) / 'mlflow.db').resolve()}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The argument, else ``$MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def experiment_name(name: str | None = None) -> str:
    """The argument, else ``$MLFLOW_EXPERIMENT_NAME``, else :data:`DEFAULT_EXPERIMENT`."""
    return name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)  # sqlite:////abs -> '/abs'; sqlite:///rel -> 'rel'


def artifact_location(uri: str) -> str | None:
    """Where new experiments keep artifacts: ``DIR/mlartifacts`` beside a SQLite ``DIR/x.db``; else the server's default."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / ARTIFACTS_DIR).as_uri()


def _move_credentials(uri: str) -> str:
    """``uri`` without ``user:password@``; those go to MLflow's basic-auth environment variables."""
    if "://" not in uri or "@" not in urlsplit(uri).netloc:
        return uri
    parts = urlsplit(uri)
    if parts.username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    if parts.password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=host).geturl()


def setup_tracking(uri: str | None = None, experiment: str | None = "", timeout_s: int = 10) -> str:
    """Point MLflow (tracking and registry) at ``uri`` (see :func:`resolve_tracking_uri`) and check it answers.

    Creates the SQLite folder and the experiment (artifacts beside a SQLite store), and makes it the
    active one: ``experiment`` names it, ``""`` means :func:`experiment_name` (``$MLFLOW_EXPERIMENT_NAME``
    or ``homogen``), None means no experiment (only the registry or a run by id is needed).
    Returns the URI in use, without credentials (they are in MLflow's environment variables).

    Raises:
        TrackingError: the store cannot be reached or opened; the message names the URI with
            credentials stripped and says how to choose another.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = _move_credentials(resolve_tracking_uri(uri))
    hint = "start that server, or choose another store with MLFLOW_TRACKING_URI / --tracking-uri"
    db = _sqlite_path(uri)
    name = None if experiment is None else experiment_name(experiment)
    try:
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        # One quick attempt instead of MLflow's default minutes of retries against a dead server.
        with environment({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}):
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            exp_id = None
            if name:
                exp = client.get_experiment_by_name(name)
                exp_id = (
                    exp.experiment_id
                    if exp
                    else client.create_experiment(name, artifact_location=artifact_location(uri))
                )
    except Exception as exc:  # noqa: BLE001 - any failure here means "unreachable"; say which store
        # The URI has no credentials any more, but an HTTP library's message may quote a URL: redact.
        raise TrackingError(
            f"MLflow tracking store {redact(uri)} is unreachable: {redact(f'{type(exc).__name__}: {exc}')[:400]} ({hint})"
        ) from exc
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if exp_id is not None:
        mlflow.set_experiment(experiment_id=exp_id)
    return uri
