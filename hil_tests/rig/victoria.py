"""A throwaway VictoriaMetrics server (Debian's `victoria-metrics`) as a stand-in for InfluxDB.

The rig's cloud: the cloud-sync tests, the HIL outage tests and benchmarks/outbox_drain.py start it.

It accepts InfluxDB line protocol on /api/v2/write; `{measurement}_{field}` becomes the metric
name and tags become labels (string fields are stored as 0). Started with:

- ``-httpListenAddr=127.0.0.1:<free port>`` and ``-storageDataPath=<tmp dir>``: local and private.
- ``-dedup.minScrapeInterval=1ms``: keep one sample per series and ms, so a resent point
  overwrites itself the way InfluxDB overwrites a point with the same series and timestamp
  (without it VictoriaMetrics stores and exports both copies). The price: like InfluxDB for
  equal timestamps, but at ms rather than ns resolution.
- ``-retentionPeriod=100y``: test data may carry any timestamp without being dropped.
- ``-loggerLevel=ERROR``: keep test output quiet.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from hil_tests.rig.net import free_port
from hil_tests.rig.processes import end_process

ENV_BINARY = "LINESENTRY_VICTORIA_BIN"
FLAGS = ("-dedup.minScrapeInterval=1ms", "-retentionPeriod=100y", "-loggerLevel=ERROR")


class VictoriaMissing(RuntimeError):
    """The binary is not installed; the message says how to install it."""


def find_binary() -> str:
    """The victoria-metrics binary, or a one-line error saying how to install it."""
    path = os.environ.get(ENV_BINARY) or shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not Path(path).is_file():
        raise VictoriaMissing(f"victoria-metrics binary not found ({path}); install it with "
                              f"`apt-get install -y victoria-metrics` or set {ENV_BINARY}")
    return path


class VictoriaMetrics:
    """Start/stop one server; read back with `export` (blocking: VM is not behind the test loop)."""

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> VictoriaMetrics:
        binary = find_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.data_dir.parent / f"victoria-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.data_dir}", *FLAGS],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:  # readiness poll with a deadline
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.proc.returncode}; "
                                   f"see {self._log.name}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"victoria-metrics not ready on {self.url} after {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        end_process(self.proc)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> VictoriaMetrics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self) -> VictoriaMetrics:
        """Stop (a clean stop writes everything to disk) and start again on the same port and data.

        For a read-back that must see every stored sample: VictoriaMetrics 1.79 can leave a series
        created in the last few seconds out of the answer to a query it has answered before (its
        tag-filters cache; measured: up to ~5 s, while a query with another filter saw the series).
        A fresh process has no such cache."""
        self.stop()
        return self.start()

    def flush(self) -> None:
        """Make everything ingested so far visible to queries."""
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=10) as r:
            r.read()

    def export(self, match: str = '{__name__=~"linesentry_.*"}') -> list[dict]:
        """All raw samples of matching series: [{"metric": {...}, "values": [...], "timestamps": [...]}]."""
        self.flush()
        # An explicit `end` (an hour ahead): without it VictoriaMetrics leaves out the newest
        # samples and any stamped in the future (a window flushed at shutdown carries its END).
        query = urllib.parse.urlencode({"match[]": match, "start": "0", "end": str(int(time.time()) + 3600)})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def samples(self, match: str = '{__name__=~"linesentry_.*"}') -> dict[tuple, list[tuple[int, float]]]:
        """{(name, sorted labels...): [(timestamp_ms, value), ...]} — count by series and timestamp."""
        out: dict[tuple, list[tuple[int, float]]] = {}
        for s in self.export(match):
            m = dict(s["metric"])
            key = (m.pop("__name__"), *sorted(m.items()))
            out.setdefault(key, []).extend(zip(s["timestamps"], s["values"], strict=True))
        return out


@contextlib.contextmanager
def running_victoria(data_dir: Path) -> Iterator[VictoriaMetrics]:
    """A started VictoriaMetrics, stopped on exit; VictoriaMissing (a test using it FAILS, never
    skips) if the binary is not installed."""
    vm = VictoriaMetrics(data_dir).start()
    try:
        yield vm
    finally:
        vm.stop()
