"""A regular (non-editable) install holds every module of the repository under its installed name.

The editable install the README uses finds new sub-packages by itself; a wheel holds only the packages
pyproject.toml lists, so a package missing there works in development and fails for every user who
installs the wheel (it happened to homogen.store and homogen.validation).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_AS = {
    "homogen": "homogen",
    "model": "homogen/model",
    "flows": "homogen/flows",
    "deployments": "homogen/deployments",
}


def test_the_wheel_holds_every_module_and_the_bundled_sample(tmp_path):
    # Build from a copy of the sources alone: setuptools reuses an in-tree build/ folder, whose
    # leftovers from an earlier build would hide a package the list misses.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for name in tracked:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("homogen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{installed}/{Path(name).relative_to(folder).as_posix()}"
        for folder, installed in INSTALLED_AS.items()
        for name in tracked
        if name.startswith(f"{folder}/") and name.endswith(".py")
    }
    assert expected - names == set()
    assert any(n.startswith("homogen/data/coco-sample/train2017/") and n.endswith(".jpg") for n in names)
