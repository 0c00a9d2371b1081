"""Safety: no secret is written anywhere; nothing loads pickled code; servers stay on loopback.

Secrets are planted where users put them (credentials inside a source URL, tokens in the
environment) and every byte the pipeline writes is searched for them.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homogen.config import SAMPLE_ROOT, GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.sources import SourceError, list_images
from homogen.stores import open_dataset

URL_SECRET = "pa55-In-URL-7f3a"
ENV_SECRET = "env-T0ken-91c2"
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS", "HF_TOKEN")


def files_containing(root: Path, *secrets: str) -> list[str]:
    """Every file under ``root`` (or ``root`` itself) whose bytes contain any of ``secrets``."""
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return sorted(str(f) for f in files if any(s.encode() in f.read_bytes() for s in secrets))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # clients probing with partial reads close early: not our concern here


@pytest.fixture(scope="module")
def http_coco(tmp_path_factory):
    """A COCO layout (3 bundled images + one corrupt file listed in the annotations) served over
    HTTP on 127.0.0.1; yields its URL with credentials ``alice:<URL_SECRET>@`` in it."""
    root = tmp_path_factory.mktemp("http") / "coco"
    shutil.copytree(SAMPLE_ROOT, root)
    ann_path = root / "annotations" / "instances_train2017.json"
    ann = json.loads(ann_path.read_text())
    ann["images"] = ann["images"][:3] + [{"id": 999, "file_name": "broken.jpg", "width": 640, "height": 480}]
    ann_path.write_text(json.dumps(ann))
    (root / "train2017" / "broken.jpg").write_bytes(b"this is not a JPEG")
    server = _QuietServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://alice:{URL_SECRET}@127.0.0.1:{server.server_port}/coco"
    server.shutdown()
    server.server_close()


@pytest.fixture
def secret_env(monkeypatch):
    for name in SECRET_ENV_VARS:
        monkeypatch.setenv(name, ENV_SECRET)


# --------------------------------------------------------------------------- library: the store


@pytest.mark.parametrize("name", ["data.zarr", "data.h5"])
def test_no_credential_from_the_source_url_or_environment_reaches_the_store(name, tmp_path, http_coco, secret_env):
    output = tmp_path / name
    manifest = generate(
        GenerateConfig(source=SourceConfig(root=http_coco), sampling=SamplingConfig(pairs_per_image=1), output=str(output)),
        progress=False,
    )
    # the credentials URL really was used: 3 images made pairs, the corrupt one was quarantined
    assert manifest["num_pairs"] == 3
    assert [q["image_id"] for q in manifest["quarantine"]] == [999]
    # ... and the store records where the data came from, without the credentials
    public = http_coco.replace(f"alice:{URL_SECRET}@", "")
    assert manifest["source"]["root"] == public
    assert manifest["quarantine"][0]["path"] == f"{public}/train2017/broken.jpg"
    assert open_dataset(str(output)).manifest == manifest
    # no byte of any file of the store (manifest, shard attributes, arrays) holds a secret
    store_files = [output] + ([Path(f"{output}.parts")] if name.endswith(".h5") else [])
    assert [f for root in store_files for f in files_containing(root, URL_SECRET, ENV_SECRET)] == []
    assert files_containing(tmp_path, URL_SECRET, ENV_SECRET) == []


def test_a_source_error_does_not_echo_the_credentials(http_coco):
    missing = http_coco.replace("/coco", "/nowhere")
    with pytest.raises(SourceError) as info:
        list_images(SourceConfig(root=missing, kind="coco"))
    assert "127.0.0.1" in str(info.value) and "instances_train2017.json" in str(info.value)
    assert URL_SECRET not in str(info.value)
