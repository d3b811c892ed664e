"""GET /healthz and GET /readyz of a real controller on the simulated plant, over HTTP.

The rule they implement (controller.health, docs/fleet.md): /readyz is 503 while a PLC is down
(before it first delivers, and again when it is lost) and 200 while every PLC delivers; /healthz
stays 200 through all of it, because a restart never repairs a PLC, and turns 503 only when the
housekeeping checks stop running (what the systemd watchdog hears). Neither needs a token, even
where every read does.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp

from controller.api import ApiServer, create_app
from controller.health import Probes
from controller.plc_health import Plc
from hil_tests.rig.controller_run import make_controller, without_model
from hil_tests.rig.net import wait_for
from hil_tests.rig.servers import Rig

TIMEOUT_S = 30.0  # the press's reconnect backoff after it comes back is part of the wait


def tokens_for_reads(text: str) -> str:
    """Reads need a token even on loopback: the probes must not."""
    return text.replace("[controller]\n", "[controller]\napi_require_token_for_reads = true\n", 1)


async def get(http: aiohttp.ClientSession, port: int, path: str) -> tuple[int, dict]:
    async with http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.json()


async def until(http: aiohttp.ClientSession, port: int, path: str, status: int, check=lambda body: True,
                what: str = "") -> dict:
    """Poll `path` until it answers `status` with a body that passes `check`; its body."""
    deadline, last = time.monotonic() + TIMEOUT_S, None
    while time.monotonic() < deadline:
        try:
            last = await get(http, port, path)
        except aiohttp.ClientConnectionError:  # the API is not listening yet
            last = None
        if last is not None and last[0] == status and check(last[1]):
            return last[1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered {status} {what}: last answer {last}")


def press_only(body: dict) -> bool:
    return [w.split(":")[0] for w in body["waiting"]] == ["press"]


async def test_ready_only_while_every_plc_delivers_and_alive_all_along(tmp_path, model):
    async with Rig(opcua_port=0, modbus_port=0) as rig, aiohttp.ClientSession() as http:
        press = rig.gate("press")
        await press.stop_listening()  # the press PLC is down when the controller starts
        controller = make_controller(tmp_path, rig, model, tokens_for_reads)
        task = asyncio.create_task(controller.run())
        try:
            port = await api_port(controller, task)
            await until(http, port, "/healthz", 200)
            assert (await get(http, port, "/api/v1/status"))[0] == 401  # reads need a token here
            body = await until(http, port, "/readyz", 503, press_only, "naming only the press")
            assert body["ready"] is False and body["waiting"][0].startswith("press: ")

            await press.start()  # the press comes up
            body = await until(http, port, "/readyz", 200)
            assert body == {"ready": True, "model": str(model), "waiting": []}

            await press.stop_listening()  # and goes down again
            body = await until(http, port, "/readyz", 503, press_only, "naming only the press")
            for _ in range(5):  # the line is not watched live, but a restart would not help
                status, health = await get(http, port, "/healthz")
                assert (status, health["status"]) == (200, "ok")
                await asyncio.sleep(0.1)
        finally:
            controller.stop()
            await asyncio.wait_for(task, 15)


async def api_port(controller, task: asyncio.Task) -> int:
    """The API's real port, once the start has opened it."""
    deadline = time.monotonic() + TIMEOUT_S
    while controller.api_port == 0:
        assert not task.done(), task.result()
        assert time.monotonic() < deadline, "the API never started"
        await asyncio.sleep(0.05)
    return controller.api_port


async def test_healthz_fails_while_the_housekeeping_checks_fail_and_recovers(tmp_path, monkeypatch):
    """Checks that raise every round (the systemd watchdog stops pinging then) make /healthz 503
    after the liveness bound; once they run again it is 200. The PLCs are on closed ports: the
    line is not ready, which has no bearing on liveness."""
    async with Rig(opcua_port=0, modbus_port=0) as rig, aiohttp.ClientSession() as http:
        await rig.gate("press").stop_listening()
        await rig.gate("conveyor").stop_listening()
        controller = make_controller(tmp_path, rig, None, without_model)
        controller.probes.liveness_s = 1.0  # the unit's 10 s would only make the test slower
        task = asyncio.create_task(controller.run())

        def broken(*_args):
            raise RuntimeError("a bug in a check")

        try:
            port = await api_port(controller, task)
            assert (await until(http, port, "/healthz", 200))["status"] == "ok"
            assert (await get(http, port, "/readyz"))[0] == 503
            monkeypatch.setattr(controller.health, "check", broken)
            wedged = await until(http, port, "/healthz", 503)
            assert wedged["status"] == "wedged" and wedged["housekeeping_age_s"] > 1.0
            monkeypatch.undo()
            assert (await until(http, port, "/healthz", 200))["housekeeping_age_s"] <= 1.0
        finally:
            monkeypatch.undo()
            controller.stop()
            await asyncio.wait_for(task, 15)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_probes_say_starting_until_the_start_is_complete_and_count_liveness_from_there():
    """Pure logic: before `started` both are 503 (a kubelet's startupProbe waits, as systemd waits
    for READY=1); a start without a housekeeping round yet is alive for the liveness bound only;
    from the stop on both are 503 again."""
    clock, plcs = Clock(), list[Plc]()
    probes = Probes(clock, plcs, liveness_s=10.0)
    assert probes.health() == (False, {"status": "starting"})
    assert probes.readiness() == (False, {"ready": False, "waiting": ["start"]})
    probes.started()
    clock.now += 10.0
    assert probes.health()[0] is True
    clock.now += 0.5
    assert probes.health() == (False, {"status": "wedged", "housekeeping_age_s": 10.5})
    probes.beat()
    assert probes.health() == (True, {"status": "ok", "housekeeping_age_s": 0.0})
    assert probes.readiness() == (True, {"ready": True, "model": None, "waiting": []})
    probes.stopping()
    assert probes.health() == (False, {"status": "stopping"})
    assert probes.readiness() == (False, {"ready": False, "waiting": ["stop"]})


async def test_the_probes_answer_on_the_operator_reserve_while_readers_hold_the_other_slots():
    """Idle readers hold every general slot: a read on a reserve connection is 503, the liveness
    probe is not (a flood of readers must not get the controller restarted)."""
    probes = Probes(time.monotonic, [])
    probes.started()
    server = ApiServer(create_app(object(), "t" * 32, probes=probes), "127.0.0.1", 0, max_connections=8,
                       idle_timeout_s=30.0)
    await server.start()
    general = server.max_connections - server.operator_reserve
    loop, flood = asyncio.get_running_loop(), []
    try:
        for _ in range(general):
            flood.append(sock := socket.socket())
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await wait_for(lambda: server.open_connections == general, what="the readers to hold the slots")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            assert (await get(http, server.port, "/api/v1/status"))[0] == 503  # in the reserve
            status, body = await get(http, server.port, "/healthz")
            assert (status, body["status"]) == (200, "ok")
            assert (await get(http, server.port, "/readyz"))[0] == 200
    finally:
        for sock in flood:
            sock.close()
        await server.stop()
