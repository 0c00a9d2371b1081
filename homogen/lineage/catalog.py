"""The dataset stores present under a local folder: ``homogen datasets --stores DIR``.

Each ``*.zarr`` folder and ``*.h5``/``*.hdf5`` file directly under the folder is opened through
:func:`homogen.stores.open_dataset` (its manifest only); one that cannot be opened (incomplete,
damaged, not a store) is listed with the reason instead of its version, never skipped silently.
Newest first, by the time its manifest was last written (a commit writes it last).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["StoreEntry", "find_stores", "format_stores", "recipe_summary"]

SUFFIXES = (".zarr", ".h5", ".hdf5")


def recipe_summary(sampling: dict[str, Any]) -> str:
    """``320x240 P=128 rho=32 pairs/image=4 photometric=none seed=0``."""
    s = sampling
    return (
        f"{s['image_width']}x{s['image_height']} P={s['patch_size']} rho={s['rho']} "
        f"pairs/image={s['pairs_per_image']} photometric={s['photometric']} seed={s['seed']}"
    )


@dataclass
class StoreEntry:
    """One store under the folder: its version and counts, or why it could not be opened."""

    path: str
    modified: str
    version: str | None = None
    pairs: int | None = None
    recipe: str | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _manifest_file(path: str) -> str:
    meta = os.path.join(path, "zarr.json")
    return meta if os.path.isdir(path) and os.path.isfile(meta) else path


def find_stores(folder: str) -> list[StoreEntry]:
    """Every store directly under ``folder``, newest first.

    Raises:
        NotADirectoryError, FileNotFoundError: ``folder`` is not a folder (names it).
    """
    from homogen.stores import StoreError, open_dataset

    if not os.path.isdir(folder):
        raise NotADirectoryError(
            f"{folder} is not a folder: pass the folder that holds the stores (e.g. work/datasets)"
        )
    found = []
    for entry in os.scandir(folder):
        if not entry.name.endswith(SUFFIXES) or ".tmp-" in entry.name:
            continue
        mtime = os.stat(_manifest_file(entry.path)).st_mtime
        when = dt.datetime.fromtimestamp(mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        row = StoreEntry(entry.path, when)
        try:
            with open_dataset(entry.path, check_chunks=False) as ds:
                row.version, row.pairs, row.recipe = ds.version, len(ds), recipe_summary(ds.sampling)
        except StoreError as exc:
            row.problem = str(exc)
        found.append((mtime, row))
    return [row for _, row in sorted(found, key=lambda x: (-x[0], x[1].path))]


def format_stores(folder: str, rows: list[StoreEntry], models: dict[str, list[str]] | None = None) -> str:
    """A table of :func:`find_stores`; ``models``: version -> model versions trained on it, when known."""
    if not rows:
        return f"no store (*.zarr, *.h5) under {folder}"
    head = ("version", "written (UTC)", "pairs", "recipe", "models", "path")
    table = []
    for r in rows:
        if r.problem:
            table.append(("-", r.modified, "-", "-", "-", f"{r.path}: {r.problem}"))
            continue
        known = "?" if models is None else (", ".join(models.get(r.version, [])) or "-")
        table.append((r.version, r.modified, str(r.pairs), r.recipe, known, r.path))
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[5] for line in [head, *table])
