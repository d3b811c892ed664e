"""configs/linesentry@.service: `systemd-analyze verify` is clean, `systemd-analyze security`
scores it at most 3.5, and what the service needs to do its job is still allowed.

Both run offline on a temporary root (`--root`): the unit in its /etc/systemd/system, the host's
system units (sysinit.target & co.) in its /usr/lib/systemd/system, and an executable at the
ExecStart path, so verify checks the unit and not this machine's /opt. That the ExecStart
command line itself works is checked on the installed console script (`linesentry run --help`).
Neither needs systemd running (this machine has no systemd as PID 1).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "configs" / "linesentry@.service"
INSTANCE = "linesentry@line1.service"
HOST_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 3.5


def settings(text: str) -> dict[str, list[str]]:
    """key -> every value it is given (systemd keys may repeat), comments and sections dropped."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def analyze(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze is missing: apt-get install systemd"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def root(tmp_path) -> Path:
    """A filesystem root holding the unit as shipped, the system units and the ExecStart binary."""
    assert (HOST_UNITS / "sysinit.target").exists(), f"no systemd units in {HOST_UNITS}"
    units = tmp_path / "usr/lib/systemd/system"
    shutil.copytree(HOST_UNITS, units, symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system" / UNIT.name)
    binary = settings(UNIT.read_text())["ExecStart"][0].split()[0]
    stub = tmp_path / binary.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    return tmp_path


def verify(root: Path) -> subprocess.CompletedProcess:
    return analyze("verify", f"--root={root}", "--man=no", "--generators=no", INSTANCE)


def test_systemd_analyze_verify_is_clean(root):
    done = verify(root)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_verify_would_report_a_broken_unit(root):
    """The check above can fail: a misspelt key and a bad value are reported (exit 0, so the
    test asserts on the output too)."""
    unit = root / "etc/systemd/system" / UNIT.name
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus\nProtecHome=true"))
    report = verify(root).stderr
    assert "bogus" in report and "ProtecHome" in report


def test_the_exec_start_command_line_runs():
    binary, *args = settings(UNIT.read_text())["ExecStart"][0].split()
    assert Path(binary).name == "linesentry" and args[0] == "run"  # the console script of pyproject
    script = Path(sys.executable).with_name("linesentry")
    done = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_security_exposure_is_at_most_3_5_and_the_service_can_still_work(root):
    done = analyze("security", "--offline=true", f"--root={root}", INSTANCE)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert score, done.stdout + done.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE, done.stdout

    checks = json.loads(analyze("security", "--offline=true", f"--root={root}", "--json=short",
                                INSTANCE).stdout)
    restricted = {c["name"]: c["set"] for c in checks}
    # What the job needs stays allowed: TCP to PLCs and the cloud, sd_notify over AF_UNIX,
    # numba's JIT (writable+executable memory).
    assert restricted["RestrictAddressFamilies=~AF_(INET|INET6)"] is False
    assert restricted["RestrictAddressFamilies=~AF_UNIX"] is False
    assert restricted["MemoryDenyWriteExecute="] is False
    # What it does not need is taken away.
    for name in ("RestrictAddressFamilies=~AF_PACKET", "RestrictAddressFamilies=~AF_NETLINK",
                 "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
                 "CapabilityBoundingSet=~CAP_SYS_ADMIN",
                 "NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateDevices=",
                 "SystemCallFilter=~@privileged", "PrivateTmp="):
        assert restricted[name] is True, name


def test_the_unit_is_notify_with_a_watchdog_and_writes_only_its_own_directories():
    unit = settings(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["10s"]
    assert unit["StateDirectory"] == ["linesentry/%i"] and unit["ProtectSystem"] == ["strict"]
    assert "ReadWritePaths" not in unit  # one line's service cannot write another line's state
    assert unit["Environment"] == ["PYTHONFAULTHANDLER=1", "NUMBA_CACHE_DIR=%C/linesentry/%i/numba"]
    assert unit["CacheDirectory"] == ["linesentry/%i"]
