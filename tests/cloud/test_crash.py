"""kill -9 while syncing, restart: every point produced arrives exactly once, nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from hil_tests.rig.net import wait_for
from tests.cloud.helpers import assert_exactly_once, base_end_ns, expected

ROOT = Path(__file__).resolve().parents[2]
WINDOWS, TAGS = 60, 20


class Writer:
    """The crash_writer subprocess, its stdout collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: object) -> Writer:
        env = os.environ | {"LINESENTRY_TEST_TOKEN": "t", "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.cloud.crash_writer", *map(str, args), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().strip())

    def committed(self) -> list[int]:
        return [int(x.split()[1]) for x in self.lines if x.startswith("committed")]

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        await self.proc.wait()
        await self._reader


async def test_sigkill_while_syncing_loses_nothing_and_duplicates_nothing(tmp_path, proxy, victoria):
    base = base_end_ns(WINDOWS)
    outbox_dir = tmp_path / "outbox"
    outbox_dir.mkdir()
    await proxy.set("slow", delay=0.03)  # keep a request in flight most of the time
    first = await Writer.start(outbox_dir, proxy.url, base, 0, WINDOWS, TAGS)
    try:
        await wait_for(lambda: len(first.committed()) >= 20 and proxy.stats.in_flight > 0
                       and proxy.stats.forwarded > 0, 20, 0.001, what="the writer to be mid-send")
        assert first.proc.returncode is None, "writer exited early"
    finally:
        await first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    done = first.committed()
    assert done == list(range(len(done))) and len(done) < WINDOWS
    # everything committed is either already in VictoriaMetrics or still in the outbox; restart
    # from the first window the dead process did not report as committed
    second = await Writer.start(outbox_dir, proxy.url, base, done[-1] + 1, WINDOWS, TAGS)
    try:
        await wait_for(lambda: "drained" in second.lines, 30, what="the restarted writer to drain")
    finally:
        await second.kill(signal.SIGTERM)
    assert_exactly_once(victoria, expected(base, range(WINDOWS), TAGS))
