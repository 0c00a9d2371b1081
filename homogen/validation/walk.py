"""The walk: one pass over a store's chunks running every per-pair check, gathering what the
dataset checks need, and :func:`validate_dataset`, the entry point (checks documented in
:mod:`homogen.validation`). Memory: one chunk of pixels plus ~20 bytes per pair."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from homogen.lineage.array_digest import RowDigest, check_array_digest, scheme_of
from homogen.redaction import redact
from homogen.schema import FIELDS, SPLIT_CODES, empty_arrays
from homogen.store import Dataset, chunk_problems, open_dataset
from homogen.validation.dataset_checks import (
    MIN_PAIRS_UNIFORMITY,
    UNIFORMITY_Z,
    check_counts,
    check_duplicates,
    check_images,
    check_splits,
    check_uniform,
)
from homogen.validation.pair_checks import PAIR_CHECKS, Context
from homogen.validation.pixel_check import pixel_tolerance, warp_a_by_h
from homogen.validation.regenerate import check_regenerate
from homogen.validation.report import MAX_EXAMPLES, CheckResult, ValidationReport
from homogen.versions import check_sources, check_version

__all__ = [
    "MAX_EXAMPLES",
    "MIN_PAIRS_UNIFORMITY",
    "PER_PAIR_CHECKS",
    "UNIFORMITY_Z",
    "CheckResult",
    "ValidationReport",
    "pixel_tolerance",
    "validate_dataset",
    "warp_a_by_h",
]

PER_PAIR_CHECKS = ("readable", "schema", *(c.name for c in PAIR_CHECKS))


# ------------------------------------------------------------------------------ the walk


class _Tally:
    """Counts of one per-pair check, the first few failures, and the worst value seen."""

    def __init__(self, name: str):
        self.name = name
        self.checked = 0
        self.failed = 0
        self.examples: list = []
        self.worst: float | None = None
        self.notes: dict[str, int] = {}

    def add(
        self,
        ok: np.ndarray,
        where: "_Where",
        values: np.ndarray | None = None,
        why: list[str] | None = None,
        counted: np.ndarray | None = None,
    ) -> None:
        """Record ``ok`` (bool per pair of the block at ``where``); rows outside ``counted`` are not checked.

        ``values`` (the measured quantity) and ``why`` (a sentence) describe failures.
        """
        ok = np.asarray(ok, bool)
        counted = np.ones(ok.shape, bool) if counted is None else np.asarray(counted, bool)
        self.checked += int(counted.sum())
        bad = np.flatnonzero(counted & ~ok)
        self.failed += int(bad.size)
        if values is not None:
            v = np.asarray(values, np.float64)[counted]
            v = v[np.isfinite(v)]
            if v.size:
                self.worst = max(-np.inf if self.worst is None else self.worst, float(v.max()))
        for j in bad[: max(0, MAX_EXAMPLES - len(self.examples))]:
            ex = where.describe(int(j))
            if values is not None:
                ex["value"] = float(np.asarray(values)[j])
            if why is not None:
                ex["why"] = why[j]
            self.examples.append(ex)

    def note(self, what: str, count: int = 1) -> None:
        self.notes[what] = self.notes.get(what, 0) + count

    def result(self, detail: str) -> CheckResult:
        extra = "; ".join(f"{n} {what}" for what, n in self.notes.items())
        detail = f"{detail}; {extra}" if extra else detail
        if self.checked == 0:
            return CheckResult(self.name, None, 0, 0, f"no pair could be checked: {detail}", self.examples)
        return CheckResult(self.name, self.failed == 0, self.checked, self.failed, detail, self.examples)


@dataclass
class _Where:
    """A block of pairs: its global start index and its storage chunk number."""

    start: int
    chunk: int

    def describe(self, j: int) -> dict:
        return {"index": self.start + j, "chunk": self.chunk}


class Walk:
    """State of one pass over the store: per-pair tallies and per-dataset accumulators."""

    def __init__(self, ds: Dataset):
        self.ds = ds
        self.ctx = Context(ds.sampling)
        self.schema = empty_arrays(0, self.ctx.p)
        self.tallies = {name: _Tally(name) for name in PER_PAIR_CHECKS}
        self.pair_hashes: list[np.ndarray] = []
        self.label_hashes: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        self.image_splits: list[np.ndarray] = []
        self.image_ids: list[np.ndarray] = []
        self.split_counts = {s: 0 for s in SPLIT_CODES}
        self.n_off = 0
        self.sum_off = np.zeros(8)
        self.cross_off = np.zeros((8, 8))
        self.readable: list[tuple[int, int]] = []
        self.damaged: list[dict] = []  # every damaged chunk: array, chunk, pairs, file, error
        # the arrays' digest from the rows read here, as the store records it (arrays_match_digest)
        self.digest = RowDigest(self.ctx.p, scheme_of(ds.manifest))
        self.unreadable = (
            {(f, k): why for f, ks in chunk_problems(ds.uri, ds.arrays).items() for k, why in ks.items()}
            if ds.manifest.get("format") == "zarr"
            else {}
        )

    def block(self, where: _Where, stop: int) -> None:
        """Read pairs ``where.start:stop`` and run every per-pair check on them."""
        data = self._read(where, stop)
        if data is None:
            return
        if not self._check_schema(data, where):
            return
        self.readable.append((where.start, stop))
        for check in PAIR_CHECKS:
            out = check.run(data, self.ctx)
            tally = self.tallies[check.name]
            if out.note:
                tally.note(*out.note)
            tally.add(out.ok, where, values=out.values, why=out.why, counted=out.counted)
        self._accumulate(data, where)

    def _read(self, where: _Where, stop: int) -> dict | None:
        """Every array's rows of one chunk; each array whose chunk is missing or fails to decode
        (checksum, codec) is recorded in :attr:`damaged` and the block is skipped."""
        data, bad = {}, {}
        for f in FIELDS:
            if (f, where.chunk) in self.unreadable:  # missing (zarr would read the fill value), or a link: never read
                bad[f] = f"chunk file {self.unreadable[(f, where.chunk)]}"
                continue
            try:
                data[f] = np.asarray(self.ds.arrays[f][where.start : stop])
            except Exception as exc:  # noqa: BLE001 - codecs and HDF5 raise many types on damage
                bad[f] = f"{type(exc).__name__}: {str(exc)[:160]}"
        n = stop - where.start
        if bad:
            self._unreadable(where, stop, bad)
            return None
        self.tallies["readable"].add(np.ones(n, bool), where)
        for f in FIELDS:  # blocks come in order: the digest of the whole arrays, without reading them again
            self.digest.update(f, data[f])
        return data

    def _unreadable(self, where: _Where, stop: int, bad: dict[str, str]) -> None:
        tally, n = self.tallies["readable"], stop - where.start
        tally.checked += n
        tally.failed += n
        for f, why in sorted(bad.items()):
            self.damaged.append(
                {
                    "array": f,
                    "chunk": where.chunk,
                    "pairs": f"[{where.start}, {stop})",
                    "file": self.ds.chunk_file(f, where.chunk),
                    "error": why,
                }
            )
        tally.examples = self.damaged[:MAX_EXAMPLES]

    def array_digest(self) -> dict | None:
        """The digest of the rows this walk read (:class:`RowDigest`), None unless every block was read."""
        if self.damaged:
            return None
        try:
            return self.digest.result()
        except ValueError:  # the arrays' lengths differ: let the check read the store itself and say so
            return None

    def damaged_chunks(self) -> list[str]:
        """Each damaged chunk as ``"offsets chunk 3 (missing from storage)"``."""
        return [f"{d['array']} chunk {d['chunk']} ({d['error'].removeprefix('chunk file ')})" for d in self.damaged]

    def _check_schema(self, data: dict, where: _Where) -> bool:
        n = len(data["image_id"])
        wrong = [
            f"{f}: {data[f].dtype}{tuple(data[f].shape)} != {self.schema[f].dtype}{(n,) + self.schema[f].shape[1:]}"
            for f in FIELDS
            if data[f].dtype != self.schema[f].dtype or data[f].shape != (n,) + self.schema[f].shape[1:]
        ]
        tally = self.tallies["schema"]
        tally.add(np.full(n, not wrong), where, why=["; ".join(wrong)] * n)
        return not wrong

    def _accumulate(self, d: dict, where: _Where) -> None:
        n = len(d["image_id"])
        self.indices.append(np.arange(where.start, where.start + n, dtype=np.int64))
        self.pair_hashes.append(np.array([_hash64(x.tobytes()) for x in d["pairs"]], np.uint64))
        self.label_hashes.append(
            np.array(
                [
                    _hash64(i.tobytes() + c.tobytes() + o.tobytes())
                    for i, c, o in zip(d["image_id"], d["corners"], d["offsets"])
                ],
                np.uint64,
            )
        )
        self.image_splits.append(np.unique(np.stack([d["image_id"], d["split"].astype(np.int64)], 1), axis=0))
        self.image_ids.append(np.asarray(d["image_id"], np.int64))
        for name, code in SPLIT_CODES.items():
            self.split_counts[name] += int(np.count_nonzero(d["split"] == code))
        off = np.asarray(d["offsets"], np.float64)
        off = off[np.isfinite(off).all(1)]
        self.n_off += len(off)
        self.sum_off += off.sum(0)
        self.cross_off += off.T @ off

    # -- per-pair results -------------------------------------------------------------------
    def per_pair_results(self) -> list[CheckResult]:
        t = self.tallies
        detail = {
            "readable": "every chunk of every field read and decompressed",
            "schema": "dtypes and shapes per the store schema",
            **{c.name: c.detail(self.ctx) for c in PAIR_CHECKS},
        }
        worst = {c.name for c in PAIR_CHECKS if c.worst}
        out = []
        for name in PER_PAIR_CHECKS:
            d = detail[name]
            if t[name].worst is not None and name in worst:
                d += f"; worst {t[name].worst:.3g}"
            if name == "readable" and t[name].failed:
                d = f"{t[name].failed} pairs in {len(self.damaged)} damaged chunks: " + ", ".join(
                    f"{e['array']} chunk {e['chunk']} (pairs {e['pairs']}, {e['file']}: {e['error']})"
                    for e in self.damaged
                )
            out.append(t[name].result(d))
        return out


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# ------------------------------------------------------------------------------ entry point


def validate_dataset(
    path_or_ds: str | Dataset,
    regenerate: int = 0,
    source_root: str | None = None,
    progress: bool = True,
    seed: int = 0,
    sources: bool = False,
) -> ValidationReport:
    """Run every check on a finished store (path, URL or open :class:`Dataset`).

    Args:
        regenerate: remake this many random pairs from the source images (0: skip, reported n/a).
        source_root: the images' root when the manifest's (credentials stripped) is not usable.
        seed: which pairs ``regenerate`` picks.
        sources: also re-hash every source image (under ``source_root`` or the manifest's root)
            and name those whose bytes changed (homogen.versions.check_sources).
    """
    ds = path_or_ds if isinstance(path_or_ds, Dataset) else open_dataset(path_or_ds, check_chunks=False)
    source = ds.sources  # the source table, read (and checked) once, before the walk: a damaged one is one line
    walk = Walk(ds)
    for k, (a, b) in enumerate(tqdm(ds.chunks(), desc=f"validate {ds.version}", unit="chunk", disable=not progress)):
        walk.block(_Where(a, k), b)
    checks = walk.per_pair_results()
    checks += [
        check_counts(ds, walk),
        check_images(ds, walk),
        check_duplicates(walk),
        check_uniform(walk, ds.rho),
        check_splits(ds, walk),
        check_regenerate(ds, regenerate, source_root, walk.readable, seed),
        check_version(ds.manifest, source),
        check_sources(source, sources, source_root),
        check_array_digest(ds, walk.array_digest(), walk.damaged_chunks()),
    ]
    passed = all(c.passed is not False for c in checks)
    return ValidationReport(ds.version, redact(ds.uri), len(ds), checks, passed)
