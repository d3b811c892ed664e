"""An acknowledged operator request is on disk before its 200: kill -9 the real `linesentry run`
right after the answer, restart it on the same state dir, and the change is still there.

The controller is a child process (`linesentry run` on the demo config pointed at the simulated
plant of this test); each request below is followed at once by SIGKILL, a restart and a check.
Without the fsync before the answer the state was saved up to one housekeeping round (50 ms)
later, and a kill in between brought the old state back (the issue: 6 of 10 restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from hil_tests.rig.controller_run import config_for_rig
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.net import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-c", "from controller.cli import app; app(prog_name='linesentry')"]
ROUNDS = 1  # bounded: each round is 4 requests (one of each kind), 4 kills and 4 restarts


class Service:
    """`linesentry run CONFIG` as a child process, its API, and kill -9."""

    def __init__(self, config: Path, state_dir: Path, api_port: int, log: Path) -> None:
        self.config, self.base, self.log = config, f"http://127.0.0.1:{api_port}/api/v1", log
        self.state_dir = state_dir
        self.token = ""
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.starts += 1
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*LAUNCH, "run", str(self.config)], cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, env=os.environ | {"PYTHONPATH": str(ROOT)})
        state: dict = {}

        async def connected() -> bool:
            assert self.proc.poll() is None, f"the controller exited:\n{self.log.read_text()[-2000:]}"
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{self.base}/status", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    state.update(await r.json())
            return bool(state.get("plcs")) and all(p["state"] == "connected" for p in state["plcs"])

        deadline = time.monotonic() + 30
        while not await connected():
            assert time.monotonic() < deadline, f"not ready after 30 s:\n{self.log.read_text()[-2000:]}"
            await asyncio.sleep(0.05)
        self.token = (self.state_dir / "api-engineer-token").read_text().strip()  # reset, inhibit too

    async def post_then_kill(self, http: aiohttp.ClientSession, path: str, body: dict) -> dict:
        async with http.post(f"{self.base}{path}", json={"user": "ann", **body},
                             headers={"Authorization": f"Bearer {self.token}"}) as r:
            answer = await r.json()
            status = r.status
        self.proc.send_signal(signal.SIGKILL)  # right after the 200: nothing else runs in between
        assert status == 200, answer
        await wait_for(lambda: self.proc.poll() is not None, 10, what="the controller to die")
        assert self.proc.returncode == -signal.SIGKILL
        return answer

    async def get(self, http: aiohttp.ClientSession, path: str):
        async with http.get(f"{self.base}{path}") as r:
            return await r.json()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def action(status: dict, name: str) -> dict:
    return next(a for a in status["actions"] if a["name"] == name)


def alarm(alarms: list[dict], name: str) -> dict:
    return next(a for a in alarms if a["name"] == name)


async def test_operator_requests_survive_kill_9_right_after_the_200(tmp_path, rig, model):
    api_port = free_port()
    path = config_for_rig(rig, tmp_path / "state", model, tmp_path / "line.toml")
    path.write_text(path.read_text().replace("api_port = 8470", f"api_port = {api_port}"))
    service = Service(path, tmp_path / "state", api_port, tmp_path / "controller.log")
    checked: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            await service.start(http)
            # a latched line stop to reset: a jam on the running line
            rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=3.0))
            await wait_for(lambda: rig.plant.line_stop, 15, what="the jam to stop the line")
            deadline = time.monotonic() + 10
            while not action(await service.get(http, "/status"), "stop_line")["latched"]:
                assert time.monotonic() < deadline, "stop_line did not latch"
                await asyncio.sleep(0.05)

            steps = [("/actions/stop_line/reset", {"reason": "jam cleared"},
                      lambda s, a: not action(s, "stop_line")["latched"], "reset")]
            for _ in range(ROUNDS):
                steps += [
                    ("/actions/stop_line/inhibit", {"enabled": True, "reason": "belt work"},
                     lambda s, a: action(s, "stop_line")["inhibited"], "inhibit"),
                    ("/actions/stop_line/inhibit", {"enabled": False},
                     lambda s, a: not action(s, "stop_line")["inhibited"], "un-inhibit"),
                    ("/alarms/line_anomaly/shelve", {"seconds": 600, "reason": "tuning"},
                     lambda s, a: alarm(a, "line_anomaly")["state"] == "SHELVED", "shelve"),
                    ("/alarms/line_anomaly/unshelve", {},
                     lambda s, a: alarm(a, "line_anomaly")["state"] != "SHELVED", "unshelve"),
                ]
            for request, body, survived, name in steps:
                await service.post_then_kill(http, request, body)
                await service.start(http)
                status, alarms = await service.get(http, "/status"), await service.get(http, "/alarms")
                assert survived(status, alarms), f"{name} lost by kill -9 right after its 200: {status}"
                checked.append(name)
    finally:
        service.close()
    assert len(checked) == 1 + 4 * ROUNDS
    print(f"\n{len(checked)} requests, each answered 200, then kill -9 and a restart "
          f"({service.starts} starts): every change survived ({', '.join(checked)})")
