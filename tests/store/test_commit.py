"""The commit: nothing a user may touch (the staged parts left by an interrupted cleanup) shares
storage with the committed store."""

from __future__ import annotations

import os

from homogen.config import GenerateConfig, SourceConfig
from homogen.generate import generate, run_generation
from homogen.store import ZarrWriter
from homogen.validation import validate_dataset


def inodes(root) -> dict[tuple[int, int], str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(d, f))
            out[(st.st_dev, st.st_ino)] = os.path.join(d, f)
    return out


def test_staged_parts_left_behind_share_no_file_with_the_store(tmp_path, monkeypatch):
    """The reported case: cleanup interrupted after the commit, every staged file overwritten by
    the user; the committed store is untouched and still validates, and a re-run finds it complete."""
    out = str(tmp_path / "ds.zarr")
    cfg = GenerateConfig(output=out, source=SourceConfig(max_images=8), shard_size=2, chunk_size=8)
    monkeypatch.setattr(ZarrWriter, "remove_debris", lambda self: None)  # the cleanup never ran
    generate(cfg, progress=False)
    monkeypatch.undo()
    parts = out + ".parts"
    staged = inodes(parts)
    assert staged, "the staged parts should have been left behind"
    assert not set(staged) & set(inodes(out))
    assert all(os.lstat(p).st_nlink == 1 for p in inodes(out).values())
    for path in staged.values():
        if "/c/" in path:  # every chunk file the user could touch
            with open(path, "r+b") as f:
                f.write(b"\xff" * 16)
    report = validate_dataset(out, progress=False)
    assert report.passed, report.to_markdown()
    again = run_generation(cfg, progress=False)
    assert again.already_complete and not os.path.exists(parts)  # the re-run finishes the cleanup
    assert validate_dataset(out, progress=False).passed
