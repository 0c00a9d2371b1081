"""What an evaluation says beyond the table: refinement gains, and the breakdown by noise level.

A store records the photometric level it was generated with (``sampling.photometric`` in its
manifest: none, easy, hard or tough); one store holds one level. The per-noise-level table puts
the results of several stores side by side (same methods, one block of rows per level), e.g.
stores generated from the same images and seed at ``easy``, ``hard`` and ``tough``.
"""

from __future__ import annotations

from typing import Any, Mapping

from homogen.model.evaluate import NETWORK, format_table, method_label
from homogen.model.methods import base_method

__all__ = ["format_levels", "noise_level", "refinement_report"]


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
