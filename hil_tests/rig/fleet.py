"""A fleet on one machine: N light simulated lines, each its own `linesentry run` process.

One demo line costs ~0.19 CPU-s/s (docs/fleet.md): ten would saturate the 2-core test machine.
A fleet line here is one small Modbus PLC (`LinePlc`: three float32 process values and a uint16
heartbeat in holding registers, served by pymodbus in the caller's event loop) polled every
`poll_s` (0.5 s), a small model on the three values, no HMI. `line_config` renders one line's TOML:
its own state dir, API port, site/line names, `[sync]` to the one VictoriaMetrics, `[mqtt]` +
`[mqtt.sparkplug]` + `[mqtt.shadow]` to the one broker.

`FleetLine` runs one controller through hil_tests.cloud_launcher (a shorter summary window);
the processes share the numba on-disk cache (NUMBA_CACHE_DIR if set, else the kernels'
__pycache__), so N starts compile once at most. `start_all` starts them in parallel and waits for
every `/readyz`. `ArchivedOutbox` adds triggers to a line's outbox file before the first start,
so every row committed for the cloud and for the Sparkplug sink stays readable afterwards
(what the line committed, whatever was acked and deleted since).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from pymodbus.simulator import SimDevice

from hil_tests.rig.net import free_port
from hil_tests.rig.servers import ModbusSim, holding_device
from hil_tests.rig.sparkplug_host import stored_message

ROOT = Path(__file__).resolve().parents[2]
SITE = "fleet"
TAGS = ("flow", "temp", "pressure")
HEARTBEAT_ADDRESS = 6
TOKEN_ENV = "LINESENTRY_TEST_TOKEN"
FAST_LINK = {"keepalive_s": 2.0, "connect_timeout_s": 1.0, "backoff_initial_s": 0.2, "backoff_cap_s": 0.5}


def line_name(index: int) -> str:
    return f"line{index:02d}"


def values(t: float, seed: int = 0) -> tuple[float, float, float]:
    """The line's process values at time t: slow sines, a deterministic wobble (no noise source needed)."""
    w = math.sin(7.3 * t + seed) * 0.3
    return (50.0 + 5.0 * math.sin(t / 7.0 + seed) + w, 40.0 + 2.0 * math.sin(t / 11.0 + seed) + w,
            120.0 + 10.0 * math.sin(t / 5.0 + seed) + w)


def training_rows(seconds: float = 600.0, step_s: float = 0.5, seed: int = 0):
    """(times, rows) of normal operation for fitting a fleet line's model."""
    import numpy as np

    times = np.arange(0.0, seconds, step_s)
    rng = np.random.default_rng(seed)
    rows = np.array([values(t, seed) for t in times]) + rng.normal(0, 0.2, (len(times), len(TAGS)))
    return times + 1.7e9, rows


def fit_model(config: Path, path: Path, seed: int) -> Path:
    """A model for the fleet line config `config` (every line has the same tags), saved at `path`."""
    from controller.config import load_config
    from models import StreamingDetector

    cfg = load_config(config)
    times, rows = training_rows(seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    StreamingDetector(cfg.detector_tags(), cfg.detector_spec()).fit(rows, times).save(path)
    return path


class LinePlc(ModbusSim):
    """One line's PLC: holding registers 0..5 = three float32 values (ABCD), 6 = the heartbeat."""

    def __init__(self, seed: int = 0, port: int = 0) -> None:
        self.seed, self.port = seed, port or free_port()
        self.reads = 0

    def registers(self) -> list[int]:
        regs: list[int] = []
        for v in values(time.time(), self.seed):
            raw = struct.pack(">f", v)
            regs += [int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")]
        return regs

    async def _action(self, fc: int, start: int, address: int, count: int, regs: list[int],
                      set_values: list | None) -> None:
        if fc == 3 and set_values is None:
            self.reads += 1
            fresh = self.registers()
            regs[0 - start: len(fresh) - start] = fresh
        return None

    def _device(self) -> SimDevice:
        return holding_device(1, [*self.registers(), 0, 0], self._action)


def line_config(directory: Path, index: int, *, plc_port: int, broker_port: int, sync_url: str,
                model: Path, poll_s: float = 0.5, tag_interval_s: float = 1.0,
                registry: Path | None = None) -> Path:
    """One fleet line's TOML in `directory` (state in directory/state, models in state/models;
    `registry`: the [models] registry the shadow fetches a desired model id from)."""
    name = line_name(index)
    state = directory / "state"
    link = "\n".join(f"{k} = {v}" for k, v in FAST_LINK.items())
    tags = "\n".join(f'  [[modbus.tags]]\n  name = "{t}"\n  table = "holding_register"\n  address = {2 * i}\n'
                     f'  dtype = "float32"\n  order = "ABCD"\n' for i, t in enumerate(TAGS))
    text = f"""[controller]
site = "{SITE}"
line = "{name}"
name = "{name}-controller"
state_dir = "{state}"
api_host = "127.0.0.1"
api_port = {free_port()}
log_level = "WARNING"

[[modbus]]
name = "plc"
host = "127.0.0.1"
port = {plc_port}
device_id = 1
timeout_s = 1.0
poll_interval_s = {poll_s}
stale_timeout_s = {max(3.0, 4 * poll_s)}
on_comm_loss = "alarm"
watchdog = {{ tag = "heartbeat", period_s = 1.0, wrap = 65536 }}

{tags}
  [[modbus.tags]]
  name = "heartbeat"
  table = "holding_register"
  address = {HEARTBEAT_ADDRESS}
  dtype = "uint16"
  writable = true

[detector]
model = "{model}"
tags = {json.dumps(list(TAGS))}

  [detector.spec]
  target_far = 0.001
  warmup = 4
  flat_min_seconds = 30.0

[[alarms]]
name = "line_anomaly"
source = "line"
priority = "high"
off_delay_s = 3.0

[[alarms]]
name = "plc_comm_loss"
source = "comm:plc"
priority = "high"

[sync]
url = "{sync_url}"
org = "fleet"
bucket = "linesentry"
token_env = "{TOKEN_ENV}"
batch_size = 500
timeout_s = 2.0
backoff_initial_s = 0.05
backoff_cap_s = 0.5

[mqtt]
broker = "mqtt://127.0.0.1:{broker_port}"
{link}

[mqtt.sparkplug]
tag_interval_s = {tag_interval_s}

[mqtt.shadow]
"""
    if registry is not None:
        text += f'\n[models]\nregistry = "{registry}"\n'
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "line.toml"
    path.write_text(text)
    return path


# cloud rows: route NULL (pending for every non-routed sink: the sync); Sparkplug rows: routed to it
ARCHIVE = """
CREATE TABLE IF NOT EXISTS fleet_cloud_rows (row_id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS fleet_cloud_rows AFTER INSERT ON outbox WHEN NEW.route IS NULL BEGIN
    INSERT OR IGNORE INTO fleet_cloud_rows VALUES (NEW.id, NEW.body);
END;
CREATE TABLE IF NOT EXISTS fleet_sparkplug_rows (row_id INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS fleet_sparkplug_rows AFTER INSERT ON pending WHEN NEW.sink = 'sparkplug' BEGIN
    INSERT OR IGNORE INTO fleet_sparkplug_rows SELECT id, body FROM outbox WHERE id = NEW.row_id;
END;
"""


class ArchivedOutbox:
    """A line's outbox file with the archive triggers (see the module docstring), read from outside."""

    def __init__(self, state_dir: Path) -> None:
        from controller.outbox import DB_NAME, Outbox

        directory = state_dir / "outbox"
        directory.mkdir(parents=True, exist_ok=True)
        Outbox(directory).close()  # the controller's own schema first
        self.path = directory / DB_NAME
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.executescript(ARCHIVE)

    def _query(self, sql: str) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as db:
            return db.execute(sql).fetchall()

    def cloud_lines(self) -> list[str]:
        """The line protocol of every row committed for the cloud, in commit order."""
        from controller.records import decode
        from controller.sinks.influxdb import line_protocol

        return [x for (body,) in self._query("SELECT body FROM fleet_cloud_rows ORDER BY row_id")
                for x in line_protocol(decode(body))]

    def sparkplug_messages(self) -> list[tuple]:
        """(kind, device, timestamp, ((alias, raw value), ...)) of every row stored for Sparkplug."""

        from controller.records import decode

        out = []
        for (body,) in self._query("SELECT body FROM fleet_sparkplug_rows ORDER BY row_id"):
            (record,) = decode(body)
            out.append(stored_message(record))
        return out

    def pending(self, sink: str | None = None) -> int:
        where = "" if sink is None else f" WHERE sink = '{sink}'"
        return self._query(f"SELECT COUNT(*) FROM pending{where}")[0][0]

    def sparkplug_count(self) -> int:
        return self._query("SELECT COUNT(*) FROM fleet_sparkplug_rows")[0][0]

    def cloud_count(self) -> int:
        return self._query("SELECT COUNT(*) FROM fleet_cloud_rows")[0][0]


class FleetLine:
    """One line's `linesentry run` process (via cloud_launcher with `window_s` summary windows)."""

    def __init__(self, config: Path, index: int, window_s: float = 2.0,
                 env: dict[str, str] | None = None) -> None:
        import re

        self.config, self.index, self.window_s = config, index, window_s
        self.name = line_name(index)
        self.port = int(re.search(r"^api_port = (\d+)$", config.read_text(), re.M).group(1))
        self.env = os.environ | {"PYTHONPATH": str(ROOT), TOKEN_ENV: "fleet-token"} | (env or {})
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hil_tests.cloud_launcher", str(self.window_s), str(self.config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.output.append(line)

    def log(self, tail: int = 3000) -> str:
        return "".join(self.output)[-tail:]

    def get(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc and self.proc.returncode}):\n{self.log()}")
        try:
            return bool(self.get("/readyz", 2.0).get("ready"))
        except (OSError, ValueError):  # not listening yet, or 503 while starting / waiting for its PLC
            return False

    def status(self) -> dict[str, Any]:
        return self.get("/api/v1/status")

    def cpu_ticks(self) -> int:
        return proc_ticks(self.proc.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def start_all(lines: list[FleetLine], timeout: float) -> float:
    """Start every line at once and wait (deadline `timeout`) for all /readyz; seconds it took."""
    t0 = time.monotonic()
    for line in lines:
        line.start()
    waiting = list(lines)
    while waiting:
        waiting = [x for x in waiting if not x.ready()]
        if waiting and time.monotonic() - t0 > timeout:
            raise AssertionError(f"{[x.name for x in waiting]} not ready after {timeout} s:\n"
                                 f"{waiting[0].log()}")
        time.sleep(0.2)
    return time.monotonic() - t0


def stop_all(lines: list[FleetLine]) -> None:
    for line in lines:
        if line.proc is not None and line.proc.poll() is None:
            line.proc.terminate()
    for line in lines:
        line.stop()


def proc_ticks(pid: int) -> int:
    """utime + stime of `pid` in clock ticks (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_rss_kib(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    return 0


TICK = os.sysconf("SC_CLK_TCK")


def desired_payload(value: str, version: int, by: str = "fleet-test") -> bytes:
    return json.dumps({"value": value, "version": version, "by": by}).encode()


def shadow_prefix(line: str) -> str:
    return f"linesentry/{SITE}/{line}/shadow"
