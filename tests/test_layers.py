"""The import contract (.importlinter, run by `make test` before pytest) and what it must catch.

`make test` proves the contract holds; these tests prove it would notice a breach: on a copy of the
sources with one offending module per rule, each written as an import inside a function (the kind a
grep of the top of the files misses), every contract must break, naming that import (or cycle).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("controller", "drivers", "models", "hil_tests", "benchmarks", "tests")

BREACHES = {  # offending module -> (its source, the import the report must name)
    "models/probe_up.py": ("from controller import errors", "models.probe_up -> controller.errors"),
    "drivers/probe_up.py": ("from models import names", "drivers.probe_up -> models.names"),
    "controller/probe_rig.py": ("import hil_tests.rig.plant", "controller.probe_rig -> hil_tests.rig.plant"),
    "hil_tests/rig/probe_test.py": ("from hil_tests.test_plant import Plant",
                                    "hil_tests.rig.probe_test -> hil_tests.test_plant"),
    "benchmarks/probe_conftest.py": ("from hil_tests.conftest import DEMO",
                                     "benchmarks.probe_conftest -> hil_tests.conftest"),
    "hil_tests/rig/probe_tests.py": ("import tests.cloud.helpers",
                                     "hil_tests.rig.probe_tests -> tests.cloud.helpers"),
    "controller/config/probe_heavy.py": ("import sklearn", "controller.config.probe_heavy -> sklearn"),
    # a cycle between two sibling modules: the report names the package and a dependency to remove
    "hil_tests/rig/probe_cycle_a.py": ("from hil_tests.rig import probe_cycle_b",
                                       "No cycles are allowed in hil_tests.rig"),
    "hil_tests/rig/probe_cycle_b.py": ("from hil_tests.rig import probe_cycle_a", "probe_cycle_"),
}


def _sources(dest: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("node_modules", "__pycache__",
                                                                              "*.npz", "*.csv"))
    shutil.copy(ROOT / ".importlinter", dest / ".importlinter")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_each_rule_of_the_contract_catches_an_import_inside_a_function(tmp_path):
    _sources(tmp_path)  # whether the sources themselves keep it is make test's `lint-imports` step
    for rel, (statement, _) in BREACHES.items():
        (tmp_path / rel).write_text(f"def later():\n    {statement}\n")
    broken = _lint(tmp_path)
    assert broken.returncode == 1
    assert "0 kept, 4 broken" in broken.stdout, broken.stdout[-4000:]
    missed = [chain for _, chain in BREACHES.values() if chain not in broken.stdout]
    assert missed == [], broken.stdout[-4000:]


def test_registering_the_rig_commands_imports_nothing_but_typer():
    code = ("import sys, typer; import hil_tests.rig.cli as rig; app = typer.Typer(); rig.register(app); "
            "print(sorted({c.callback.__name__ for c in app.registered_commands})); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'controller', 'drivers', 'models', 'numpy', 'asyncua', 'pymodbus', 'rich', 'pydantic'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["['demo', 'hil', 'sim']", "[]"]
