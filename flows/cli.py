"""``homogen run``: the ``generate-and-train`` flow from the command line, plugged into the root CLI.

``homogen/cli.py`` calls :func:`register` through the ``homogen.cli`` entry-point group. Prefect,
torch and the flows are imported inside the command, so ``homogen --help`` stays fast. Without
``PREFECT_API_URL`` the run uses Prefect's ephemeral mode (no server); with it, the run shows up in
that server's UI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load_config(text: Optional[str]) -> dict:
    """``--config`` as inline JSON or a path to a JSON file; {} when not given."""
    if not text:
        return {}
    path = Path(text)
    raw = path.read_text() if not text.lstrip().startswith("{") and path.is_file() else text
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        _fail(f"--config is neither a JSON object nor a JSON file ({exc}): pass e.g. --config '{{\"train\": {{\"epochs\": 5}}}}'")
    if not isinstance(data, dict):
        _fail("--config must be a JSON object, e.g. '{\"generate\": {\"sampling\": {\"rho\": 24}}}'")
    return data


def run(
    config: Optional[str] = typer.Option(
        None, help="PipelineConfig as JSON (inline or a file); partial sections keep the other defaults"
    ),
    rho: Optional[int] = typer.Option(None, help="maximum corner perturbation (px); default 32"),
    pairs_per_image: Optional[int] = typer.Option(None, help="pairs drawn per source image; default 32"),
    max_images: Optional[int] = typer.Option(None, help="use only the first N images by id"),
    source: Optional[str] = typer.Option(None, help="COCO root or image folder (path or URL); default: bundled sample"),
    output: Optional[str] = typer.Option(None, help="store path/URL; default <workdir>/datasets/<version>.zarr"),
    seed: Optional[int] = typer.Option(None, help="sampling seed"),
    epochs: Optional[int] = typer.Option(None, help="training epochs; default 2"),
    width: Optional[float] = typer.Option(None, help="HomographyNet channel multiplier; default 0.25"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:1 ..."),
    dask_address: Optional[str] = typer.Option(None, help="existing Dask scheduler (default $HOMOGEN_DASK_ADDRESS, else a LocalCluster)"),
    n_workers: Optional[int] = typer.Option(None, help="LocalCluster workers; default one per core"),
) -> None:
    """Generate a dataset (Dask), validate it, train HomographyNet and register it in MLflow, as one Prefect flow."""
    from pydantic import ValidationError

    from homogen.flows.config import InvalidParameters, PipelineConfig, describe_errors

    try:
        cfg = PipelineConfig.model_validate(_load_config(config))
    except ValidationError as exc:
        _fail(f"--config: {describe_errors(exc)}")
    from homogen.flows.generate_and_train import generate_and_train

    flat = dict(rho=rho, pairs_per_image=pairs_per_image, max_images=max_images, source=source, output=output,
                seed=seed, epochs=epochs, width=width, device=device, dask_address=dask_address, n_workers=n_workers)
    try:
        result = generate_and_train(cfg, **flat)
    except InvalidParameters as exc:
        _fail(str(exc))
    typer.echo(
        f"dataset {result['dataset_version']} ({result['pairs']} pairs, {result['dataset_uri']}) -> "
        f"{result['model_name']} version {result['model_version']}" + (" (champion)" if result.get("champion") else "")
    )


def register(app: typer.Typer) -> None:
    """Add ``run`` to the root ``homogen`` app."""
    app.command("run")(run)
