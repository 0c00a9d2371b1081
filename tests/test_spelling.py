"""A message names an option as its reader writes it: ``--overwrite`` on the command line,
``overwrite=True`` from Python; never both mixed in one message."""

from __future__ import annotations

import threading

import pytest
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate, plan
from homogen.spelling import command_line, option
from homogen.store import StoreConflict, open_writer


def test_option_is_a_flag_on_the_command_line_and_a_keyword_in_python():
    assert (option("overwrite"), option("shard_size", 4)) == ("overwrite=True", "shard_size=4")
    with command_line():
        assert (option("overwrite"), option("shard_size", 4)) == ("--overwrite", "--shard-size 4")
        seen = []
        worker = threading.Thread(target=lambda: seen.append(option("overwrite")))  # another context: Python's
        worker.start()
        worker.join()
        assert seen == ["overwrite=True"]
    assert option("overwrite") == "overwrite=True"  # the block ended: back to Python's spelling


def test_an_output_of_another_version_names_overwrite_as_each_caller_writes_it(tmp_path):
    """The reported mix: "pass overwrite=True (--overwrite)" read by a command-line user."""
    out = tmp_path / "ds.zarr"
    cfg = GenerateConfig(output=str(out), source=SourceConfig(max_images=2))
    generate(cfg, progress=False)
    other = cfg.model_copy(update={"sampling": SamplingConfig(rho=16)})
    with pytest.raises(StoreConflict) as err:
        generate(other, progress=False)
    assert "pass overwrite=True to replace it" in str(err.value) and "--overwrite" not in str(err.value)

    res = CliRunner().invoke(app, ["generate", "--max-images", "2", "--rho", "16", "-o", str(out)])
    (line,) = [x for x in res.output.splitlines() if x.startswith("error: ")]
    assert res.exit_code == 2 and "pass --overwrite to replace it" in line and "overwrite=True" not in line, line


def test_a_partial_store_of_another_shard_size_names_the_flag_on_the_command_line(tmp_path):
    out = tmp_path / "ds.zarr"
    args = ["generate", "--max-images", "4", "--pairs-per-image", "1", "-o", str(out)]
    cfg = GenerateConfig(
        output=str(out), source=SourceConfig(max_images=4), sampling=SamplingConfig(pairs_per_image=1), shard_size=2
    )
    p = plan(cfg)
    writer = open_writer(p.output, cfg.store_format(), cfg.chunk_size)
    writer.prepare(p)  # a partly generated store of shard_size 2: nothing staged yet
    res = CliRunner().invoke(app, [*args, "--shard-size", "4"])
    (line,) = [x for x in res.output.splitlines() if x.startswith("error: ")]
    assert res.exit_code == 2, res.output
    assert "re-run with --shard-size 2 to finish it, or pass --overwrite to start again" in line, line
    assert "shard_size=2" not in line and "overwrite=True" not in line, line
