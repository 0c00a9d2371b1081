"""``--overwrite`` replaces a homogen store and nothing else: every refusal happens before anything
is deleted, in one line naming the path and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zarr
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.store import StoreConflict, StoreError, ZarrWriter, open_dataset
from homogen.store.paths import check_replaceable


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(*args: str):
    return CliRunner().invoke(app, ["generate", "--max-images", "2", *args])


def one_line_error(res, *words: str) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.exception
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]  # progress bars aside
    assert len(lines) == 1 and "\n" not in lines[0], res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_overwrite_refuses_a_project_folder_that_holds_the_source(tmp_path, sample_photos, monkeypatch):
    """The reported case: --source proj/photos --kind folder -o proj --overwrite deleted the project."""
    proj = tmp_path / "proj"
    (proj / "photos").mkdir(parents=True)
    (proj / "other").mkdir()
    for p in sample_photos[:3]:
        shutil.copyfile(p, proj / "photos" / p.name)
    (proj / "other" / "thesis.tex").write_text("precious")
    before = tree(proj)
    monkeypatch.chdir(tmp_path)
    res = cli("--source", "proj/photos", "--kind", "folder", "-o", "proj", "--overwrite")
    one_line_error(res, f"output {proj} ", "contains the source images (proj/photos)", "choose another output")
    assert tree(proj) == before


def test_overwrite_refuses_the_working_directory_and_its_ancestors(tmp_path, monkeypatch):
    """`-o . --overwrite` inside a store was a traceback; it, and any folder above the working
    directory, is refused even when it is a homogen store."""
    store = tmp_path / "ds.zarr"
    generate(GenerateConfig(output=str(store), source=SourceConfig(max_images=2)), progress=False)
    (store / "pairs" / "sub").mkdir()
    before = tree(store)
    monkeypatch.chdir(store / "pairs" / "sub")
    for output in (str(store), "../..", "../../"):
        res = cli("-o", output, "--overwrite", "--rho", "16")
        one_line_error(res, "working directory", "choose another output")
    assert tree(store) == before
    monkeypatch.chdir(store)
    one_line_error(cli("-o", ".", "--overwrite", "--rho", "16"), "working directory")
    assert tree(store) == before


def store_as_home(home: Path, monkeypatch) -> dict[str, bytes]:
    """A homogen store generated at ``home``, made the home folder (HOME) from its parent; its files."""
    generate(GenerateConfig(output=str(home), source=SourceConfig(max_images=2)), progress=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home.parent)
    return tree(home)


def test_overwrite_refuses_the_home_folder_even_if_it_is_a_store(tmp_path, monkeypatch):
    home = tmp_path / "home.zarr"
    before = store_as_home(home, monkeypatch)
    one_line_error(cli("-o", str(home), "--overwrite", "--rho", "16"), str(home), "home folder")
    assert tree(home) == before


def test_overwrite_refuses_a_store_holding_anything_else(tmp_path):
    out = tmp_path / "ds.zarr"
    cfg = GenerateConfig(output=str(out), source=SourceConfig(max_images=2))
    generate(cfg, progress=False)
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    with pytest.raises(
        StoreConflict,
        match=r"overwrite=True refused: .*ds\.zarr holds files that are not part of a homogen store \(notes\.txt\)",
    ):
        generate(cfg.model_copy(update={"overwrite": True, "sampling": SamplingConfig(rho=16)}), progress=False)
    assert tree(out) == before
    (out / "notes.txt").unlink()
    m = generate(cfg.model_copy(update={"overwrite": True, "sampling": SamplingConfig(rho=16)}), progress=False)
    assert open_dataset(out).version == m["dataset_version"]


def test_overwrite_refuses_a_zarr_store_that_is_not_homogens(tmp_path):
    out = tmp_path / "theirs.zarr"
    zarr.create_group(str(out), attributes={"owner": "someone"}).create_array("x", shape=(3,), dtype="i4")[...] = 7
    before = tree(out)
    cfg = GenerateConfig(output=str(out), source=SourceConfig(max_images=2), overwrite=True)
    with pytest.raises(StoreConflict, match=r"data that is not a homogen store.*overwrite=True only ever replaces"):
        generate(cfg, progress=False)
    assert tree(out) == before


def test_overwrite_refuses_a_file_that_is_not_a_store(tmp_path):
    out = tmp_path / "notes.h5"
    out.write_text("not HDF5")
    with pytest.raises(StoreConflict, match="data that is not a homogen store"):
        generate(GenerateConfig(output=str(out), source=SourceConfig(max_images=2), overwrite=True), progress=False)
    assert out.read_text() == "not HDF5"


def test_overwrite_replaces_the_staged_shards_of_another_generation(tmp_path):
    out = tmp_path / "ds.zarr"
    cfg = GenerateConfig(output=str(out), source=SourceConfig(max_images=4), shard_size=2)
    generate(cfg, progress=False)
    shutil.rmtree(out)  # the root was deleted, the staged shards of a run were left
    w = ZarrWriter(str(out))
    (tmp_path / "ds.zarr.parts" / "shard-00000").mkdir(parents=True)
    assert w.only_staged_parts()
    m = generate(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert open_dataset(out).version == m["dataset_version"] and not (tmp_path / "ds.zarr.parts").exists()


@pytest.mark.parametrize(
    "output, source, why",
    [
        ("/", None, "filesystem root"),
        ("{tmp}/data", "{tmp}/data/coco", "contains the source images"),
        ("{tmp}/data", "{tmp}/data", "contains the source images"),
        ("{tmp}/link", "{tmp}/data/coco", r"link \(really .*data\) contains the source images"),  # by a symlink
        ("{tmp}/up/data", "{tmp}/data/coco", "contains the source images"),  # through a link above it
    ],
)
def test_check_replaceable_refuses_roots_and_the_source(tmp_path, output, source, why):
    (tmp_path / "data" / "coco").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    (tmp_path / "up").symlink_to(tmp_path)
    fill = {"tmp": tmp_path}
    with pytest.raises(StoreConflict, match=why):
        check_replaceable(output.format(**fill), source and source.format(**fill), {"coco"})
    assert (tmp_path / "data" / "coco").is_dir()


def test_check_replaceable_refuses_a_bucket_that_contains_the_source():
    with pytest.raises(StoreConflict, match="contains the source"):
        check_replaceable("s3://bucket/proj", "s3://bucket/proj/photos", set())
    check_replaceable("s3://bucket/proj.zarr", "s3://bucket/proj/photos", set())  # a sibling is fine


def test_overwrite_through_a_symlink_names_the_real_store(tmp_path):
    """`-o link.zarr --overwrite` with link.zarr -> real.zarr: replaced the link by a new store and
    left the old one; now refused, naming the real path, both untouched."""
    real = tmp_path / "real.zarr"
    cfg = GenerateConfig(output=str(real), source=SourceConfig(max_images=2))
    generate(cfg, progress=False)
    (tmp_path / "link.zarr").symlink_to(real)
    before = tree(real)
    other = cfg.model_copy(
        update={"output": str(tmp_path / "link.zarr"), "overwrite": True, "sampling": SamplingConfig(rho=16)}
    )
    with pytest.raises(StoreConflict, match=rf"link\.zarr is a symbolic link to {real}: .*pass output='{real}'"):
        generate(other, progress=False)
    assert (tmp_path / "link.zarr").is_symlink() and tree(real) == before


def test_the_root_as_output_is_named_as_the_root_not_the_working_directory(tmp_path, monkeypatch):
    """`-o / --overwrite` said "output  holds ..." (the path stripped to "", i.e. the working directory):
    now refused as the root before anything, with or without --overwrite."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        cfg = GenerateConfig(output="/", format="zarr", source=SourceConfig(max_images=2), overwrite=overwrite)
        with pytest.raises(StoreError, match=r"^output / is a filesystem root: .*choose one"):
            generate(cfg, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_overwrite_of_the_home_folder_names_the_home_folder_however_it_is_spelled(tmp_path, monkeypatch):
    """`-o ~ --overwrite` said "holds data that is not a homogen store": the home folder is refused as
    the home folder, whatever its spelling (trailing slash, `/./`, a symbolic link to it), before
    anything is deleted."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    (tmp_path / "link").symlink_to(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for output in (str(home), f"{home}/", f"{home}/./", "home", str(tmp_path / "link"), "link/"):
        line = one_line_error(cli("-o", output, "--overwrite"), "--overwrite refused", "is your home folder")
        assert str(home) in line and "choose another output" in line and "not a homogen store" not in line, line
        assert "overwrite=True" not in line, line
        assert (home / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    assert not (tmp_path / "home.lock").exists() or (tmp_path / "home.lock").stat().st_size == 0


def test_a_store_of_another_version_in_the_home_folder_never_suggests_overwrite(tmp_path, monkeypatch):
    """Without --overwrite the message named --overwrite as the fix, which is then refused: it names the reason."""
    home = tmp_path / "home"
    before = store_as_home(home, monkeypatch)
    line = one_line_error(cli("-o", str(home), "--rho", "16"), "holds dataset version", "choose another output")
    assert "is your home folder, which --overwrite never deletes" in line and "pass --overwrite" not in line, line
    assert tree(home) == before


def test_a_quoted_tilde_is_the_home_folder_for_every_step(tmp_path, sample_photos, monkeypatch):
    """`-o '~/t.zarr'` (quoted: the shell leaves the ~) made the shards in a folder named ``~`` under
    the working directory, then looked for them under the home folder at commit (a wrong "free space"
    hint, then a raw traceback on the re-run); `--source '~/photos'` and `-o '~' --overwrite` alike."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    (home / "photos").mkdir(parents=True)
    cwd.mkdir()
    for p in sample_photos[:4]:
        shutil.copyfile(p, home / "photos" / p.name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    args = ["--source", "~/photos", "--kind", "folder", "--val-fraction", "0.5"]
    res = cli(*args, "-o", "~/t.zarr")
    assert res.exit_code == 0, res.output
    assert list(cwd.iterdir()) == [] and (home / "t.zarr" / "zarr.json").is_file()
    with open_dataset(str(home / "t.zarr")) as ds:
        assert ds.sources["root"] == str(home / "photos") and len(ds) == 8  # --max-images 2, 4 pairs each
    again = cli(*args, "-o", "~/t.zarr")
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    before = tree(home)
    one_line_error(cli(*args, "--rho", "16", "-o", "~", "--overwrite"), str(home), "is your home folder")
    assert tree(home) == before and list(cwd.iterdir()) == []
