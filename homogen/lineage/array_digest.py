"""One digest per stored array: what a store holds, named in its manifest (``array_digest``).

The digest of a field is xxh3-128 of its name, dtype and row shape, then of the xxh3-64 of each of
its rows in order (8 bytes little-endian; a row is its decoded values in C order, not the compressed
chunks), so it depends on the values alone: not on the format (Zarr or HDF5), the codecs, the chunk
or the shard size. Two stores of one dataset version hold the same values iff their digests are
equal, whichever machine made them.

Why rows first: a shard's row hashes are made where its rows are made, in memory (staged with the
shard, ``row_hashes`` in its info), and the commit concatenates them in order, so it never decodes
the arrays it has just written (it did: ~0.23 ms an image, a third of the commit). Stores committed
before hash their rows' bytes as one stream (:data:`LEGACY`); they are checked that way.

- :func:`shard_row_hashes` (generation) and :func:`digest_from_shards` (commit); :func:`arrays_digest`
  reads the arrays back instead, where a staged shard records no row hashes (staged by an older
  homogen) (:func:`homogen.store.manifest.complete`);
- :func:`check_array_digest`: ``validate``'s ``arrays_match_digest``, recomputed from the store's
  chunks (the rows validation's walk reads anyway). A flipped value that still passes its chunk's
  checksum (the chunk rewritten whole), a chunk copied from another store, or a deleted chunk read
  as zeros all fail it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xxhash

from homogen.schema import BY_NAME, FIELDS

__all__ = [
    "HASH_NAME",
    "LEGACY",
    "RowDigest",
    "arrays_digest",
    "check_array_digest",
    "digest_from_shards",
    "shard_row_hashes",
    "store_digest",
]

HASH_NAME = "xxh3_128/rows"
"""The array digests: xxh3-128 over each row's xxh3-64 (the family of the source images' digests,
chosen by bench/hashing.py)."""

LEGACY = "xxh3_128"
"""The array digests of stores committed before row hashes: xxh3-128 over the rows' bytes."""

SCHEMES = (HASH_NAME, LEGACY)

MANIFEST_KEY = "array_digest"
"""``manifest["array_digest"]`` = ``{"hash": ..., "pairs": N, "arrays": {field: hex digest}}``."""


def row_hashes(field: str, rows: Any) -> np.ndarray:
    """xxh3-64 of each row of ``field`` (its values as the schema's dtype, C order): (n,) uint64."""
    a = np.ascontiguousarray(rows, dtype=BY_NAME[field].dtype)
    if not len(a):
        return np.empty(0, np.uint64)
    flat = a.reshape(len(a), -1).view(np.uint8)
    return np.fromiter((xxhash.xxh3_64_intdigest(r) for r in flat), np.uint64, len(a))


def shard_row_hashes(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """A shard's row hashes, per field as hex of little-endian uint64 (staged with the shard)."""
    return {f: row_hashes(f, arrays[f]).astype("<u8").tobytes().hex() for f in FIELDS}


class RowDigest:
    """The digests of the schema's arrays, fed rows (or their row hashes) in order, any number at a time."""

    def __init__(self, patch_size: int, scheme: str = HASH_NAME):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown array digest {scheme!r}: this homogen makes {HASH_NAME} (and checks {LEGACY})")
        self.scheme = scheme
        self._rows: dict[str, int] = {f: 0 for f in FIELDS}
        self._h = {}
        for name in FIELDS:
            field = BY_NAME[name]
            h = xxhash.xxh3_128()
            h.update(f"{name}\t{field.dtype.str}\t{field.row_shape(patch_size)}\n".encode())
            self._h[name] = h

    def update(self, field: str, rows: np.ndarray) -> None:
        """The next ``rows`` of ``field`` (any array-like of the field's dtype)."""
        if self.scheme == HASH_NAME:
            self.update_hashes(field, row_hashes(field, rows))
            return
        a = np.ascontiguousarray(rows, dtype=BY_NAME[field].dtype)
        self._h[field].update(memoryview(a).cast("B"))
        self._rows[field] += len(a)

    def update_hashes(self, field: str, hashes: np.ndarray) -> None:
        """The next rows of ``field`` by their :func:`row_hashes` (:data:`HASH_NAME` only)."""
        h = np.ascontiguousarray(hashes, dtype="<u8")
        self._h[field].update(h.tobytes())
        self._rows[field] += len(h)

    def result(self) -> dict[str, Any]:
        """``{"hash", "pairs", "arrays": {field: 32 hex}}``; ValueError if the fields got different row counts."""
        counts = set(self._rows.values())
        if len(counts) != 1:
            raise ValueError(f"the arrays have different row counts: {self._rows}")
        return {"hash": self.scheme, "pairs": counts.pop(), "arrays": {f: h.hexdigest() for f, h in self._h.items()}}


def scheme_of(manifest: Mapping[str, Any]) -> str:
    """The digest scheme a store records (:data:`HASH_NAME` where it records none or an unknown one)."""
    recorded = manifest.get(MANIFEST_KEY)
    scheme = recorded.get("hash") if isinstance(recorded, dict) else None
    return scheme if scheme in SCHEMES else HASH_NAME


def digest_from_shards(infos: Sequence[Mapping[str, Any]], patch_size: int) -> dict[str, Any] | None:
    """The digest of the arrays the commit assembles from ``infos`` (the staged shards, in plan order),
    from their row hashes; None when a shard records none (staged by an older homogen)."""
    if any(not isinstance(i.get("row_hashes"), dict) for i in infos):
        return None
    digest = RowDigest(patch_size)
    for name in FIELDS:
        for info in infos:
            digest.update_hashes(name, np.frombuffer(bytes.fromhex(info["row_hashes"][name]), "<u8"))
    return digest.result()


def arrays_digest(arrays: Mapping[str, Any], patch_size: int, scheme: str = HASH_NAME) -> dict[str, Any]:
    """The digest of the schema's arrays (``{field: zarr.Array | h5py.Dataset | ndarray}``), read in
    blocks of their chunk length (one chunk of one array in memory at a time)."""
    digest = RowDigest(patch_size, scheme)
    for name in FIELDS:
        arr = arrays[name]
        n = int(arr.shape[0])
        chunks = getattr(arr, "chunks", None)  # zarr and h5py: a tuple; numpy: none (read whole)
        step = max(1, int(chunks[0]) if chunks else n)
        for a in range(0, n, step):
            digest.update(name, arr[a : min(a + step, n)])
    return digest.result()


def store_digest(ds: Any) -> dict[str, Any]:
    """The digest of an open store's arrays, read chunk by chunk (a damaged chunk raises, naming it)."""
    digest = RowDigest(ds.patch_size, scheme_of(ds.manifest))
    for name in FIELDS:
        for a, b in ds.chunks():
            digest.update(name, ds.read_field(name, a, b))
    return digest.result()


def check_array_digest(ds: Any, computed: dict | None = None, unreadable: list[str] | None = None):
    """``arrays_match_digest``: every array's digest recomputed from the store equals the manifest's
    (a :class:`homogen.validation.report.CheckResult`).

    Args:
        computed: the store's digest as a pass that already read every chunk made it (validation's
            walk feeds a :class:`RowDigest`); None: list the chunks and read them here.
        unreadable: that pass's damaged chunks (``"offsets chunk 3 (missing from storage)"``): the
            digest is not computed.
    """
    from homogen.validation.report import CheckResult  # the store imports this module; validation imports the store

    name = "arrays_match_digest"
    recorded = ds.manifest.get(MANIFEST_KEY)
    if recorded is None:
        if "code" in ds.manifest:  # written by a homogen that records both: the digest was removed
            return CheckResult(
                name, False, 1, 1, f"the manifest lacks its {MANIFEST_KEY}: it was edited; regenerate the store"
            )
        return CheckResult(name, None, 0, 0, "the manifest records no array digest (made by an older homogen)")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("arrays"), dict):
        return CheckResult(
            name, False, 1, 1, f"the manifest's {MANIFEST_KEY} is malformed: it was edited; regenerate the store"
        )
    if recorded.get("hash") not in SCHEMES:
        return CheckResult(
            name, None, 0, 0, f"digests were made with {recorded.get('hash')}, this homogen makes {HASH_NAME}"
        )
    bad = list(unreadable or [])
    if computed is None and not bad and ds.manifest.get("format") == "zarr":
        from homogen.store import chunk_problems  # never read a chunk that is not a regular file (a link to /dev/zero)

        bad = [f"{f} chunk {k} ({why})" for f, ks in chunk_problems(ds.uri, ds.arrays).items() for k, why in ks.items()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        detail = (
            f"not computed: {len(bad)} chunk(s) cannot be read as stored ({', '.join(bad[:3])}{more}; see readable)"
        )
        return CheckResult(name, False, len(FIELDS), len(FIELDS), detail)
    try:
        now = computed if computed is not None else store_digest(ds)
    except Exception as exc:  # noqa: BLE001 - DamagedChunk names the chunk; codecs raise many types
        return CheckResult(name, False, len(FIELDS), len(FIELDS), f"the arrays cannot be read to the end: {exc}")
    differ = [f for f in FIELDS if recorded["arrays"].get(f) != now["arrays"][f]]
    if recorded.get("pairs") != now["pairs"]:
        differ.append(f"pairs ({recorded.get('pairs')} recorded, {now['pairs']} stored)")
    if differ:
        examples = [
            {"array": f, "recorded": recorded["arrays"].get(f), "stored": now["arrays"].get(f)}
            for f in differ
            if f in now["arrays"]
        ]
        detail = (
            f"the stored values of {', '.join(differ)} are not those written at commit: the store was modified after "
            f"generation (a chunk rewritten, replaced or deleted); regenerate the dataset or restore it from a copy"
        )
        return CheckResult(name, False, len(FIELDS), len(differ), detail, examples)
    return CheckResult(
        name,
        True,
        len(FIELDS),
        0,
        f"{len(FIELDS)} arrays of {now['pairs']} pairs hash ({recorded['hash']}) as recorded at commit",
    )
