"""constraints.txt, the tested set: it covers every dependency within pyproject.toml's bounds, pins
Prefect 3.9, and is what the README's commands and CI install (a fresh clone gets what was tested)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_the_lock_pins_every_dependency_within_pyprojects_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in constraints.txt: refresh it with .ci/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"
        for extra in requirement.extras:  # dask[distributed]
            assert canonicalize_name(extra) in pins
    assert pins["prefect"].release[:2] == (3, 9) and pins["torch"] == Version("2.13.0")


def test_the_readme_commands_and_ci_install_the_lock_after_the_cpu_torch():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("pip install torch==2.13.0 && pip install")]
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text()
    for text in (*commands, ci):
        assert "-c constraints.txt -e" in text, text
        assert text.index("torch==2.13.0") < text.index("constraints.txt")
