"""Every installed module imports on its own, in a fresh interpreter (no import cycle, no reliance on
another module having been imported first), and the method registry is built without import side effects."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import homogen

PACKAGES = ("homogen", "homogen.model", "homogen.flows", "homogen.deployments")


def installed_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        mod = __import__(package, fromlist=["__path__"])
        names.append(package)
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(mod.__path__) if not m.ispkg]
    return sorted(set(names))


def test_the_list_covers_every_package():
    names = installed_modules()
    assert {"homogen.geometry", "homogen.model.methods", "homogen.model.geometry", "homogen.flows.train"} <= set(names)
    assert all(n.split(".")[0] == homogen.__name__ for n in names)


def test_each_installed_module_imports_alone_in_a_fresh_process():
    def alone(name: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=300)
        return name, proc.returncode, proc.stderr[-600:]

    with ThreadPoolExecutor(2) as pool:
        failed = [r for r in pool.map(alone, installed_modules()) if r[1] != 0]
    assert not failed, "\n".join(f"{n}: {err}" for n, _, err in failed)


def test_the_method_registry_is_explicit_and_importing_it_touches_no_other_evaluation_module():
    code = (
        "import sys, homogen.model.methods as m\n"
        "assert 'homogen.model.evaluate' not in sys.modules, 'methods imported evaluate'\n"
        "assert 'torch' not in sys.modules, 'methods imported torch'\n"
        "print(','.join(m.METHODS))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = proc.stdout.strip().split(",")
    assert names[:6] == ["identity", "orb", "sift", "ecc", "direct-mse", "direct-ncc"]
    assert set(names[6:]) == {f"{n}+refine" for n in names[:6]}


@pytest.mark.parametrize(
    ("names", "network", "said"),
    [
        (["sfit"], True, "unknown method(s) sfit: choose from identity, orb"),
        (["network+refine"], False, "refines a network's estimate, and there is no network"),
    ],
)
def test_one_method_name_check_for_the_cli_the_flows_and_the_evaluation(names, network, said):
    import numpy as np

    from homogen.flows.config import InvalidParameters, PipelineConfig, check_before_work
    from homogen.model.evaluate import evaluate_methods
    from homogen.model.methods import check_methods

    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)")):
        check_methods(names, network=network)
    if network:  # the flows always score a network
        with pytest.raises(InvalidParameters, match="evaluate.methods: unknown method"):
            check_before_work(PipelineConfig.model_validate({"evaluate": {"methods": names}}))
    with pytest.raises(ValueError, match=said.split(":")[0].replace("(", r"\(").replace(")", r"\)")):
        evaluate_methods(np.zeros((1, 2, 8, 8), np.uint8), np.zeros((1, 8), np.float32), names)
