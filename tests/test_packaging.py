"""The wheel: what ships, and that an installed wheel runs `linesentry demo` from any directory.

Issue 13: the wheel used to ship the test files and the demo read `configs/` from outside the
package, so it worked only from a checkout. Here the wheel is built from a copy of the working tree
(the files git would see, so nothing stale of an earlier `build/` sneaks in), installed with
--no-deps into a fresh venv whose dependencies come from this venv's site-packages (a .pth line:
nothing is downloaded, and the checkout is NOT on the path: the editable install's own .pth is not
processed from there), and run from an empty temp directory. Fails (never skips) if it cannot.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = {"controller", "drivers", "models", "hil_tests"}


def _copy_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files of the checkout (symlinks kept as links)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():  # deleted in the working tree
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)


def _ports_below_the_ephemeral_range(n: int) -> list[int]:
    """`n` distinct free ports in 20000-29999 for the demo's public ports. Not from the OS's ephemeral
    range: the rig picks its servers' internal ports there with bind-to-0-and-release, and could be
    handed one of ours again before the demo's controller binds it."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in random.sample(range(20000, 30000), 200):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            with contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port))
                ports.append(port)
                if len(ports) == n:
                    return ports
    raise AssertionError(f"no {n} free ports in 20000-29999")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    _copy_tree(src)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                            str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = out.glob("linesentry-*.whl")
    return whl


def test_the_wheel_ships_the_product_and_the_rig_but_no_test_file(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        demo_config = z.read("hil_tests/rig/demo_line.toml")
        (entry_points,) = [z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")]
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == TOPS
    assert [n for n in names if n.startswith("hil_tests/") and not n.startswith("hil_tests/rig/")] == []
    assert {"hil_tests/rig/cli.py", "hil_tests/rig/demo.py", "hil_tests/rig/scenarios/jam.toml"} <= set(names)
    tests = [n for n in names if re.search(r"(^|/)(test_[^/]*|conftest)\.py$", n) or "node_modules" in n]
    assert tests == []
    # the shipped demo config is the content of configs/demo_line.toml (a symlink in the source tree)
    assert demo_config == (ROOT / "configs" / "demo_line.toml").read_bytes()
    assert re.search(r"^\[linesentry\.cli\]\nrig = hil_tests\.rig\.cli:register$", entry_points, re.M)


def test_an_installed_wheel_runs_the_demo_from_any_directory(wheel, tmp_path):
    venv, run_dir, state_home = tmp_path / "venv", tmp_path / "elsewhere", tmp_path / "xdg-state"
    run_dir.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "linesentry-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, timeout=300)
    env = {**os.environ, "XDG_STATE_HOME": str(state_home), "PYTHONPATH": ""}
    where = subprocess.run([python, "-c", "import controller, hil_tests.rig; "
                            "print(controller.__file__); print(hil_tests.rig.__file__)"],
                           cwd=run_dir, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's code, not the checkout's

    opcua, modbus, api = _ports_below_the_ephemeral_range(3)
    demo = subprocess.run(
        [venv / "bin" / "linesentry", "demo", "--seconds", "12", "--no-live", "--fault-every", "4",
         "--opcua-port", str(opcua), "--modbus-port", str(modbus), "--api-port", str(api)],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "injected fault" in demo.stdout and "demo summary" in demo.stdout, demo.stdout[-3000:]
    state = state_home / "linesentry" / "demo"
    assert (state / "model.npz").is_file() and (state / "demo_line.toml").is_file()
    assert not (site / "hil_tests" / "state").exists() and list(site.rglob("*.npz")) == [], \
        "the demo wrote its state into site-packages (the shipped config's relative state_dir)"
    assert list(run_dir.iterdir()) == []  # and nothing into the directory it ran from
