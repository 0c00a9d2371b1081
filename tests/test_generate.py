"""Generation: determinism whatever the sharding and format, per-pair regeneration, dataset
versions, and resuming after an interrupted shard (in-process failure and a killed process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, plan
from homogen.images import load_gray
from homogen.sampling import pair_rng, patch_corners, patch_homography, photometric, sample_geometry
from homogen.stores import HDF5Writer, StoreError, ZarrWriter, open_dataset
from homogen.warping import cut_pair

from helpers import SAMPLE, assert_same_arrays, manifest_without_location, read_store

SUFFIX = {"zarr": ".zarr", "hdf5": ".h5"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """All 32 bundled images in one shard, Zarr: (arrays, manifest)."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    m = generate(GenerateConfig(output=str(out), shard_size=32), progress=False)
    return read_store(out), m


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
@pytest.mark.parametrize("shard_size", [1, 3, 16, 32])
def test_same_dataset_whatever_the_shard_size_and_format(tmp_path, reference, shard_size, fmt):
    out = tmp_path / f"ds{SUFFIX[fmt]}"
    m = generate(GenerateConfig(output=str(out), shard_size=shard_size), progress=False)
    assert len(m["shards"]) == -(-32 // shard_size)
    assert m["dataset_version"] == reference[1]["dataset_version"]
    assert_same_arrays(read_store(out), reference[0])


@pytest.mark.parametrize("level", ["none", "hard"])
def test_any_pair_regenerates_from_seed_image_id_and_pair_index(tmp_path, level):
    cfg = GenerateConfig(
        output=str(tmp_path / "ds.zarr"),
        source=SourceConfig(max_images=6),
        shard_size=4,
        sampling=SamplingConfig(seed=11, photometric=level),
    )
    generate(cfg, progress=False)
    data = read_store(cfg.output)
    s = cfg.sampling
    for i in [0, 5, 13, 23]:
        image_id = int(data["image_id"][i])
        k = int(np.count_nonzero(data["image_id"][:i] == image_id))  # pair index within its image
        rng = pair_rng(s.seed, image_id, k)
        g = sample_geometry(rng, s)
        h = patch_homography(g.offsets, s.patch_size)
        frame = load_gray(str(SAMPLE / "train2017" / f"{image_id:012d}.jpg"), s.image_width, s.image_height)
        a, b = cut_pair(frame, g.x, g.y, h, s.patch_size)
        assert np.array_equal(data["pairs"][i, 0], photometric(rng, a, level))
        assert np.array_equal(data["pairs"][i, 1], photometric(rng, b, level))
        assert np.array_equal(data["offsets"][i], g.offsets)
        assert np.array_equal(data["homography"][i], h)
        assert np.array_equal(data["corners"][i], patch_corners(s.patch_size, g.x, g.y))


def test_photometric_changes_pixels_not_geometry(tmp_path, reference):
    """Photometric jitter is drawn after the geometry: same labels, A and B changed independently."""
    out = tmp_path / "hard.zarr"
    generate(GenerateConfig(output=str(out), sampling=SamplingConfig(photometric="hard")), progress=False)
    plain, hard = reference[0], read_store(out)
    for f in ("offsets", "homography", "corners", "image_id", "split"):
        assert np.array_equal(plain[f], hard[f])
    change = hard["pairs"].astype(np.int16) - plain["pairs"]
    assert 1.0 < np.abs(change).mean() < 40.0
    # A and B get their own brightness shift: their mean changes differ
    shift_a, shift_b = change[:, 0].mean(axis=(1, 2)), change[:, 1].mean(axis=(1, 2))
    assert np.abs(shift_a - shift_b).mean() > 1.0


def version(**kw) -> str:
    return plan(GenerateConfig(**kw)).version


def test_version_changes_with_what_decides_the_bytes():
    base = version()
    assert version() == base
    assert version(sampling=SamplingConfig(seed=0, rho=32)) == base  # equal configs, spelt out
    changed = {
        "rho": version(sampling=SamplingConfig(rho=24)),
        "seed": version(sampling=SamplingConfig(seed=1)),
        "pairs_per_image": version(sampling=SamplingConfig(pairs_per_image=2)),
        "photometric": version(sampling=SamplingConfig(photometric="easy")),
        "image list": version(source=SourceConfig(max_images=31)),
        "categories": version(source=SourceConfig(categories=("dog",))),
        "split": version(source=SourceConfig(test_fraction=0.5)),
    }
    assert base not in changed.values()
    assert len(set(changed.values())) == len(changed)


def test_version_ignores_where_and_how_it_is_stored(tmp_path):
    base = version()
    for kw in [
        dict(output=str(tmp_path / "a.zarr")),
        dict(output=str(tmp_path / "a.h5")),
        dict(format="hdf5"),
        dict(shard_size=3),
        dict(chunk_size=7),
        dict(overwrite=True),
    ]:
        assert version(**kw) == base, kw


def test_default_output_is_named_by_the_version(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMOGEN_WORKDIR", str(tmp_path))
    p = plan(GenerateConfig(format="hdf5"))
    assert p.output == str(tmp_path / "datasets" / f"{p.version}.h5")


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_resume_after_an_interrupted_shard_skips_done_shards_and_matches(tmp_path, reference, monkeypatch, fmt):
    writer_cls = ZarrWriter if fmt == "zarr" else HDF5Writer
    real_write = writer_cls.write_shard
    calls: list[int] = []
    crashed: list[int] = []

    def failing_write(self, index, arrays, info):
        calls.append(index)
        if index == 3 and not crashed:  # the first run dies writing shard 3
            crashed.append(index)
            raise Crash("disk unplugged")
        return real_write(self, index, arrays, info)

    monkeypatch.setattr(writer_cls, "write_shard", failing_write)
    out = str(tmp_path / f"ds{SUFFIX[fmt]}")
    cfg = GenerateConfig(output=out, shard_size=4)  # 8 shards
    with pytest.raises(Crash):
        generate(cfg, progress=False)
    assert calls == [0, 1, 2, 3]
    with pytest.raises(StoreError, match="incomplete"):
        open_dataset(out)
    assert not os.path.exists(out + ".lock")

    calls.clear()
    m = generate(cfg, progress=False)
    assert calls == [3, 4, 5, 6, 7]  # complete shards 0-2 are skipped
    assert_same_arrays(read_store(out), reference[0])
    uninterrupted = str(tmp_path / f"clean{SUFFIX[fmt]}")
    m_clean = generate(cfg.model_copy(update={"output": uninterrupted}), progress=False)
    assert manifest_without_location(m) == manifest_without_location(m_clean)
    assert_same_arrays(read_store(out), read_store(uninterrupted))
    assert m["dataset_version"] == reference[1]["dataset_version"]


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_partially_written_shard_is_not_visible(tmp_path, monkeypatch, fmt):
    """A shard that fails half-way leaves no shard behind: neither the writer nor the reader sees it."""
    out = str(tmp_path / f"ds{SUFFIX[fmt]}")
    cfg = GenerateConfig(output=out, source=SourceConfig(max_images=4), shard_size=2)
    import h5py
    import zarr

    if fmt == "zarr":
        real = zarr.Group.create_array

        def create_then_fail(self, name, **kw):
            if name == "homography" and "shard-00001" in str(self.store_path):
                raise Crash("killed mid-shard")
            return real(self, name, **kw)

        monkeypatch.setattr(zarr.Group, "create_array", create_then_fail)
    else:
        real = h5py.Group.create_dataset

        def create_then_fail(self, name, **kw):
            if name == "homography" and "shard-00001" in self.file.filename:
                raise Crash("killed mid-shard")
            return real(self, name, **kw)

        monkeypatch.setattr(h5py.Group, "create_dataset", create_then_fail)
    with pytest.raises(Crash):
        generate(cfg, progress=False)
    writer = ZarrWriter(out) if fmt == "zarr" else HDF5Writer(out)
    assert writer.shard_info(0) is not None and writer.shard_info(1) is None
    shard_dir = out + ".parts"  # staged beside the store until commit
    assert sorted(os.listdir(shard_dir)) == (["shard-00000"] if fmt == "zarr" else ["shard-00000.h5"])
    monkeypatch.undo()
    assert generate(cfg, progress=False)["num_pairs"] == 16


def test_leftover_temporary_shards_do_not_confuse_reader_or_writer(tmp_path, reference):
    out = tmp_path / "ds.zarr"
    cfg = GenerateConfig(output=str(out), shard_size=16)
    generate(cfg, progress=False)
    junk = out.with_name(out.name + ".parts") / ".tmp-shard-00001-deadbeef"
    junk.mkdir(parents=True)  # as a killed writer of a later run would leave it
    (junk / "zarr.json").write_text("{not json")
    assert_same_arrays(read_store(out), reference[0])
    assert generate(cfg, progress=False)["num_pairs"] == 128  # resumes a complete store: all skipped
    assert_same_arrays(read_store(out), reference[0])


CRASHING_CHILD = textwrap.dedent(
    """
    import os, sys
    import zarr
    from homogen.config import GenerateConfig
    from homogen.generate import generate

    real = zarr.Group.create_array

    def die_mid_shard(self, name, **kw):
        # the process is killed while shard 2 is half written (its temporary group on disk)
        if name == "homography" and "shard-00002" in str(self.store_path):
            os._exit(9)
        return real(self, name, **kw)

    zarr.Group.create_array = die_mid_shard
    generate(GenerateConfig(output=sys.argv[1], shard_size=4), progress=False)
    """
)


def test_resume_after_the_process_is_killed_mid_shard(tmp_path, reference):
    """A killed run leaves its lock, a half-written temporary shard and an incomplete manifest;
    the same generation re-run takes the stale lock over and ends bit-identical."""
    out = tmp_path / "ds.zarr"
    res = subprocess.run([sys.executable, "-c", CRASHING_CHILD, str(out)], capture_output=True, text=True)
    assert res.returncode == 9, res.stderr
    assert os.path.exists(str(out) + ".lock")
    leftovers = sorted(os.listdir(str(out) + ".parts"))
    assert len(leftovers) == 3 and leftovers[0].startswith(".tmp-shard-00002-")
    assert leftovers[1:] == ["shard-00000", "shard-00001"]
    with pytest.raises(StoreError, match="incomplete"):
        open_dataset(str(out))

    m = generate(GenerateConfig(output=str(out), shard_size=4), progress=False)
    assert m["state"] == "complete" and m["num_pairs"] == 128
    assert_same_arrays(read_store(out), reference[0])
    assert not os.path.exists(str(out) + ".lock")


# every parameter combination that cannot work: (flag values, the parameter named, the limit named)
IMPOSSIBLE = [
    ({"pairs_per_image": 1_000_000}, "pairs_per_image=1000000", "use pairs_per_image <= 32623"),
    ({"image_width": 100_000}, "image_width x image_height = 100000x240", "MAX_FRAME_PIXELS"),
    ({"image_width": 5000, "image_height": 5000}, "5000x5000", "MAX_FRAME_PIXELS"),
    ({"shard_size": 100_000}, "shard_size=100000", "use shard_size <= 8155"),
    ({"shard_size": 1000, "pairs_per_image": 40}, "shard_size=1000", "use shard_size <= 815"),
    ({"patch_size": 300}, "patch_size=300", "use patch_size <= 240"),
    ({"rho": 40}, "rho=40", "use rho <= 32"),
    ({"rho": -1}, "rho", ">= 0"),
    ({"pairs_per_image": 0}, "pairs_per_image", "greater than or equal to 1"),
    ({"shard_size": 0}, "shard_size", "greater than or equal to 1"),
    ({"test_fraction": 1.5}, "test_fraction", "less than or equal to 1"),
]


@pytest.mark.parametrize("flags, names, limit", IMPOSSIBLE)
def test_impossible_parameters_are_refused_before_the_output_exists(tmp_path, flags, names, limit):
    """Through the command line, as a user meets them: one line naming the parameter and its limit,
    exit code 2, nothing created (these used to end in an out-of-memory traceback after the store
    was created)."""
    from typer.testing import CliRunner

    from homogen.cli import app

    out = tmp_path / "out.zarr"
    args = ["generate", "--output", str(out)]
    for k, v in flags.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert names in res.output and limit in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_the_limits_leave_the_recipe_and_large_runs_alone():
    GenerateConfig(shard_size=8155)  # 8155 images x 4 pairs of 128x128: just under 1 GiB in memory
    GenerateConfig(sampling=SamplingConfig(image_width=4096, image_height=4096, patch_size=1024, rho=256))
    GenerateConfig(sampling=SamplingConfig(pairs_per_image=32623), shard_size=1)
