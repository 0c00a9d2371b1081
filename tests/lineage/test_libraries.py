"""The manifest names the code that made the bytes; a partial store made by other pixel-deciding
libraries is not resumed (its finished shards and the new ones would come from different code)."""

from __future__ import annotations

import re

import cv2
import numpy
import pytest
import simplejpeg
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, generate_shard, plan
from homogen.lineage.libraries import PIXEL_LIBRARIES, code_versions, libjpeg_turbo_version
from homogen.stores import StoreConflict, open_writer


def config(out, fmt_suffix="zarr") -> GenerateConfig:
    return GenerateConfig(
        source=SourceConfig(max_images=6),
        sampling=SamplingConfig(pairs_per_image=2, patch_size=64, rho=16),
        output=str(out),
        shard_size=2,
    )


def partial(out, **code_changes) -> GenerateConfig:
    """A store with one of its three shards written, its header's library versions edited."""
    cfg = config(out)
    p = plan(cfg)
    writer = open_writer(cfg.output)
    writer.prepare(p)
    generate_shard(writer, p.shards[0], cfg.sampling)
    header = writer.read_header()
    for lib, version in code_changes.items():
        if version is None:
            header.pop("code")
        else:
            header["code"][lib] = version
    writer.write_header(header)
    return cfg


def test_the_recorded_versions_are_those_of_the_libraries_in_use():
    code = code_versions()
    assert code["numpy"] == numpy.__version__ and code["opencv"] == cv2.__version__
    assert code["simplejpeg"] == simplejpeg.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", libjpeg_turbo_version()), libjpeg_turbo_version()
    assert set(PIXEL_LIBRARIES) <= set(code)


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_a_partial_store_of_other_pixel_libraries_is_refused_naming_both_versions(tmp_path, fmt):
    cfg = partial(tmp_path / f"ds.{fmt}", numpy="1.26.0", opencv="4.8.0")
    with pytest.raises(StoreConflict) as err:
        generate(cfg, progress=False)
    msg = str(err.value)
    assert (
        f"numpy 1.26.0 there, {numpy.__version__} here" in msg and f"opencv 4.8.0 there, {cv2.__version__} here" in msg
    )
    assert "simplejpeg" not in msg and "pass overwrite=True to start again" in msg and "--overwrite" not in msg
    assert open_writer(cfg.output).read_header()["state"] == "generating"  # nothing was touched
    # the fix it names works
    m = generate(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert m["state"] == "complete" and m["code"] == code_versions()


def test_storage_libraries_alone_do_not_block_a_resume(tmp_path):
    cfg = partial(tmp_path / "ds.zarr", zarr="3.0.0", h5py="3.10.0", homogen="0.0.9")
    m = generate(cfg, progress=False)
    assert m["state"] == "complete" and m["code"] == code_versions()


def test_a_partial_store_that_records_no_versions_is_refused_in_one_line(tmp_path):
    cfg = partial(tmp_path / "ds.zarr", code=None)
    result = CliRunner().invoke(
        app,
        ["generate", "--max-images", "6", "--pairs-per-image", "2", "--patch-size", "64", "--rho", "16"]
        + ["--shard-size", "2", "-o", cfg.output],
    )
    errors = [line for line in result.output.splitlines() if "error" in line]  # beside the hashing progress bar
    assert result.exit_code == 2 and len(errors) == 1 and errors[0].startswith("error: output "), result.output
    assert (
        "records no library versions" in errors[0]
        and "pass --overwrite to" in errors[0]
        and "overwrite=True" not in errors[0]
    )


def test_a_shard_made_by_a_worker_with_other_pixel_libraries_is_not_committed_nor_resumed(tmp_path):
    from homogen.generate import shard_arrays
    from homogen.lineage.libraries import pixel_versions
    from homogen.stores import StoreError

    cfg = config(tmp_path / "ds.zarr")
    p = plan(cfg)
    writer = open_writer(cfg.output)
    writer.prepare(p)
    shard = p.shards[1]
    arrays, quarantined = shard_arrays(shard.records, cfg.sampling)
    info = {"pairs": len(arrays["image_id"]), "images": len(shard.records), "quarantined": quarantined}
    writer.write_shard(1, arrays, {**info, "code": {**pixel_versions(), "opencv": "4.8.0"}})  # as such a worker would
    for s in (p.shards[0], p.shards[2]):
        generate_shard(writer, s, cfg.sampling)
    with pytest.raises(StoreError) as err:
        writer.commit(p)
    assert "cannot commit" in str(err.value) and "1 staged shard(s) made by other pixel-deciding libraries" in str(
        err.value
    )
    assert "shard 1 (opencv 4.8.0)" in str(err.value) and f"opencv {cv2.__version__}" in str(err.value)
    assert open_writer(cfg.output).read_header()["state"] == "generating"
    with pytest.raises(StoreConflict, match=r"partly generated store that holds 1 staged shard\(s\) made by other"):
        generate(cfg, progress=False)  # a re-run is refused before any work, naming the shard
    m = generate(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert (
        m["state"] == "complete"
        and m["array_digest"] == generate(config(tmp_path / "clean.zarr"), progress=False)["array_digest"]
    )
