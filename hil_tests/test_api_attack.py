"""The API cannot starve the line: 1,100 idle connections against the real controller.

The controller runs as the service does (`linesentry run`, its own process) with an open-file
limit of 1,024 that it cannot raise (soft = hard), against the simulated plant. Before the
connection cap, this attack took every descriptor: the API went dark, the press PLC could not
reconnect (so the safe state stopped the line) and the loop spun logging `socket.accept() out
of system resource`. Now, while the attacker keeps 1,100 connections open (re-opening every
one the controller closes), PLC data keeps flowing, a jam still stops the line, the press
reconnects after its sessions are cut, and the API serves again as soon as the attack ends.
"""

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from hil_tests.rig.controller_run import config_for_rig
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.net import free_port, wait_for

ATTACK_CONNECTIONS = 1_100
FD_LIMIT = 1_024
LINESENTRY = Path(sys.executable).with_name("linesentry")


class Attacker:
    """Holds `n` idle TCP connections to `port`, re-opening each one the server closes."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.sockets: list[socket.socket] = []
        self.reopened = 0
        self.peak = 0  # most connections open at once
        self._task: asyncio.Task | None = None

    async def _open(self) -> socket.socket | None:
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", self.port)), 2.0)
            return s
        except (OSError, TimeoutError):
            s.close()
            return None

    async def _top_up(self) -> None:
        missing = self.n - len(self.sockets)
        for start in range(0, missing, 100):
            opened = await asyncio.gather(*(self._open() for _ in range(min(100, missing - start))))
            self.sockets += [s for s in opened if s is not None]
        self.peak = max(self.peak, len(self.sockets))

    def _drop_closed(self) -> None:
        alive = []
        for s in self.sockets:
            try:
                closed = s.recv(4096) == b""  # data (the 503) is read and the socket checked again
                if not closed:
                    closed = s.recv(4096) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                s.close()
                self.reopened += 1
            else:
                alive.append(s)
        self.sockets = alive

    PERIOD_S = 1.0  # how often the attacker re-opens what the server closed (an attack rate, not a wait)

    async def _run(self) -> None:
        while True:
            self._drop_closed()
            await self._top_up()
            await asyncio.sleep(self.PERIOD_S)

    async def __aenter__(self) -> "Attacker":
        await self._top_up()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for s in self.sockets:
            s.close()


def _limit_fds() -> None:  # in the controller's process, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_idle_connections_cannot_starve_the_line(tmp_path, rig, model):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < ATTACK_CONNECTIONS + 512:  # the attacker (this process) needs the descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    config = config_for_rig(rig, tmp_path / "state", model, tmp_path / "line.toml")
    config.write_text(config.read_text().replace("api_port = 8470", f"api_port = {port}"))
    log_path = tmp_path / "controller.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([str(LINESENTRY), "run", str(config)], stdout=log_file,
                                stderr=subprocess.STDOUT, preexec_fn=_limit_fds)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            async def plcs_connected() -> bool:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    status = await (await http.get(f"{base}/api/v1/status")).json()
                    return all(p["state"] == "connected" for p in status["plcs"])
                return False

            deadline = time.monotonic() + 30
            while not await plcs_connected():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the controller did not connect to both PLCs"
                await asyncio.sleep(0.2)

            async with Attacker(port, ATTACK_CONNECTIONS) as attack:
                assert len(attack.sockets) >= ATTACK_CONNECTIONS * 0.9
                cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()

                # PLC data keeps flowing: heartbeats reach both PLCs while the attack holds.
                beats = len(rig.recorder.heartbeats)
                await wait_for(lambda: {h.server for h in rig.recorder.heartbeats[beats:]}
                               >= {"conveyor", "press"} and len(rig.recorder.heartbeats) >= beats + 6,
                               timeout=10,
                               what="heartbeats to both PLCs under attack")

                # A jam still stops the line (detector -> alarm -> action -> OPC UA write).
                rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=5.0))
                await wait_for(lambda: rig.plant.line_stop, timeout=15, what="the jam to stop the line")
                stop = next(w for w in rig.recorder.writes if w.actuator == "line_stop")
                assert stop.server == "conveyor" and stop.value == 1.0

                # The press PLC can open a new session: cut its connections and see it back.
                gate = rig.gate("press")
                sessions = gate.connections
                gate.drop_connections()
                await wait_for(lambda: gate.connections > sessions, timeout=10, what="the press to reconnect")
                after = time.monotonic()
                await wait_for(lambda: any(h.server == "press" and h.mono > after
                                           for h in rig.recorder.heartbeats), timeout=10,
                               what="a heartbeat on the new press session")
                busy = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
                held, reopened = attack.peak, attack.reopened
                assert proc.poll() is None

            # The attack is over: the API answers again.
            deadline = time.monotonic() + 20
            while not await plcs_connected():
                assert time.monotonic() < deadline, "the API did not come back after the attack"
                await asyncio.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    log = log_path.read_text()
    print(f"\nattack: up to {held} connections open at once, {reopened} re-opened after the controller "
          "closed them; "
          f"controller CPU {busy:.2f} s/s under attack")
    assert rc == 0, log
    assert "out of system resource" not in log
    limit_lines = [line for line in log.splitlines() if "API connection limit" in line]
    assert 1 <= len(limit_lines) <= 5, limit_lines  # said once a minute, not per connection
    assert "Error handling request" not in log  # aiohttp: no request failed with a traceback
