"""``homogen run``: the ``generate-and-train`` flow from the command line, plugged into the root CLI.

``homogen/cli.py`` calls :func:`register` through the ``homogen.cli`` entry-point group. The flow
(Prefect, Dask) is imported inside the command; the options are made from the flat shortcuts of
:mod:`homogen.flows.config` (pydantic only), with their fields' types, descriptions and defaults. Without
``PREFECT_API_URL`` the run uses Prefect's ephemeral mode (no server); with it, the run shows up in
that server's UI.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import typer

from homogen.cli import fail as _fail
from homogen.flows.entry import prefect_settings

__all__ = ["register"]


def run(config: Optional[str] = None, **flat: Any) -> None:
    """Generate a dataset (Dask), validate it, train HomographyNet and register it in MLflow, as one Prefect flow.

    Every value is checked before the flow starts (a refused value never reaches Prefect).
    """
    from homogen.flows.config import InvalidParameters, checked_config, load_config

    try:
        cfg = checked_config(load_config(config), "--config", **flat)
    except InvalidParameters as exc:
        _fail(str(exc))
    from homogen.flows.generate_and_train import generate_and_train

    with prefect_settings():
        result = generate_and_train(cfg, **flat)
    typer.echo(
        f"dataset {result['dataset_version']} ({result['pairs']} pairs, {result['dataset_uri']}) -> "
        f"{result['model_name']} version {result['model_version']}" + (" (champion)" if result.get("champion") else "")
    )


def _options() -> inspect.Signature:
    """``run``'s options: ``--config`` and one per flat shortcut, typed, described and defaulted from the config."""
    from homogen.flows.config import flat_parameters

    config = typer.Option(
        None, help="PipelineConfig as JSON (inline or a file); partial sections keep the other defaults"
    )
    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=config, annotation=Optional[str])]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, help=text), annotation=kind)
        for name, (kind, text) in flat_parameters().items()
    ]
    return inspect.Signature(params, return_annotation=None)


def register(app: typer.Typer) -> None:
    """Add ``run`` to the root ``homogen`` app (its options made when the command is registered)."""
    run.__signature__ = _options()
    app.command("run")(run)
