"""Turning images into labelled pairs: one image, one shard, or a whole dataset in this process.

The Prefect flows fan :func:`generate_shard` out over Dask workers; :func:`generate` is the same
recipe in one process (the CLI, tests and benchmarks use it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from homogen.config import GenerateConfig, SamplingConfig
from homogen.images import BadImage, check_texture, load_gray
from homogen.lineage.array_digest import shard_row_hashes
from homogen.lineage.libraries import pixel_versions
from homogen.redaction import redact
from homogen.sampling import pair_rng, patch_corners, patch_homography, photometric, sample_geometry
from homogen.schema import SPLIT_CODES, empty_arrays
from homogen.sources import ImageRecord, Shard, list_images, make_shards
from homogen.splits import unify_same_bytes
from homogen.store import StoreWriter, open_writer
from homogen.store.paths import absolute_root, check_writable
from homogen.store.source_table import encode as encode_table
from homogen.versions import SourceTable, dataset_version, source_table
from homogen.warping import cut_pair


@dataclass
class ShardResult:
    """What one shard produced: pair count and the images it quarantined (with reasons)."""

    index: int
    pairs: int
    images: int
    quarantined: list[dict] = field(default_factory=list)
    skipped: bool = False


def image_pairs(image: np.ndarray, record: ImageRecord, cfg: SamplingConfig, out: dict, start: int) -> None:
    """Write ``cfg.pairs_per_image`` pairs of one decoded frame into ``out[...][start:]``.

    Each pair's randomness comes from (seed, image id, pair index) alone (``pair_rng``), so any
    pair can be remade by itself; patches are cut straight into ``out`` (no per-pair allocation).

    Args:
        image: (H, W) uint8 frame.
        out: arrays of the store schema with at least ``start + pairs_per_image`` rows.
    """
    p, n = cfg.patch_size, cfg.pairs_per_image
    pairs, offsets, homography, corners = out["pairs"], out["offsets"], out["homography"], out["corners"]
    for k in range(n):
        rng = pair_rng(cfg.seed, record.image_id, k)
        g = sample_geometry(rng, cfg)
        h = patch_homography(g.offsets, p)
        i = start + k
        cut_pair(image, g.x, g.y, h, p, out=pairs[i])
        if cfg.photometric != "none":
            pairs[i, 0] = photometric(rng, pairs[i, 0], cfg.photometric)
            pairs[i, 1] = photometric(rng, pairs[i, 1], cfg.photometric)
        offsets[i] = g.offsets
        homography[i] = h
        corners[i] = patch_corners(p, g.x, g.y)
    out["image_id"][start : start + n] = record.image_id
    out["split"][start : start + n] = SPLIT_CODES[record.split]


def shard_arrays(records: tuple[ImageRecord, ...] | list[ImageRecord], cfg: SamplingConfig) -> tuple[dict, list[dict]]:
    """All pairs of a run of images, one decode per image; bad images are quarantined.

    Returns:
        arrays of the store schema (N = pairs_per_image * good images), quarantine entries.
    """
    out = empty_arrays(len(records) * cfg.pairs_per_image, cfg.patch_size)
    quarantined: list[dict] = []
    n = 0
    for record in records:
        try:
            image = load_gray(record.path, cfg.image_width, cfg.image_height, min_side=cfg.patch_size)
            check_texture(image)
        except BadImage as exc:
            # recorded in the shard's attributes: never with the credentials of a source URL
            quarantined.append({"image_id": record.image_id, "path": redact(record.path), "reason": exc.reason})
            continue
        image_pairs(image, record, cfg, out, n)
        n += cfg.pairs_per_image
    return {k: v[:n] for k, v in out.items()}, quarantined


def generate_shard(writer: StoreWriter, shard: Shard, cfg: SamplingConfig) -> ShardResult:
    """Generate and atomically write one shard; a shard already complete is skipped."""
    done = writer.shard_info(shard.index)
    if done is not None:
        return ShardResult(shard.index, done["pairs"], done["images"], done["quarantined"], skipped=True)
    arrays, quarantined = shard_arrays(shard.records, cfg)
    info = {"pairs": len(arrays["image_id"]), "images": len(shard.records), "quarantined": quarantined}
    info["code"] = pixel_versions()  # this process's pixel libraries: commit checks them (homogen.lineage.libraries)
    info["row_hashes"] = shard_row_hashes(arrays)  # the commit's array digest, without decoding (array_digest)
    writer.write_shard(shard.index, arrays, info)
    return ShardResult(shard.index, info["pairs"], info["images"], quarantined)


@dataclass
class Plan:
    """Everything decided before any pixel is made: the version, the output, the shards, and what
    the manifest must record about the sources (:meth:`manifest_sources`)."""

    config: GenerateConfig
    version: str
    output: str
    sources: SourceTable
    shards: list[Shard]
    same_bytes: list[list[int]] = field(default_factory=list)
    """Ids of images with identical bytes, one list per group (all in the split of its lowest id)."""

    @property
    def digest(self) -> str:
        """Digest of the whole source table (ids, names, splits, content digests)."""
        return self.sources.list_digest

    @property
    def num_images(self) -> int:
        return len(self.sources)

    def manifest_sources(self) -> dict:
        """The manifest's ``source`` section: root (no credentials), image count and the digest of
        the source table (the table itself is a file beside the arrays: :meth:`table_file`)."""
        return {
            "root": redact(absolute_root(self.config.source.root)),
            "digest": self.digest,
            "images": self.num_images,
        }

    def table_file(self) -> bytes:
        """The source table's bytes (:mod:`homogen.store.source_table`): the image_id, name, split and
        digest columns (homogen.versions) and the groups of images with the same bytes (homogen.splits)."""
        return encode_table(self.sources.to_manifest(), self.same_bytes)


def plan(config: GenerateConfig, threads: int | None = None, progress: bool = False) -> Plan:
    """List the source, hash every image's bytes (``threads`` threads; no decoding; ``progress``
    shows a bar), compute the dataset version and cut the shards.

    Raises:
        SourceError: the source cannot be listed, or an image exists but cannot be read.
    """
    records = list_images(config.source)
    sources = source_table(records, config.source.root, threads, progress)
    records, same_bytes = unify_same_bytes(records, sources.digest)  # one split per content
    sources = dataclasses.replace(sources, split=tuple(r.split for r in records))
    version = dataset_version(config, sources)
    shards = make_shards(records, config.shard_size)
    return Plan(config, version, config.resolved_output(version), sources, shards, same_bytes)


@dataclass
class Generation:
    """What :func:`run_generation` did: the store's manifest, and whether the store was already
    complete (nothing generated: the run only checked it)."""

    manifest: dict
    already_complete: bool


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :func:`run_generation`; the message says what is kept and how to finish.

    A ``KeyboardInterrupt``, so code that catches that still does. The output lock is released and
    every complete shard is kept (staged beside the store, ``OUT.parts``): the same generation run
    again makes only the missing shards (a shard cut off mid-write is never used).
    """

    def __init__(self, kept: str):
        self.kept = kept
        """What is kept: ``3 of 32 shards of dataset V are complete and kept in OUT.parts``."""
        super().__init__(f"interrupted: {kept}; run the same generation again to finish the dataset")


def run_generation(config: GenerateConfig, progress: bool = True) -> Generation:
    """Generate (or finish) a whole dataset in this process.

    An output that cannot be written is refused before the sources are listed and hashed. A store
    of this version that is already complete is left as it is, whatever the shard size asked now.

    Raises:
        GenerationInterrupted: Ctrl-C; its message says what is kept and how to finish.
    """
    check_writable(
        config.resolved_output("version"), config.store_format()
    )  # the default output's folder is what matters
    try:
        p = plan(config, progress=progress)
    except KeyboardInterrupt:
        raise GenerationInterrupted("nothing was written yet (it was hashing the source images)") from None
    writer = open_writer(p.output, config.store_format(), config.chunk_size)
    results: list[ShardResult] = []
    try:
        with writer.lock():
            header = writer.prepare(p, overwrite=config.overwrite)
            if header.get("state") == "complete":  # prepare returns only a header of p.version
                return Generation(writer.commit(p), already_complete=True)
            for shard in tqdm(p.shards, desc=f"generate {p.version}", unit="shard", disable=not progress):
                results.append(generate_shard(writer, shard, config.sampling))
            return Generation(writer.commit(p, results), already_complete=False)
    except KeyboardInterrupt:
        done = (
            f"all {len(p.shards)} shards"
            if len(results) == len(p.shards)
            else f"{len(results)} of {len(p.shards)} shards"
        )
        raise GenerationInterrupted(
            f"{done} of dataset {p.version} are complete and kept in {redact(writer.parts)} (a re-run makes only the others)"
        ) from None


def generate(config: GenerateConfig, progress: bool = True) -> dict:
    """Generate (or finish) a whole dataset in this process and return its manifest (:func:`run_generation`)."""
    return run_generation(config, progress).manifest
