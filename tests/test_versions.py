"""Content-addressed dataset versions: the version covers every source image's bytes, the manifest
records each image's digest, and `validate` recomputes the version and re-hashes the images."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler

import pytest
import xxhash
from typer.testing import CliRunner

from homogen.cli import app
from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.digests import DigestError, digest_files, file_digest
from homogen.generate import generate, plan
from homogen.stores import StoreConflict, open_dataset, open_writer
from homogen.validate import validate_dataset
from homogen.versions import check_version, manifest_version

from helpers import SAMPLE, QuietHTTPServer, with_sources

N_IMAGES = 8  # the first 8 bundled photographs by id: quick stores


@pytest.fixture
def coco_copy(tmp_path):
    """A writable copy of the bundled COCO sample (32 photographs and their annotations)."""
    root = tmp_path / "coco"
    shutil.copytree(SAMPLE, root)
    return root


def flip_one_byte(path, offset: int | None = None) -> None:
    """Invert one byte in the middle of the file (planning hashes bytes and never decodes them)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def first_images(root, n: int = N_IMAGES):
    return sorted((root / "train2017").glob("*.jpg"))[:n]


def cfg(root, output=None, **source) -> GenerateConfig:
    return GenerateConfig(
        source=SourceConfig(root=str(root), max_images=N_IMAGES, **source),
        output=output,
        sampling=SamplingConfig(pairs_per_image=2),
    )


def edit_manifest(store: str, **changes) -> None:
    """Rewrite the stored manifest with ``changes`` (as a person editing it by hand would)."""
    writer = open_writer(store)
    manifest = writer.read_header()
    manifest.update(changes)
    writer.write_header(manifest)


def test_changing_one_byte_of_one_image_changes_the_version(coco_copy):
    before = plan(cfg(coco_copy))
    photo = first_images(coco_copy)[3]
    flip_one_byte(photo)
    after = plan(cfg(coco_copy))
    assert after.version != before.version
    # exactly that image's recorded digest moved; ids, names and splits did not
    changed = [n for n, a, b in zip(after.sources.name, before.sources.digest, after.sources.digest) if a != b]
    assert changed == [f"train2017/{photo.name}"]
    assert after.sources.image_id == before.sources.image_id and after.sources.split == before.sources.split
    flip_one_byte(photo)  # the same bytes again: the same version again
    assert plan(cfg(coco_copy)).version == before.version


def test_rerun_after_an_image_was_replaced_refuses_the_stale_output_and_overwrite_remakes_its_pairs(
    coco_copy, tmp_path
):
    out = str(tmp_path / "ds.zarr")
    old = generate(cfg(coco_copy, output=out), progress=False)
    photo = first_images(coco_copy)[3]
    photo.write_bytes(first_images(coco_copy, 32)[20].read_bytes())  # another photograph, same file name
    new_version = plan(cfg(coco_copy)).version
    with pytest.raises(
        StoreConflict, match=rf"holds dataset version {old['dataset_version']}.*makes version {new_version}"
    ):
        generate(cfg(coco_copy, output=out), progress=False)
    assert open_dataset(out).version == old["dataset_version"]  # refused before any write
    before = open_dataset(out)[:]
    generate(cfg(coco_copy, output=out).model_copy(update={"overwrite": True}), progress=False)
    after = open_dataset(out)
    assert after.version == new_version
    rows = after[:]["image_id"] == int(photo.stem)
    assert rows.sum() == 2 and not (after[:]["pairs"][rows] == before["pairs"][rows]).all()  # its pairs remade
    assert (after[:]["pairs"][~rows] == before["pairs"][~rows]).all()


def test_the_manifest_records_each_images_content_digest(coco_copy, tmp_path):
    generate(cfg(coco_copy, output=str(tmp_path / "ds.zarr")), progress=False)
    m = with_sources(tmp_path / "ds.zarr")
    files = m["source"]["files"]
    photos = first_images(coco_copy)
    assert files["hash"] == "xxh3-128"
    assert files["name"] == [f"train2017/{p.name}" for p in photos]
    assert files["image_id"] == [int(p.stem) for p in photos]
    assert files["digest"] == [xxhash.xxh3_128_hexdigest(p.read_bytes()) for p in photos]
    assert m["source"]["images"] == N_IMAGES
    assert manifest_version(m) == m["dataset_version"] == open_dataset(str(tmp_path / "ds.zarr")).version


def test_version_does_not_depend_on_where_the_images_are_read_from(coco_copy, tmp_path):
    moved = tmp_path / "elsewhere" / "coco"
    shutil.copytree(coco_copy, moved)
    assert plan(cfg(moved)).version == plan(cfg(coco_copy)).version


def test_renaming_an_image_changes_the_version_even_with_the_same_id(tmp_path, sample_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_photos[:4]:
        shutil.copyfile(p, folder / p.name)
    source = SourceConfig(root=str(folder), kind="folder")
    before = plan(GenerateConfig(source=source))
    first = folder / sample_photos[0].name
    first.rename(first.with_suffix(".jpeg"))  # same numeric stem, so the same image id
    after = plan(GenerateConfig(source=source))
    assert after.sources.image_id == before.sources.image_id
    assert after.version != before.version


def test_digests_are_the_same_at_any_thread_count(sample_photos):
    paths = [str(p) for p in sample_photos]
    one = digest_files(paths, threads=1)
    assert digest_files(paths, threads=8) == one == [xxhash.xxh3_128_hexdigest(p.read_bytes()) for p in sample_photos]
    assert len(set(one)) == len(paths)


class _Dropping(SimpleHTTPRequestHandler):
    """Serves a folder; for the files named in ``dropped`` the connection drops after 10 bytes."""

    dropped: tuple[str, ...] = ()

    def _drops(self) -> bool:
        if self.path.rsplit("/", 1)[-1] not in self.dropped:
            return False
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        return True

    def do_HEAD(self):
        if not self._drops():
            super().do_HEAD()

    def do_GET(self):
        if self._drops():
            self.wfile.write(b"\xff\xd8" * 5)
            self.close_connection = True
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_coco(coco_copy):
    """The COCO copy served over HTTP on 127.0.0.1; ``drop(name)`` makes that file's transfer fail."""
    handler = type("Handler", (_Dropping,), {"dropped": ()})
    server = QuietHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(coco_copy)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def drop(name: str) -> None:
        handler.dropped = (name,)

    yield url, drop
    server.shutdown()
    server.server_close()


def test_images_read_over_http_hash_as_the_local_files_do(http_coco, coco_copy):
    url, _ = http_coco
    over_http = plan(cfg(url))
    assert over_http.sources.digest == plan(cfg(coco_copy)).sources.digest
    assert over_http.version == plan(cfg(coco_copy)).version


def test_an_image_whose_transfer_fails_stops_planning_naming_it(http_coco, coco_copy, tmp_path):
    url, drop = http_coco
    name = first_images(coco_copy)[4].name
    drop(name)
    with pytest.raises(DigestError, match=rf"cannot read source image {url}/train2017/{name} to hash it .*content"):
        plan(cfg(url))
    out = tmp_path / "ds.zarr"
    result = CliRunner().invoke(app, ["generate", "--source", url, "--max-images", "8", "-o", str(out)])
    assert result.exit_code == 2 and f"train2017/{name} to hash it" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_missing_image_has_no_digest_and_is_quarantined_at_generation(coco_copy, tmp_path):
    gone = first_images(coco_copy)[2]
    gone.unlink()
    assert file_digest(str(gone)) is None
    p = plan(cfg(coco_copy))
    assert p.sources.digest[2] is None and p.sources.name[2] == f"train2017/{gone.name}"
    m = generate(cfg(coco_copy, output=str(tmp_path / "ds.zarr")), progress=False)
    assert [q["image_id"] for q in m["quarantine"]] == [int(gone.stem)]
    assert m["dataset_version"] == p.version
    report = validate_dataset(str(tmp_path / "ds.zarr"), progress=False, sources=True)
    assert report.check("version_matches_content").passed is True
    assert report.check("sources_unchanged").passed is True  # still missing, as recorded


@pytest.fixture
def store(coco_copy, tmp_path):
    out = str(tmp_path / "ds.zarr")
    generate(cfg(coco_copy, output=out), progress=False)
    return out


def test_validate_recomputes_the_version_and_passes_an_untouched_store(store):
    report = validate_dataset(store, progress=False)
    check = report.check("version_matches_content")
    assert check.passed is True, check.detail
    assert report.check("sources_unchanged").passed is None  # re-hashing is asked for with sources=True


@pytest.mark.parametrize(
    "field, value",
    [
        ("dataset_version", "0123456789ab"),
        ("generator_version", "0.9"),
    ],
)
def test_a_hand_edited_manifest_fails_the_version_check(store, field, value):
    edit_manifest(store, **{field: value})
    check = validate_dataset(store, progress=False).check("version_matches_content")
    assert check.passed is False
    assert "edited" in check.detail and "regenerate" in check.detail


def test_a_hand_edited_image_digest_fails_the_version_check(store):
    m = with_sources(store)
    m["source"]["files"]["digest"][0] = "0" * 32
    check = check_version(m)
    assert check.passed is False
    assert "source.digest" in check.detail and "dataset_version" in check.detail


def test_a_manifest_without_digests_fails_the_version_check_and_says_to_regenerate(store):
    m = with_sources(store)
    del m["source"]["files"]
    check = check_version(m)
    assert check.passed is False and "regenerate" in check.detail


def test_cli_validate_exits_1_on_a_hand_edited_dataset_version(store):
    edit_manifest(store, dataset_version="0123456789ab")
    result = CliRunner().invoke(app, ["validate", store])
    assert result.exit_code == 1
    assert "version_matches_content | **FAIL**" in result.output


def test_validate_sources_names_the_images_that_changed(store, coco_copy):
    photos = first_images(coco_copy)
    flip_one_byte(photos[1])
    photos[5].unlink()
    report = validate_dataset(store, progress=False, sources=True)
    check = report.check("sources_unchanged")
    assert check.passed is False and check.checked == N_IMAGES and check.failed == 2
    assert {(e["name"], e["now"]) for e in check.examples} == {
        (f"train2017/{photos[1].name}", "changed"),
        (f"train2017/{photos[5].name}", "missing"),
    }
    assert f"train2017/{photos[1].name} (changed)" in check.detail
    assert report.check("version_matches_content").passed is True  # the store itself is intact


def test_cli_validate_sources_reads_the_images_where_they_are_now(store, coco_copy, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(str(coco_copy), moved)
    here = CliRunner().invoke(app, ["validate", store, "--sources", "--source-root", str(moved)])
    assert here.exit_code == 0, here.output
    assert f"{N_IMAGES} images under {moved} hash as recorded" in here.output
    flip_one_byte(first_images(moved)[0])
    changed = CliRunner().invoke(app, ["validate", store, "--sources", "--source-root", str(moved)])
    assert changed.exit_code == 1
    assert f"train2017/{first_images(moved)[0].name} (changed)" in changed.output


def test_report_json_lists_every_changed_image(store, coco_copy, tmp_path):
    for p in first_images(coco_copy):
        flip_one_byte(p)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["validate", store, "--sources", "--report", str(out)])
    assert result.exit_code == 1
    check = next(c for c in json.loads(out.read_text())["checks"] if c["name"] == "sources_unchanged")
    assert check["failed"] == N_IMAGES and len(check["examples"]) == N_IMAGES
