"""How fast the `linesentry` command answers and how much memory it takes (a measurement, printed).

    .venv/bin/python -m benchmarks.cli_timing [--runs 7] [--json out.json]

Issue 13's targets on this machine: the operator commands (status, alarms, ack, shelve, events)
<= 0.35 s wall, `validate` <= 1 s. Each command is what the console script runs, in a new process each
time; the figures are the median (and max) wall time and peak RSS
(`ru_maxrss` of that process) over N runs, after one warm-up run; CPU time (user + system) is
printed too, as it depends less on what else the machine runs. Bytecode is cached outside the tree
(PYTHONPYCACHEPREFIX), as in an installed wheel. The operator commands talk to a real controller
(`linesentry run`) that this script starts on free ports with a throw-away config whose one Modbus
PLC answers nowhere: its comm-loss alarm is active, so `ack` and `shelve` have an alarm to act on.
Then the 10 modules that cost the most import time (self time, `python -X importtime`) of
`from controller.config import load_config` (the whole schema, what `validate` loads) and
`import controller.cli`.
The load average is printed: the machine is shared, so compare figures taken under similar load;
the runs are interleaved and two baselines run in the same rounds (an empty interpreter, and the
floor every typer 0.29 command pays: typer plus the pydantic TypeAdapters it coerces parameters
with), so the `/floor` ratio (CPU) is the figure to compare across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the `linesentry` console script runs, in a new interpreter whose first import path is the
# checkout being measured (--root: e.g. an exported older commit, for before/after figures).
CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'linesentry'; from controller.cli import app; "
       "sys.exit(app())"]
# Baselines run in the same rounds: an empty interpreter, and what any command of typer 0.29
# imports before it parses an argument (typer coerces every parameter with pydantic TypeAdapters)
BASELINES = {"python -c pass": "pass", "floor: typer + pydantic": "import typer, typer._adapters"}
HEAVY = ("numba", "scipy", "sklearn", "asyncua", "pymodbus", "influxdb_client")

BENCH_CONFIG = """\
[controller]
site = "bench"
line = "bench-line"
state_dir = "{state}"
api_port = {api_port}

[[modbus]]
name = "press"
host = "127.0.0.1"
port = {plc_port}
timeout_s = 0.2
poll_interval_s = 0.5

  [[modbus.tags]]
  name = "pressure"
  table = "input_register"
  address = 0
  dtype = "uint16"

[[alarms]]
name = "press_comm"
source = "comm:press"
priority = "high"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(pycache: Path) -> dict[str, str]:
    """The environment of every measured process: bytecode cached (in `pycache`, outside the tree), as
    in an installed wheel, even where PYTHONDONTWRITEBYTECODE is set; otherwise every run would
    also time compiling the project's sources."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(pycache), "COLUMNS": "120"}


def run_once(argv: list[str], root: Path, env: dict[str, str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds (user + system), peak RSS MiB, exit code) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, proc.returncode


def measure(commands: dict[str, list[str]], runs: int, root: Path, env: dict[str, str]) -> dict:
    """Figures per command. The runs are interleaved (round robin over the commands), so a change
    of the machine's speed during the measurement (this shared box varies up to 2x within
    minutes) weighs on every command alike and the ratios to the baselines stay meaningful."""
    for argv in commands.values():
        run_once(argv, root, env)  # warm-up: fills the bytecode cache, as an install does
    samples: dict[str, list] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(run_once(argv, root, env))
    out = {}
    for name, rows in samples.items():
        walls, cpus, rss, codes = zip(*rows, strict=True)
        out[name] = {"wall_s_median": statistics.median(walls), "wall_s_max": max(walls),
                     "cpu_s_median": statistics.median(cpus), "rss_mib_median": statistics.median(rss),
                     "exit_codes": sorted(set(codes))}
    return out


def import_offenders(statement: str, root: Path, env: dict[str, str], top: int = 10) -> dict:
    """Seconds `statement` takes to import (its own clock) and the `top` modules by self time."""
    code = (f"import time, sys; t = time.perf_counter(); {statement}; t = time.perf_counter() - t; "
            f"print(t); print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    subprocess.run([sys.executable, "-c", code], cwd=root, env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, cwd=root, env=env, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line.removeprefix("import time:").split("|")
        rows.append((int(self_us), name.strip()))
    seconds, heavy = proc.stdout.splitlines()
    return {"total_s": float(seconds), "heavy_loaded": [m for m in heavy.split(",") if m],
            "top_self": [(name, us / 1e6) for us, name in sorted(rows, reverse=True)[:top]]}


def wait_api(port: int, service: subprocess.Popen, log, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"`linesentry run` exited: {log.read().strip()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the controller did not answer on port {port} within {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (median reported)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    args = parser.parse_args()
    root = args.root.resolve()
    pycache = Path(tempfile.mkdtemp(prefix="cli-timing-pycache-"))
    env = child_env(pycache)

    results: dict = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "runs": args.runs,
                     "imports": {}}
    with tempfile.TemporaryDirectory() as tmp:
        api_port = free_port()
        config = Path(tmp) / "bench.toml"
        config.write_text(BENCH_CONFIG.format(state=Path(tmp) / "state", api_port=api_port,
                                              plc_port=free_port()))
        log = (Path(tmp) / "service.log").open("w+")
        service = subprocess.Popen([*CLI, "run", str(config), "--log-level", "ERROR"],
                                   stdout=subprocess.DEVNULL, stderr=log, cwd=root, env=env)
        try:
            wait_api(api_port, service, log)
            c = str(config)
            commands = {name: [sys.executable, "-c", code] for name, code in BASELINES.items()}
            commands |= {name: [*CLI, *argv] for name, argv in (
                ("version", ["version"]), ("status", ["status", c]), ("alarms", ["alarms", c]),
                ("events", ["events", c]), ("ack", ["ack", c, "press_comm"]),
                ("shelve", ["shelve", c, "press_comm", "--for", "1h", "--reason", "bench"]),
                ("validate bench", ["validate", c]),
                ("validate demo_line", ["validate", "configs/demo_line.toml"]))}
            results["commands"] = measure(commands, args.runs, root, env)
        finally:
            service.terminate()
            service.wait(timeout=30)
            log.close()
    # what `validate` needs (the whole schema) and what every command needs (the CLI)
    for statement in ("from controller.config import load_config", "import controller.cli"):
        results["imports"][statement] = import_offenders(statement, root, env)
    shutil.rmtree(pycache, ignore_errors=True)

    load = ", ".join(f"{x:.2f}" for x in results["load_average"])
    print(f"linesentry CLI timing: {args.runs} runs per command, {results['cpus']} CPUs, load {load}")
    print(f"{'command':<24} {'wall median':>12} {'wall max':>9} {'CPU median':>11} {'/floor':>7} "
          f"{'RSS median':>11}  exit")
    floor = results["commands"]["floor: typer + pydantic"]["cpu_s_median"]
    for name, r in results["commands"].items():
        codes = ",".join(map(str, r["exit_codes"]))
        print(f"{name:<24} {r['wall_s_median']:>10.3f} s {r['wall_s_max']:>7.3f} s "
              f"{r['cpu_s_median']:>9.3f} s {r['cpu_s_median'] / floor:>6.2f}x "
              f"{r['rss_mib_median']:>7.1f} MiB  {codes}")
    for statement, r in results["imports"].items():
        print(f"\n{statement}: {r['total_s']:.3f} s; heavy modules loaded: "
              f"{', '.join(r['heavy_loaded']) or 'none'}; most self time (python -X importtime):")
        for name, seconds in r["top_self"]:
            print(f"  {seconds * 1000:8.1f} ms  {name}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
