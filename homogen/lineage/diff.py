"""What changed between two stores: ``homogen diff A B``, from their manifests alone.

Compared (each side read through :func:`homogen.stores.open_dataset`, never by parsing files):

- ``recipe``: the sampling fields, the split parameters and the generator and schema versions
  (everything the dataset version covers besides the images);
- ``images``: by image id, from the per-image source table (:class:`homogen.versions.SourceTable`):
  ``added`` (only in B), ``removed`` (only in A), ``changed`` (other bytes: another digest) and
  ``moved`` (another split), each naming the image id and its file;
- ``quarantined``: images one side quarantined and the other did not, also an image only one
  side's source holds and that side quarantined (``absent_from`` names the other side): it gave no
  pairs, so it is never listed as ``added`` or ``removed``;
- ``pairs``: pair counts, total and per split;
- ``arrays``: the stored arrays whose digests differ (:mod:`homogen.lineage.array_digest`), when
  both sides record one; ``code``: library versions that differ (:mod:`homogen.lineage.libraries`);
- ``selection``: the source settings that chose the images (root, kind, categories, max_images):
  the cause of images added or removed, reported, never a difference of the datasets by itself
  (the same images chosen another way make the same version);
- ``storage``: format, chunk and shard size: reported, never a difference of the datasets.

The two are identical (exit 0) when nothing but storage differs: same version and, where both
record array digests, the same stored values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from homogen.redaction import redact
from homogen.schema import SPLIT_CODES
from homogen.versions import SPLIT_PARAMETERS, SourceTable

__all__ = ["StoreDiff", "diff_manifests", "diff_stores"]

STORAGE_KEYS = ("format", "chunk_size", "shard_size")

SELECTION_KEYS = ("root", "kind", "categories", "max_images")
"""The source settings that choose which images are read (``config.source``; the split ones are recipe)."""

MAX_LISTED = 20
"""Images listed per kind of change in the text form (``--json`` lists all of them)."""


@dataclass
class StoreDiff:
    """The differences between store A and store B (module docstring); empty lists mean none."""

    a: dict[str, Any]
    b: dict[str, Any]
    recipe: dict[str, list] = field(default_factory=dict)
    added: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)
    moved: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)
    pairs: dict[str, list] = field(default_factory=dict)
    arrays: dict[str, list] = field(default_factory=dict)
    code: dict[str, list] = field(default_factory=dict)
    selection: dict[str, list] = field(default_factory=dict)
    storage: dict[str, list] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """Same dataset version, and (where both record them) the same stored values."""
        return self.a["version"] == self.b["version"] and not any(
            (self.recipe, self.added, self.removed, self.changed, self.moved, self.quarantined, self.pairs, self.arrays)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"identical": self.identical, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """The differences, one per line, for a person."""
        a, b = self.a, self.b
        lines = [f"A {a['version']}  {a['uri']}", f"B {b['version']}  {b['uri']}"]
        if self.identical:
            lines.append(
                "identical: same dataset version"
                + (
                    ", same array digests recorded at commit (from the manifests: `homogen validate` checks a "
                    "store's chunks against them)"
                    if a.get("array_digest") and b.get("array_digest")
                    else ""
                )
            )
        for key, (va, vb) in self.recipe.items():
            lines.append(f"recipe    {key}: {va} -> {vb}")
        for key, (va, vb) in self.selection.items():
            lines.append(f"selection {key}: {va} -> {vb}")
        for title, rows, show in (
            ("added  ", self.added, lambda r: f"{r['split']}"),
            ("removed", self.removed, lambda r: f"{r['split']}"),
            ("changed", self.changed, lambda r: f"digest {r['digest_a']} -> {r['digest_b']}"),
            ("moved  ", self.moved, lambda r: f"{r['split_a']} -> {r['split_b']}"),
            ("quarantined", self.quarantined, _quarantined),
        ):
            for r in rows[:MAX_LISTED]:
                lines.append(f"{title.strip():<9} image {r['image_id']} {r['name']}: {show(r)}")
            if len(rows) > MAX_LISTED:
                lines.append(f"{title.strip():<9} ... and {len(rows) - MAX_LISTED} more (--json lists all)")
        for key, (va, vb) in self.pairs.items():
            lines.append(f"pairs     {key}: {va} -> {vb}")
        for key, (va, vb) in self.arrays.items():
            lines.append(f"arrays    {key}: {va} -> {vb}")
        for key, (va, vb) in self.code.items():
            lines.append(f"code      {key}: {va} -> {vb}")
        for key, (va, vb) in self.storage.items():
            lines.append(f"storage   {key}: {va} -> {vb} (not a difference of the data)")
        if not self.identical:
            counts = [
                f"{len(x)} {n}"
                for n, x in (
                    ("recipe fields", self.recipe),
                    ("images added", self.added),
                    ("images removed", self.removed),
                    ("images changed", self.changed),
                    ("images moved split", self.moved),
                    ("images quarantined on one side", self.quarantined),
                )
                if x
            ]
            why = "the stored arrays differ" if self.arrays else "the dataset versions differ"
            lines.append("different: " + (", ".join(counts) if counts else why))
        return "\n".join(lines)


def _quarantined(r: dict) -> str:
    """``in B: <reason>``; ``in A (B's source has no such image): <reason>``."""
    absent = f" ({r['absent_from']}'s source has no such image)" if r.get("absent_from") else ""
    return f"in {r['in']}{absent}: {r['reason']}"


def _flat(prefix: str, d: dict) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in d.items()}


def _recipe(m: dict) -> dict[str, Any]:
    source = m["config"]["source"]
    return {
        **_flat("sampling", m["config"]["sampling"]),
        **{f"source.{k}": source.get(k) for k in SPLIT_PARAMETERS},
        "generator_version": m.get("generator_version"),
        "schema_version": m.get("schema_version"),
    }


def _selection(m: dict) -> dict[str, Any]:
    source = m["config"]["source"]
    return {f"source.{k}": source.get(k) for k in SELECTION_KEYS}


def _pairs(m: dict) -> dict[str, Any]:
    return {"total": m.get("num_pairs"), **{s: m.get("splits", {}).get(s, 0) for s in SPLIT_CODES}}


def _changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list]:
    keys = list(a) + [k for k in b if k not in a]
    return {k: [a.get(k), b.get(k)] for k in keys if a.get(k) != b.get(k)}


def _side(uri: str, m: dict) -> dict[str, Any]:
    return {"version": m["dataset_version"], "uri": redact(uri), "array_digest": bool(m.get("array_digest"))}


def _table(source: dict, uri: str) -> dict[int, dict]:
    try:
        t = SourceTable.from_manifest(source["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{redact(uri)} records no per-image table ({exc}): it was made by an older homogen; regenerate it to diff"
        ) from exc
    return {i: {"name": n, "split": s, "digest": d} for i, n, s, d in zip(t.image_id, t.name, t.split, t.digest)}


def diff_manifests(
    a: dict, b: dict, uri_a: str = "A", uri_b: str = "B", sources_a: dict | None = None, sources_b: dict | None = None
) -> StoreDiff:
    """The differences between the manifests of two complete stores (module docstring).

    ``sources_a``/``sources_b``: each store's source section with its table (``Dataset.sources``);
    default the manifest's own ``source`` (a store written before the table moved out).

    Raises:
        ValueError: a manifest has no per-image table (names the store).
    """
    sa = a["source"] if sources_a is None else sources_a
    sb = b["source"] if sources_b is None else sources_b
    ta, tb = _table(sa, uri_a), _table(sb, uri_b)
    out = StoreDiff(_side(uri_a, a), _side(uri_b, b))
    out.recipe = _changes(_recipe(a), _recipe(b))
    hashes = sa["files"]["hash"], sb["files"]["hash"]
    if hashes[0] != hashes[1]:  # digests of two hash functions: equal bytes would look changed
        out.recipe["source.hash"] = list(hashes)
    qa = {q["image_id"]: q for q in a.get("quarantine", [])}
    qb = {q["image_id"]: q for q in b.get("quarantine", [])}
    for i in sorted(set(tb) - set(ta) - set(qb)):  # an image B quarantined added no data: listed as quarantined
        out.added.append({"image_id": i, **tb[i]})
    for i in sorted(set(ta) - set(tb) - set(qa)):
        out.removed.append({"image_id": i, **ta[i]})
    for i in sorted(set(ta) & set(tb)):
        ra, rb = ta[i], tb[i]
        name = rb["name"] if ra["name"] == rb["name"] else f"{ra['name']} -> {rb['name']}"
        if ra["digest"] != rb["digest"] and hashes[0] == hashes[1]:
            out.changed.append({"image_id": i, "name": name, "digest_a": ra["digest"], "digest_b": rb["digest"]})
        if ra["split"] != rb["split"]:
            out.moved.append({"image_id": i, "name": name, "split_a": ra["split"], "split_b": rb["split"]})
    for i in sorted(set(qa) ^ set(qb)):  # also an image one side quarantined and the other's source lacks
        q, where, table = (qa[i], "A", ta) if i in qa else (qb[i], "B", tb)
        if i in table:
            name = tb[i]["name"] if i in tb else ta[i]["name"]
            absent = None if i in ta and i in tb else "B" if where == "A" else "A"
            out.quarantined.append(
                {"image_id": i, "name": name, "in": where, "reason": q.get("reason"), "absent_from": absent}
            )
    out.pairs = _changes(_pairs(a), _pairs(b))
    da, db = a.get("array_digest"), b.get("array_digest")
    if isinstance(da, dict) and isinstance(db, dict) and da.get("hash") == db.get("hash"):
        out.arrays = _changes(da.get("arrays", {}), db.get("arrays", {}))
    out.code = _changes(a.get("code") or {}, b.get("code") or {})
    out.selection = _changes(_selection(a), _selection(b))
    out.storage = _changes({k: a.get(k) for k in STORAGE_KEYS}, {k: b.get(k) for k in STORAGE_KEYS})
    return out


def diff_stores(uri_a: str, uri_b: str) -> StoreDiff:
    """Open both stores (paths or URLs; :func:`homogen.stores.open_dataset`) and diff their manifests.

    Raises:
        StoreError: a store cannot be opened (names it and the fix).
        ValueError: a store has no per-image table.
    """
    from homogen.stores import open_dataset

    with open_dataset(uri_a, check_chunks=False) as a, open_dataset(uri_b, check_chunks=False) as b:
        return diff_manifests(a.manifest, b.manifest, a.uri, b.uri, a.sources, b.sources)
