"""Checks over a whole dataset, from what one walk over its chunks gathered (:class:`homogen.validation.walk.Walk`):
counts against the manifest, the planned images, duplicates, uniform offsets, disjoint splits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from homogen.schema import LABEL_NAMES, SPLIT_CODES
from homogen.store import Dataset
from homogen.validation.report import MAX_EXAMPLES, CheckResult

if TYPE_CHECKING:
    from homogen.validation.walk import Walk

UNIFORMITY_Z = 5.0
MIN_PAIRS_UNIFORMITY = 20


def check_counts(ds: Dataset, walk: Walk) -> CheckResult:
    """Total and per-split counts against the manifest; the manifest's shards tile the arrays."""
    m = ds.manifest
    problems = []
    if len(ds) != m.get("num_pairs"):
        problems.append(f"store holds {len(ds)} pairs, manifest says {m.get('num_pairs')}")
    lengths = {f: int(a.shape[0]) for f, a in ds.arrays.items()}
    if len(set(lengths.values())) > 1:
        problems.append(f"arrays of different lengths {lengths}")
    at = 0
    for entry in m["shards"]:
        if entry.get("start") != at:
            problems.append(f"{entry.get('name')} starts at pair {entry.get('start')}, the previous shard ends at {at}")
        at = int(entry.get("start") or 0) + int(entry.get("pairs") or 0)
    if at != len(ds):
        problems.append(f"the manifest's shards end at pair {at}, the arrays hold {len(ds)}")
    if m.get("split_codes") != SPLIT_CODES:
        problems.append(f"the manifest's split_codes {m.get('split_codes')} are not this schema's {SPLIT_CODES}")
    try:
        planned = len(ds.sources["files"]["image_id"])
        if m.get("num_images") != planned - len(m.get("quarantine", [])):
            problems.append(
                f"num_images {m.get('num_images')} is not the {planned} planned images less "
                f"{len(m.get('quarantine', []))} quarantined"
            )
    except (KeyError, TypeError):
        problems.append("the manifest has no planned image list")
    if walk.tallies["readable"].failed == 0 and walk.split_counts != m.get("splits"):
        problems.append(f"splits {walk.split_counts}, manifest says {m.get('splits')}")
    detail = (
        "; ".join(problems)
        if problems
        else (f"{len(ds)} pairs from {len(m['shards'])} shards, splits {walk.split_counts} as in the manifest")
    )
    if walk.tallies["readable"].failed:
        detail += "; split counts not compared (damaged chunks)"
    return CheckResult("counts_match_manifest", not problems, len(ds), len(problems), detail, problems[:MAX_EXAMPLES])


def check_images(ds: Dataset, walk: Walk) -> CheckResult:
    """Stored image ids plus quarantined ones equal the planned image list; each stored image has
    ``pairs_per_image`` pairs."""
    name = "images_accounted"
    m = ds.manifest
    if walk.tallies["readable"].failed:
        return CheckResult(name, None, 0, 0, "not checked: damaged chunks (see readable)")
    try:
        planned = np.asarray(ds.sources["files"]["image_id"], np.int64)
        quarantined = np.asarray([q["image_id"] for q in m.get("quarantine", [])], np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        return CheckResult(
            name, False, 1, 1, f"the manifest has no planned image list ({exc!r}): regenerate the dataset"
        )
    ids, counts = np.unique(
        np.concatenate(walk.image_ids) if walk.image_ids else np.empty(0, np.int64), return_counts=True
    )
    ppi = int(ds.sampling["pairs_per_image"])
    problems = []
    for what, values in (
        ("stored but not planned", np.setdiff1d(ids, planned)),
        ("quarantined but not planned", np.setdiff1d(quarantined, planned)),
        ("both stored and quarantined", np.intersect1d(ids, quarantined)),
        ("planned but neither stored nor quarantined", np.setdiff1d(planned, np.union1d(ids, quarantined))),
        (f"stored with other than {ppi} pairs", ids[counts != ppi]),
    ):
        if len(values):
            problems.append(f"{len(values)} images {what} (ids {values[:10].tolist()})")
    detail = (
        "; ".join(problems)
        if problems
        else (
            f"{len(ids)} images stored ({ppi} pairs each) + {len(quarantined)} quarantined = the {len(planned)} planned"
        )
    )
    return CheckResult(name, not problems, len(planned), len(problems), detail, problems[:MAX_EXAMPLES])


def check_duplicates(walk: Walk) -> CheckResult:
    """No repeated (image id, corners, offsets) and no repeated pair pixels."""
    if not walk.indices:
        return CheckResult("no_duplicates", None, 0, 0, "no readable pairs")
    idx = np.concatenate(walk.indices)
    failed, examples, parts = 0, [], []
    for what, hashes in (
        ("same image id, corners and offsets", walk.label_hashes),
        ("identical pixels", walk.pair_hashes),
    ):
        h = np.concatenate(hashes)
        _, inverse, counts = np.unique(h, return_inverse=True, return_counts=True)
        dup = counts[inverse] > 1
        n_dup = int(dup.sum() - np.count_nonzero(counts > 1))  # rows beyond the first of each group
        if n_dup:
            failed += n_dup
            parts.append(f"{n_dup} repeated pairs ({what})")
            for g in np.flatnonzero(counts > 1)[:MAX_EXAMPLES]:
                examples.append({"kind": what, "indices": idx[inverse == g].tolist()[:10]})
    detail = "; ".join(parts) if parts else "no two pairs share (image id, corners, offsets) or pixels"
    return CheckResult("no_duplicates", failed == 0, len(idx), failed, detail, examples[:MAX_EXAMPLES])


def check_uniform(walk: Walk, rho: float) -> CheckResult:
    """Offsets spread uniformly over [-rho, rho]: means, standard deviations, correlations."""
    n = walk.n_off
    name = "offsets_uniform"
    if rho == 0:
        return CheckResult(name, None, n, 0, "not applicable: rho = 0 (offsets_in_range checks they are all 0)")
    if n < MIN_PAIRS_UNIFORMITY:
        return CheckResult(
            name, None, n, 0, f"not applicable: {n} pairs, a uniformity test needs at least {MIN_PAIRS_UNIFORMITY}"
        )
    mean = walk.sum_off / n
    cov = walk.cross_off / n - np.outer(mean, mean)
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    sigma = rho / np.sqrt(3.0)
    se_mean, se_std = sigma / np.sqrt(n), rho / np.sqrt(15.0 * n)
    pooled_mean = mean.mean()
    pooled_std = np.sqrt(np.clip(np.diag(walk.cross_off).sum() / (8 * n) - pooled_mean**2, 0, None))
    z = UNIFORMITY_Z
    problems = []
    labels = LABEL_NAMES
    for k in range(8):
        if abs(mean[k]) > z * se_mean:
            problems.append(f"{labels[k]} mean {mean[k]:.3g} (|.| > {z * se_mean:.3g})")
        if abs(std[k] - sigma) > z * se_std:
            problems.append(f"{labels[k]} std {std[k]:.3g} (expected {sigma:.3g} +- {z * se_std:.3g})")
    if abs(pooled_mean) > z * se_mean / np.sqrt(8):
        problems.append(f"pooled mean {pooled_mean:.3g}")
    if abs(pooled_std - sigma) > z * se_std / np.sqrt(8):
        problems.append(f"pooled std {pooled_std:.3g} (expected {sigma:.3g})")
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(std, std)
    limit = z / np.sqrt(n)
    for i in range(8):
        for j in range(i + 1, 8):
            if not abs(corr[i, j]) <= limit:
                problems.append(f"{labels[i]} and {labels[j]} correlated ({corr[i, j]:.3g}, limit {limit:.3g})")
    detail = (
        "; ".join(problems)
        if problems
        else (
            f"means |.| <= {np.abs(mean).max():.3g} (limit {z * se_mean:.3g}), stds {std.min():.3g}..{std.max():.3g} "
            f"(expected {sigma:.3g} +- {z * se_std:.3g}), |corr| <= {np.nanmax(np.abs(corr - np.eye(8))):.3g} "
            f"(limit {limit:.3g}), {z:g} standard errors"
        )
    )
    return CheckResult(name, not problems, n, len(problems), detail, problems[:MAX_EXAMPLES])


def check_splits(ds: Dataset, walk: Walk) -> CheckResult:
    """No source image in two splits (train, val, test), where "image" means its bytes: images
    with one digest in the manifest's table are one image. Every pair's ``image_id`` is in the
    manifest's per-image table and its ``split`` is the split the table gives that image (an edit
    of either array, checksums rewritten, fails here)."""
    name = "split_disjoint"
    if not walk.image_splits:
        return CheckResult(name, None, 0, 0, "no readable pairs")
    pairs = np.unique(np.concatenate(walk.image_splits), axis=0)  # (image_id, split code) rows
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    problems: list[str] = []
    examples: list[dict] = []
    both = ids[counts > 1]
    if len(both):
        problems.append(f"{len(both)} source images have pairs in more than one split")
        examples += [{"image_id": int(i), "why": "pairs in several splits"} for i in both[:MAX_EXAMPLES]]
    try:
        files = ds.sources["files"]
        table_split = {int(i): SPLIT_CODES.get(s, -1) for i, s in zip(files["image_id"], files["split"])}
        digest_of = {int(i): d for i, d in zip(files["image_id"], files["digest"])}
    except (KeyError, TypeError, ValueError) as exc:
        return CheckResult(
            name, False, len(ids), 1, f"the manifest has no per-image table ({exc!r}): regenerate the dataset"
        )
    unknown = [int(i) for i in ids if int(i) not in table_split]
    if unknown:
        problems.append(f"{len(unknown)} stored image ids are not in the manifest's table (ids {unknown[:10]})")
        examples += [{"image_id": i, "why": "not in the manifest"} for i in unknown[:MAX_EXAMPLES]]
    moved = [(int(i), int(c)) for i, c in pairs if int(i) in table_split and table_split[int(i)] != int(c)]
    if moved:
        names = {code: n for n, code in SPLIT_CODES.items()}
        shown = ", ".join(f"{i} stored as {names.get(c, c)}" for i, c in moved[:10])
        problems.append(f"{len(moved)} images stored in another split than the manifest's table gives ({shown})")
        examples += [{"image_id": i, "why": f"split code {c} in the store"} for i, c in moved[:MAX_EXAMPLES]]
    splits_of_digest: dict[str, set[int]] = {}
    ids_of_digest: dict[str, set[int]] = {}
    for i, c in pairs:
        d = digest_of.get(int(i))
        if d is not None:
            splits_of_digest.setdefault(d, set()).add(int(c))
            ids_of_digest.setdefault(d, set()).add(int(i))
    shared = [d for d, codes in splits_of_digest.items() if len(codes) > 1]
    bad = set(both.tolist()) | set(unknown) | {i for i, _ in moved} | {i for d in shared for i in ids_of_digest[d]}
    if shared and (len(shared) > len(both) or any(len(ids_of_digest[d]) > 1 for d in shared)):
        problems.append(
            f"{len(shared)} images' bytes (one digest, maybe under several ids) have pairs in several splits"
        )
        examples += [
            {
                "image_id": min(ids_of_digest[d]),
                "image_ids": sorted(ids_of_digest[d]),
                "why": "same bytes in several splits",
            }
            for d in shared[:MAX_EXAMPLES]
        ]
    detail = (
        "; ".join(problems)
        if problems
        else f"{len(ids)} source images, each in one split, the manifest's; no bytes in two splits"
    )
    return CheckResult(name, not problems, len(ids), len(bad), detail + " (counts are images)", examples[:MAX_EXAMPLES])
