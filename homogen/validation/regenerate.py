"""The ``regenerate`` check: remake random pairs from their source images with the library's
own recipe and the manifest's config; pixels and labels must be bit-identical.

The images are found through the manifest's per-image table (name and digest of every image), so
``k`` pairs cost at most ``k`` source reads: the source is neither listed nor re-hashed. Each
image read is first compared with its recorded digest, so a changed image is named as changed,
not reported as a generator that lost its determinism.
"""

from __future__ import annotations

import numpy as np

from homogen.config import SamplingConfig
from homogen.digests import bytes_digest
from homogen.generate import image_pairs
from homogen.images import BadImage, decode_gray, read_bytes
from homogen.redaction import redact
from homogen.schema import FIELDS, empty_arrays
from homogen.sources import ImageRecord
from homogen.store import Dataset
from homogen.validation.report import MAX_EXAMPLES, CheckResult
from homogen.versions import SourceTable


def check_regenerate(
    ds: Dataset, k: int, source_root: str | None, readable: list[tuple[int, int]], seed: int = 0
) -> CheckResult:
    """Remake ``k`` random pairs from their source images; pixels and labels must be bit-identical."""
    name = "regenerate"
    if k <= 0:
        return CheckResult(
            name, None, 0, 0, "not requested (pass regenerate=k (--regenerate K) to remake k pairs from the source)"
        )
    cfg = ds.manifest["config"]
    root = source_root or ds.sources["root"]
    sampling = SamplingConfig.model_validate(cfg["sampling"])
    table = SourceTable.from_manifest(ds.sources["files"])
    by_id = {i: (n, d, s) for i, n, d, s in zip(table.image_id, table.paths(root), table.digest, table.split)}
    pool = np.concatenate([np.arange(a, b) for a, b in readable]) if readable else np.empty(0, np.int64)
    if pool.size == 0:
        return CheckResult(name, None, 0, 0, "no readable pairs to regenerate")
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=min(k, pool.size), replace=False))
    ppi = sampling.pairs_per_image
    failed, examples, changed = 0, [], 0
    frames: dict[int, np.ndarray | str] = {}  # a decoded frame, or why there is none
    for i in chosen:
        i = int(i)
        stored = ds[i]
        iid = int(stored["image_id"])
        why = ""
        if iid not in by_id:
            why = f"image id {iid} is not in the manifest's per-image table"
        else:
            path, digest, split = by_id[iid]
            if iid not in frames:
                frames[iid] = _frame(path, digest, sampling)
            frame = frames[iid]
            if isinstance(frame, str):
                why = frame
                changed += "changed since" in frame or "missing file" in frame
            else:
                out = empty_arrays(ppi, sampling.patch_size)
                image_pairs(frame, ImageRecord(iid, path, split), sampling, out, 0)
                row = i % ppi  # every stored image holds ppi consecutive pairs
                differ = [f for f in FIELDS if not np.array_equal(out[f][row], stored[f])]
                if differ:
                    why = f"differs in {', '.join(differ)}"
        if why:
            failed += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"index": i, "image_id": iid, "why": why})
    detail = f"{len(chosen)} pairs remade from {len(frames)} images under {redact(root)}: " + (
        "bit-identical pixels and labels" if not failed else f"{failed} differ"
    )
    if changed:
        detail += (
            "; some source images are missing or not the ones the dataset was made from: pass source_root= "
            "(--source-root ROOT) pointing at the original images"
        )
    return CheckResult(name, failed == 0, len(chosen), failed, detail, examples)


def _frame(path: str, digest: str | None, sampling: SamplingConfig) -> np.ndarray | str:
    """The decoded frame of one source image, or why it cannot be remade from: unreadable, or not
    the bytes recorded (one read of the file in either case)."""
    try:
        data = read_bytes(path)
    except BadImage as exc:
        return f"source image {redact(path)} unusable: {exc.reason}"
    if digest is not None and bytes_digest(data) != digest:
        return f"source image {redact(path)} changed since generation (its digest is not the recorded one)"
    try:
        return decode_gray(data, sampling.image_width, sampling.image_height, min_side=sampling.patch_size)
    except BadImage as exc:
        return f"source image {redact(path)} unusable: {exc.reason}"
