"""What an evaluation says beyond the table: refinement gains, and the breakdown by noise level.

A store records the photometric level it was generated with (``sampling.photometric`` in its
manifest: none, easy, hard or tough); one store holds one level. The per-noise-level table puts
the results of several stores side by side (same methods, one block of rows per level), e.g.
stores generated from the same images and seed at ``easy``, ``hard`` and ``tough``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from homogen.model.evaluate import NETWORK, format_table, method_label
from homogen.model.methods import base_method
from homogen.redaction import redact

__all__ = ["check_same_pairs", "format_levels", "noise_level", "refinement_report"]

_GEOMETRY = ("image_id", "corners", "offsets")
"""The fields that make two stores' pairs the same pairs (image, crop, corner offsets); the pixels
differ only by the photometric level."""


def _pair_geometry(ds: Any, split: str | None, limit: int | None) -> dict[str, np.ndarray]:
    """``image_id`` (N,), ``corners`` (N, 4, 2) and ``offsets`` (N, 8) of the first ``limit`` pairs of ``split``."""
    parts: dict[str, list[np.ndarray]] = {f: [] for f in _GEOMETRY}
    n = 0
    for block in ds.iter_chunks(split=split, fields=_GEOMETRY):
        take = len(block["image_id"]) if limit is None else min(len(block["image_id"]), limit - n)
        for f in _GEOMETRY:
            parts[f].append(block[f][:take])
        n += take
        if limit is not None and n >= limit:
            break
    return {f: np.concatenate(v) if v else np.empty(0) for f, v in parts.items()}


def _image_digests(ds: Any) -> dict[int, str]:
    """Image id -> content digest of its source file, from the manifest (empty when it records none)."""
    files = ds.sources.get("files") or {}
    return dict(zip(files.get("image_id", []), files.get("digest", [])))


def check_same_pairs(first: Any, other: Any, split: str | None = "test", limit: int | None = None) -> None:
    """Refuse to put ``other`` beside ``first`` in the per-noise-level table unless it holds the same pairs.

    The same pairs: the same sampling recipe apart from ``photometric`` (frame, patch size, rho,
    pairs per image, seed), and, pair by pair over the evaluated rows (``split``, first ``limit``),
    the same image (id and source file content), crop corners and corner offsets.

    Raises:
        ValueError: naming both stores, what differs, and the fix.
    """
    a, b = redact(str(first.uri)), redact(str(other.uri))
    what = f"{split} pairs" if split else "pairs"

    def refuse(why: str) -> None:
        raise ValueError(
            f"stores {a} and {b} do not hold the same {what} ({why}), so a per-noise-level table would compare "
            f"different pairs: generate every level from the same images with the same settings, changing only "
            f"--photometric, or evaluate the stores one at a time"
        )

    recipe = [
        k
        for k in sorted(set(first.sampling) | set(other.sampling))
        if k != "photometric" and first.sampling.get(k) != other.sampling.get(k)
    ]
    if recipe:
        refuse("sampling " + ", ".join(f"{k} {first.sampling.get(k)} vs {other.sampling.get(k)}" for k in recipe))
    ga, gb = _pair_geometry(first, split, limit), _pair_geometry(other, split, limit)
    if len(ga["image_id"]) != len(gb["image_id"]):
        refuse(f"{len(ga['image_id'])} vs {len(gb['image_id'])} {what}")
    if not np.array_equal(ga["image_id"], gb["image_id"]):
        ids_a, ids_b = sorted(set(ga["image_id"].tolist())), sorted(set(gb["image_id"].tolist()))
        only = sorted(set(ids_a) ^ set(ids_b))
        refuse(f"from different images: ids {only[:5]} are in one only" if only else "the same images in another order")
    da, db = _image_digests(first), _image_digests(other)
    changed = [int(i) for i in np.unique(ga["image_id"]) if int(i) in da and int(i) in db and da[int(i)] != db[int(i)]]
    if changed:
        refuse(f"the source files of images {changed[:5]} differ in content")
    if not (np.array_equal(ga["corners"], gb["corners"]) and np.array_equal(ga["offsets"], gb["offsets"])):
        refuse("the same images, but other crops or corner offsets")


def noise_level(ds: Any) -> str:
    """The photometric level a store was generated with (``'none'`` when its manifest has none)."""
    return str(ds.sampling.get("photometric", "none"))


def refinement_report(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per ``<method>+refine`` whose method is in ``results`` too: MACE gained, time it cost."""
    lines = []
    for name, r in results.items():
        base = base_method(name)
        base = NETWORK if base == "network" else base
        if base is None or base not in results:
            continue
        b = results[base]
        lines.append(
            f"- {method_label(name)}: mean {b['mean']:.2f} -> {r['mean']:.2f} px ({r['mean'] - b['mean']:+.2f}), "
            f"median {b['median']:.2f} -> {r['median']:.2f} px, cost +{r['ms_per_pair'] - b['ms_per_pair']:.1f} ms/pair"
        )
    return lines


def format_levels(by_level: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One markdown table of several evaluations, a ``noise`` column first: ``{level: results}``."""
    blocks = [format_table(dict(results)).splitlines() for results in by_level.values()]
    rows = ["| noise " + blocks[0][0], "|---" + blocks[0][1]] if blocks else []
    for level, block in zip(by_level, blocks):
        rows += [f"| {level} " + line for line in block[2:]]
    return "\n".join(rows)
