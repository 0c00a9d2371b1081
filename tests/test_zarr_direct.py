"""homogen.zarr_direct: a staged shard written without zarr's event loop holds exactly zarr's bytes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec

from homogen import stores
from homogen.config import SamplingConfig, SourceConfig
from homogen.generate import shard_arrays
from homogen.sources import list_images
from homogen.zarr_direct import write_array


def files_under(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for f in names:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def shard() -> dict[str, np.ndarray]:
    """The arrays of a shard of 5 bundled photographs, 2 pairs each (10 rows)."""
    records = list_images(SourceConfig())[:5]
    arrays, quarantined = shard_arrays(records, SamplingConfig(pairs_per_image=2))
    assert not quarantined and len(arrays["image_id"]) == 10
    return arrays


@pytest.mark.parametrize("chunk_size", [256, 4, 10])  # one chunk; a short last chunk; chunks that tile
def test_a_staged_shard_written_directly_has_the_same_files_as_zarr_writes(tmp_path, monkeypatch, shard, chunk_size):
    """Every file (metadata and chunks of all six arrays, the group's attributes) is byte-identical
    to zarr's own write, so the chunks hard-linked into the store at commit are zarr's chunks."""
    writer = stores.ZarrWriter(str(tmp_path / "ds.zarr"), chunk_size=chunk_size)
    taken = []
    monkeypatch.setattr(stores, "write_array", lambda *args, **kw: taken.append(write_array(*args, **kw)) or taken[-1])
    writer._write_group(str(tmp_path / "direct"), shard, {"pairs": 10})
    assert taken == [True] * 6  # the direct path wrote all six arrays
    monkeypatch.setattr(stores, "write_array", lambda *args, **kw: False)  # zarr writes every array
    writer._write_group(str(tmp_path / "zarr"), shard, {"pairs": 10})
    direct, by_zarr = files_under(tmp_path / "direct"), files_under(tmp_path / "zarr")
    assert sorted(direct) == sorted(by_zarr)
    assert len([k for k in direct if "/c/" in k]) == 6 * -(-10 // chunk_size)
    for key in by_zarr:
        assert direct[key] == by_zarr[key], key
    group = zarr.open_group(str(tmp_path / "direct"), mode="r")
    for name in stores.FIELDS:
        assert np.array_equal(group[name][:], shard[name]), name


def test_a_codec_chain_it_cannot_reproduce_is_left_to_zarr(tmp_path):
    """An array whose codecs are not known here is not written at all (the caller uses zarr)."""
    group = zarr.open_group(str(tmp_path / "g"), mode="w")

    def create(g):
        return g.create_array("x", shape=(6, 3), chunks=(4, 3), dtype="f4", compressors=[GzipCodec()])

    assert write_array(str(tmp_path / "g"), "x", np.ones((6, 3), np.float32), create, ("gzip", 6)) is False
    assert not os.path.exists(tmp_path / "g" / "x")
    assert "x" not in group
