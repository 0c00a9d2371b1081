"""The ``homogen`` command line: generate, validate, info, show, diff.

Commands that need torch (``train``, ``evaluate``, ``predict``) or Prefect (``run``) live beside
the code they drive and plug in through the ``homogen.cli`` entry-point group, so this module
(and the library) imports neither.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import List, Optional

import typer
from pydantic import ValidationError

from homogen.config import SAMPLE_ROOT, GenerateConfig, SamplingConfig, SourceConfig
from homogen.param_errors import describe_errors
from homogen.sources import SourceError
from homogen.spelling import command_line
from homogen.store import StoreError, is_local, local_path, open_dataset

app = typer.Typer(
    help="Versioned synthetic homography datasets from image collections (COCO by default).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def interrupted(message: str) -> None:
    """Ctrl-C: one line saying what is kept and how to go on, exit 130 (128 + SIGINT), as a shell reports it.

    zarr's event-loop thread may still hold tasks of the write that was cut off; at exit asyncio logs
    each as "Task was destroyed but it is pending", which says nothing to a user: the ``asyncio``
    logger is quietened for the few moments left (the staged shard it was writing is never used).
    """
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    typer.secho(f"\ninterrupted: {message}", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(130)


@app.command()
def generate(
    source: str = typer.Option(
        SAMPLE_ROOT, help="COCO root or image folder (path or fsspec URL); default: bundled sample"
    ),
    kind: str = typer.Option("auto", help="auto | coco | folder"),
    train_split: str = typer.Option("train2017", help="COCO split for training pairs"),
    test_split: Optional[str] = typer.Option(
        None, help="COCO split for test pairs (e.g. val2017); default: hash split"
    ),
    test_fraction: float = typer.Option(0.1, help="share of images hashed into the test split"),
    val_fraction: float = typer.Option(
        SourceConfig.model_fields["val_fraction"].default,
        help="share of the training images hashed into val (model selection)",
    ),
    category: List[str] = typer.Option([], help="keep only images with this COCO category (repeatable)"),
    max_images: Optional[int] = typer.Option(None, help="use only the first N images by id"),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="store path/URL; default work/datasets/<version>.zarr"
    ),
    format: Optional[str] = typer.Option(None, help="zarr | hdf5 (default: from the output suffix)"),
    rho: int = typer.Option(32, help="maximum corner perturbation (px)"),
    patch_size: int = typer.Option(128, help="patch side P (px)"),
    image_width: int = typer.Option(320),
    image_height: int = typer.Option(240),
    pairs_per_image: int = typer.Option(4),
    seed: int = typer.Option(0),
    photometric: str = typer.Option("none", help="none | easy | hard | tough"),
    shard_size: int = typer.Option(64, help="images per shard (64 x 4 pairs = one 256-pair chunk)"),
    chunk_size: int = typer.Option(256, help="pairs per storage chunk"),
    overwrite: bool = typer.Option(False, help="replace an output holding another dataset version"),
) -> None:
    """Generate a dataset (or finish an interrupted one) in this process."""
    from homogen.generate import GenerationInterrupted, run_generation

    try:
        cfg = GenerateConfig(
            source=SourceConfig(
                root=source,
                kind=kind,
                train_split=train_split,
                test_split=test_split,
                test_fraction=test_fraction,
                val_fraction=val_fraction,
                categories=tuple(category),
                max_images=max_images,
            ),
            sampling=SamplingConfig(
                image_width=image_width,
                image_height=image_height,
                patch_size=patch_size,
                rho=rho,
                pairs_per_image=pairs_per_image,
                seed=seed,
                photometric=photometric,
            ),
            output=output,
            format=format,
            shard_size=shard_size,
            chunk_size=chunk_size,
            overwrite=overwrite,
        )
    except ValidationError as exc:
        fail(describe_errors(exc))
    try:
        with command_line():  # library messages spell options as flags (--overwrite), not overwrite=True
            run = run_generation(cfg)
    except (SourceError, StoreError) as exc:
        fail(str(exc))
    except GenerationInterrupted as exc:
        interrupted(f"{exc.kept}; re-run the same command to finish the dataset")
    manifest = run.manifest
    q = manifest["quarantine"]
    if run.already_complete:
        typer.echo(
            f"dataset {manifest['dataset_version']} is already complete in {manifest['config']['output']} "
            f"({manifest['num_pairs']} pairs, {len(manifest['shards'])} shards of {manifest['shard_size']} images): "
            f"nothing to do"
        )
        return
    typer.echo(
        f"dataset {manifest['dataset_version']}: {manifest['num_pairs']} pairs "
        f"(train {manifest['splits']['train']}, val {manifest['splits']['val']}, test {manifest['splits']['test']}) from "
        f"{manifest['num_images']} images in {len(manifest['shards'])} shards, {len(q)} quarantined"
    )
    for entry in q:
        typer.echo(f"  quarantined {entry['path']}: {entry['reason']}")
    out = manifest["config"]["output"]
    typer.echo(f"store: {local_path(out) if is_local(out) else out}")  # a quoted ~ expanded, as it was written
    for line in empty_split_notes(manifest["splits"]):
        typer.echo(line)


EMPTY_SPLIT = {
    "train": "training has nothing to learn from",
    "val": "training cannot select a model without looking at the test pairs, and refuses the store",
    "test": "evaluation has no pairs to score",
}


def empty_split_notes(splits: dict) -> list[str]:
    """A line per empty split, saying what it stops and how to fill it (before a training run finds out)."""
    return [
        f"note: no {name} pairs, so {why}: use more images, or change --{name}-fraction"
        if name != "train"
        else f"note: no {name} pairs, so {why}: use more images, or lower --val-fraction and --test-fraction"
        for name, why in EMPTY_SPLIT.items()
        if not splits.get(name)
    ]


def _open(store: str, check_chunks: bool = True):
    try:
        return open_dataset(store, check_chunks=check_chunks)
    except StoreError as exc:
        fail(str(exc))


@app.command()
def info(
    store: str,
    as_json: bool = typer.Option(False, "--json", help="print the whole manifest as JSON"),
    sources: bool = typer.Option(
        False, "--sources", help="print the manifest as JSON with the per-image source table (read from its array)"
    ),
) -> None:
    """Print a store's version, counts and manifest."""
    ds = _open(store)
    m = ds.manifest
    if as_json or sources:
        try:
            typer.echo(json.dumps({**m, "source": ds.sources} if sources else m, indent=2))
        except StoreError as exc:  # the source table is missing or damaged
            fail(str(exc))
        return
    s = m["config"]["sampling"]
    typer.echo(
        f"dataset version   {m['dataset_version']}  (schema {m['schema_version']}, generator {m['generator_version']})"
    )
    typer.echo(f"store             {ds.uri}  ({m['format']}, {ds.chunk_len} pairs/chunk)")
    typer.echo(
        f"pairs             {len(ds)}  train {m['splits']['train']}  val {m['splits'].get('val', 0)}  test {m['splits']['test']}"
    )
    typer.echo(
        f"images            {m['num_images']} used, {len(m['quarantine'])} quarantined, {len(m['shards'])} shards"
    )
    typer.echo(
        f"recipe            {s['image_width']}x{s['image_height']} P={s['patch_size']} rho={s['rho']} "
        f"pairs/image={s['pairs_per_image']} seed={s['seed']} photometric={s['photometric']}"
    )
    src = m["source"]
    table = src.get("table")
    where = f"the array {table['array']}, {table['bytes']:,} bytes" if table else "the manifest"
    typer.echo(
        f"source            {src['root']}  ({src['images']} images, source digest {src['digest'][:16]}; "
        f"per-image table in {where})"
    )
    code = m.get("code")
    if code:
        typer.echo("code              " + "  ".join(f"{k} {v}" for k, v in code.items()))
    digest = m.get("array_digest")
    if digest:
        typer.echo(
            f"array digest      {digest['hash']}: pairs {digest['arrays'].get('pairs', '?')} (all arrays: --json)"
        )
    for entry in m["quarantine"]:
        typer.echo(f"  quarantined {entry['path']}: {entry['reason']}")


@app.command()
def validate(
    store: str,
    regenerate: int = typer.Option(0, help="also regenerate N random pairs from the source images and compare bytes"),
    source_root: Optional[str] = typer.Option(
        None, help="where the source images are now (for --regenerate and --sources)"
    ),
    sources: bool = typer.Option(
        False, "--sources", help="also re-hash every source image and name those that changed"
    ),
    report: Optional[str] = typer.Option(None, help="write the report as JSON here"),
) -> None:
    """Check a store's consistency; exit 1 if any check fails."""
    from homogen.validation import validate_dataset

    try:
        result = validate_dataset(
            _open(store, check_chunks=False), regenerate=regenerate, source_root=source_root, sources=sources
        )
    except StoreError as exc:  # the source table is missing or damaged
        fail(str(exc))
    typer.echo(result.to_markdown())
    if report:
        with open(report, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def show(
    store: str,
    out: str = typer.Option("samples.png", "--out", "-o", help="PNG to write"),
    n: int = typer.Option(8, help="number of pairs"),
    start: Optional[int] = typer.Option(
        None, help="show consecutive pairs from this index; default: pairs spread evenly over the store"
    ),
) -> None:
    """Write a PNG grid of pairs: the perturbed quadrilateral on A, its image on B."""
    from homogen.render import default_indices, sample_grid, save_png

    ds = _open(store)
    if start is None:
        indices = default_indices(ds, n).tolist()
    elif not 0 <= start < len(ds):
        fail(f"--start {start} is outside the store's {len(ds)} pairs")
    else:
        indices = list(range(start, min(start + n, len(ds))))
    save_png(sample_grid(ds, n=len(indices), indices=indices), out)
    typer.echo(f"wrote {out} ({len(indices)} pairs of {ds.version}: rows {', '.join(map(str, indices))})")


@app.command()
def diff(
    store_a: str = typer.Argument(..., help="store A (path or URL)"),
    store_b: str = typer.Argument(..., help="store B (path or URL)"),
    as_json: bool = typer.Option(False, "--json", help="print the differences as JSON"),
) -> None:
    """What changed from A to B: recipe fields, images added/removed/changed, splits moved, pair counts.

    Exit 0 when the datasets are identical, 1 when they differ (like diff), 2 on bad input.
    """
    from homogen.lineage.diff import diff_stores

    try:
        result = diff_stores(store_a, store_b)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    typer.echo(result.to_json() if as_json else result.to_text())
    if not result.identical:
        raise typer.Exit(1)


def _load_plugins() -> None:
    for ep in entry_points(group="homogen.cli"):
        try:
            register = ep.load()
        except ImportError as exc:  # a broken install: say so, keep the core commands working
            typer.secho(f"warning: commands from {ep.value} unavailable ({exc})", fg=typer.colors.YELLOW, err=True)
            continue
        register(app)


def main() -> None:
    _load_plugins()
    app()


if __name__ == "__main__":
    main()
