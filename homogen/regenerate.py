"""The ``regenerate`` check: remake random pairs from their source images with the library's
own recipe and the manifest's config; pixels and labels must be bit-identical."""

from __future__ import annotations

import numpy as np

from homogen.check_report import MAX_EXAMPLES, CheckResult
from homogen.config import SamplingConfig, SourceConfig
from homogen.generate import image_pairs
from homogen.images import BadImage, load_gray
from homogen.schema import FIELDS, empty_arrays
from homogen.sources import SourceError, list_images
from homogen.stores import Dataset
from homogen.versions import source_table


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
    root = source_root or cfg["source"]["root"]
    sampling = SamplingConfig.model_validate(cfg["sampling"])
    source = SourceConfig.model_validate({**cfg["source"], "root": root})
    try:
        records = list_images(source)
        digest = source_table(records, root).list_digest
    except (SourceError, OSError, ValueError) as exc:
        return CheckResult(
            name,
            False,
            0,
            0,
            (
                f"cannot list the source {root!r} ({exc}): pass source_root= (--source-root ROOT) pointing at the images "
                f"the dataset was made from (the manifest stores the root without credentials)"
            ),
        )
    if digest != ds.manifest["source"]["digest"]:
        return CheckResult(
            name,
            False,
            0,
            0,
            (
                f"the images listed under {root!r} differ from those the dataset was made from "
                f"(digest {digest[:12]} != {ds.manifest['source']['digest'][:12]}): pass source_root= (--source-root ROOT) of the original images"
            ),
        )
    by_id = {r.image_id: r for r in records}
    pool = np.concatenate([np.arange(a, b) for a, b in readable]) if readable else np.empty(0, np.int64)
    if pool.size == 0:
        return CheckResult(name, None, 0, 0, "no readable pairs to regenerate")
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=min(k, pool.size), replace=False))
    ppi = sampling.pairs_per_image
    failed, examples = 0, []
    frames: dict[int, np.ndarray] = {}
    for i in chosen:
        i = int(i)
        stored = ds[i]
        iid = int(stored["image_id"])
        why = ""
        if iid not in by_id:
            why = f"image id {iid} not in the source listing"
        else:
            try:
                if iid not in frames:
                    frames[iid] = load_gray(
                        by_id[iid].path, sampling.image_width, sampling.image_height, min_side=sampling.patch_size
                    )
                out = empty_arrays(ppi, sampling.patch_size)
                image_pairs(frames[iid], by_id[iid], sampling, out, 0)
                row = i % ppi  # every stored image holds ppi consecutive pairs
                differ = [f for f in FIELDS if not np.array_equal(out[f][row], stored[f])]
                if differ:
                    why = f"differs in {', '.join(differ)}"
            except BadImage as exc:
                why = f"source image unusable: {exc.reason}"
        if why:
            failed += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"index": i, "image_id": iid, "why": why})
    detail = f"{len(chosen)} pairs remade from {root}: " + (
        "bit-identical pixels and labels" if not failed else f"{failed} differ"
    )
    return CheckResult(name, failed == 0, len(chosen), failed, detail, examples)
