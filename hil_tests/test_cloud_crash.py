"""kill -9 of the real controller process while it syncs a backlog, restart on the same state dir:
every point either process committed to the outbox is in VictoriaMetrics exactly once.

The controller runs as `python -m hil_tests.cloud_launcher 1.0 <config>` (the real `linesentry run`
with 1 s summary windows) against the simulated plant, and syncs through the fault proxy.

What was committed is read from the outbox's own SQLite file. Rows the sync worker deletes after
a confirmed send would be gone, so before the first start the test adds a trigger to the outbox
database that copies every deleted row into a `sent_archive` table inside the same transaction:
`outbox` + `sent_archive` is then exactly the set of rows ever committed, whatever the moment of
the kill (the controller's code is unchanged; it only sees an extra table and trigger).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from controller.config import load_config
from controller.outbox import DB_NAME, Outbox
from controller.records import decode
from controller.sinks.influxdb import line_protocol
from hil_tests.cloud_support import (
    TOKEN_ENV,
    WINDOW_MS,
    WINDOW_S,
    assert_exactly_once,
    assert_window_coverage,
    cloud_config,
    drain_leftovers,
    expected_samples,
    exported_samples,
    line_ends,
)
from hil_tests.rig.fault_proxy import FaultProxy
from hil_tests.rig.net import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]

ARCHIVE = """
CREATE TABLE sent_archive (id INTEGER PRIMARY KEY, n_points INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TRIGGER archive_deleted AFTER DELETE ON outbox BEGIN
    INSERT INTO sent_archive (id, n_points, body) VALUES (OLD.id, OLD.n_points, OLD.body);
END;
"""


class LateAnswerProxy(FaultProxy):
    """The fault proxy, plus: forward at once but answer `answer_delay` s late. While it waits, the
    server has stored a batch the controller has not been told about (`answering` > 0)."""

    answer_delay = 0.0
    answering = 0

    async def _forward(self, request, body):
        response = await super()._forward(request, body)
        self.answering += 1
        try:
            await asyncio.sleep(self.answer_delay)  # the fault itself: a slow answer
        finally:
            self.answering -= 1
        return response


@pytest.fixture
async def proxy(victoria):
    async with LateAnswerProxy(victoria.url) as p:
        yield p


class OutboxFile:
    """Read-only views of the controller's outbox database, from outside the process."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        Outbox(directory).close()  # the controller's own schema
        self.path = directory / DB_NAME
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.executescript(ARCHIVE)

    def _query(self, sql: str) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=5)) as db:
            return db.execute(sql).fetchall()

    def pending(self) -> list[tuple[int, str]]:
        """(id, body) of the rows still waiting to be sent."""
        return self._query("SELECT id, body FROM outbox ORDER BY id")

    def archived(self) -> list[tuple[int, str]]:
        """(id, body) of the rows deleted after a confirmed send (or a dead-letter move)."""
        return self._query("SELECT id, body FROM sent_archive ORDER BY id")

    def committed(self) -> list[tuple[int, str]]:
        return sorted(self.pending() + self.archived())

    def dead_letters(self) -> int:
        return self._query("SELECT COUNT(*) FROM dead_letter")[0][0]


def lines_of(rows: list[tuple[int, str]]) -> list[str]:
    return [line for _, body in rows for line in line_protocol(decode(body))]


class ControllerProcess:
    """The controller as a child process; output in a log file; never outlives the test."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hil_tests.cloud_launcher", str(WINDOW_S), str(config)],
            cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    async def wait_ready(self, api_port: int, timeout: float = 60.0) -> None:
        """Until /api/v1/status answers with both PLCs connected (fails at once if the process died).

        Not a bound under test: a process start (imports, kernels from numba's cache, two sessions)
        took > 20 s on a 2-core box at load 10."""
        url = f"http://127.0.0.1:{api_port}/api/v1/status"
        state: dict = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
            async def poll() -> None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url) as r:
                        state.update(await r.json())

            deadline = time.monotonic() + timeout
            while not (state.get("plcs") and all(p["state"] == "connected" for p in state["plcs"])):
                died = self.proc.poll()
                assert died is None, f"controller exited ({died}):\n{self.output()}"
                assert time.monotonic() < deadline, f"not ready after {timeout} s:\n{self.output()}"
                await poll()
                await asyncio.sleep(0.05)

    async def signal(self, sig: int, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        await wait_for(lambda: self.proc.poll() is not None, timeout, 0.01, what=f"exit after signal {sig}")
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


async def test_sigkill_while_syncing_then_restart_loses_and_duplicates_nothing(
        tmp_path, rig, model, proxy, victoria, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "test-token")  # inherited by the controller processes
    api_port = free_port()
    # 20 points per request: about one window (16 points) per send, so a backlog takes many sends
    path = cloud_config(tmp_path, rig, model, proxy.url, batch_size=20, api_port=api_port)
    config = load_config(path)
    outbox_dir = tmp_path / "state" / "outbox"
    ob = OutboxFile(outbox_dir)

    def windows() -> list[int]:
        return sorted(line_ends(lines_of(ob.committed())))

    first = ControllerProcess(path, tmp_path / "first.log")
    try:
        await first.wait_ready(api_port)
        await wait_for(lambda: len(line_ends(lines_of(ob.archived()))) >= 2, 10, 0.05,
                       what="two windows synced by the first process")
        # cloud down until a backlog of >= 6 windows has built up
        await proxy.set("status", status=503, message="service unavailable")
        n_before = len(windows())
        await wait_for(lambda: len(line_ends(lines_of(ob.pending()))) >= 6 and len(windows()) >= n_before + 6,
                       15, 0.05, what="a backlog of 6 windows")
        # cloud back, answering 0.3 s late: the backlog drains about one window per request. Kill
        # when at least one batch was confirmed and the next one is stored but not yet confirmed.
        proxy.answer_delay = 0.3
        forwarded = proxy.stats.forwarded
        await proxy.set("pass")
        await wait_for(lambda: proxy.stats.forwarded >= forwarded + 2 and proxy.answering > 0
                       and len(ob.pending()) >= 3, 10, 0.002, what="the first process mid-drain")
        synced_after_restore = proxy.stats.forwarded - forwarded
        assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
    finally:
        first.close()

    # what the killed process committed, and what it had not got confirmed
    at_kill = ob.committed()
    left_at_kill = ob.pending()
    last_id = at_kill[-1][0]
    first_windows = sorted(line_ends(lines_of(at_kill)))
    assert len(left_at_kill) >= 3 and left_at_kill[-1][0] == last_id
    # the batch in flight at the kill: already stored by the server, still in the outbox
    stored = await asyncio.to_thread(exported_samples, victoria)
    unconfirmed_stored = [i for i, body in left_at_kill
                          if expected_samples(lines_of([(i, body)])).keys() <= stored.keys()]
    assert unconfirmed_stored, "no batch was stored-but-unconfirmed at the kill"
    proxy.answer_delay = 0.0

    second = ControllerProcess(path, tmp_path / "second.log")
    try:
        await second.wait_ready(api_port)
        await wait_for(lambda: not ob.pending() or ob.pending()[0][0] > last_id, 15, 0.05,
                       what="the rows the killed process left to be sent")
        await wait_for(lambda: len(windows()) >= len(first_windows) + 3 and not ob.pending(), 15, 0.05,
                       what="three windows of the second process synced")
        assert await second.signal(signal.SIGTERM) == 0, second.output()
    finally:
        second.close()
    flushed = await drain_leftovers(outbox_dir, config.sync)  # the second process's shutdown flush

    rows = ob.committed()
    assert not ob.pending() and ob.dead_letters() == 0
    assert [i for i, _ in rows] == list(range(1, len(rows) + 1)), "outbox row ids are not contiguous"
    committed = lines_of(rows)
    want = expected_samples(committed)
    got = await asyncio.to_thread(exported_samples, victoria)
    assert_exactly_once(want, got)

    # windows: each committed once; contiguous within each process; the gap is the downtime
    ends = line_ends(committed)
    second_windows = sorted(line_ends(lines_of([r for r in rows if r[0] > last_id])))
    assert len(ends) == len(set(ends)), "a window was committed twice"
    for run in (first_windows, second_windows):
        assert all(b - a == WINDOW_MS for a, b in zip(run, run[1:], strict=False)), "a gap in the windows"
    assert second_windows[0] > first_windows[-1]
    assert_window_coverage(got, list(config.tags()), sorted(ends))
    # the rows the killed process never got confirmed were sent by the second process, once
    resent = expected_samples(lines_of(left_at_kill))
    assert resent.keys() <= got.keys()
    assert all(len(got[k]) == 1 for k in resent)

    print(f"\ncrash: first process {len(first_windows)} windows, killed with {len(left_at_kill)} rows "
          f"({sum(len(b.split(chr(10))) for _, b in left_at_kill)} points) unconfirmed, of which row(s) "
          f"{unconfirmed_stored} already stored by the server; {synced_after_restore} request(s) forwarded "
          f"since the cloud came back; second process "
          f"{len(second_windows)} windows (+{flushed} row flushed on SIGTERM); {len(rows)} rows, "
          f"{len(committed)} points, {len(want)} (series, ms) samples, each exported exactly once; "
          f"downtime gap {(second_windows[0] - first_windows[-1]) // WINDOW_MS - 1} windows")

