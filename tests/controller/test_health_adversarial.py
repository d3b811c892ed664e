"""The probes under attack: a client that holds every API connection must not get the controller
restarted by Kubernetes (two failed liveness probes 5 s apart are a restart, and a restart leaves
the line unwatched for a start). Real sockets against a real ApiServer."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from controller.api import ApiServer, create_app
from controller.health import Probes
from hil_tests.rig.controller_run import make_controller, without_model
from hil_tests.rig.net import wait_for
from hil_tests.rig.servers import Rig
from tests.controller.test_health_endpoints import api_port


async def raw_get(port: int, path: str, host: str = "10.42.0.7:8470") -> tuple[int, bytes]:
    """One request as the kubelet sends it (its Host is the pod's IP); (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/1.32\r\n"
                     "Accept: */*\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 3.0)  # the kubelet's timeoutSeconds
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def hold(port: int, n: int) -> list[socket.socket]:
    """`n` connections that never send a byte (a slowloris client's first step)."""
    loop, held = asyncio.get_running_loop(), []
    for _ in range(n):
        held.append(sock := socket.socket())
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
    return held


async def test_probes_still_answer_when_every_connection_is_held_and_silent_ones_flood_over_the_cap():
    probes = Probes(time.monotonic, [])
    probes.started()
    server = ApiServer(create_app(object(), "t" * 32, probes=probes), "127.0.0.1", 0, max_connections=8,
                       idle_timeout_s=30.0)
    await server.start()
    held: list[socket.socket] = []
    try:
        held += await hold(server.port, server.max_connections)  # the general slots and the reserve
        await wait_for(lambda: server.open_connections == server.max_connections, what="every slot held")
        held += await hold(server.port, 40)  # and silent connections over the cap, again and again
        await asyncio.sleep(0.1)
        status, body = await raw_get(server.port, "/healthz")
        assert (status, json.loads(body)["status"]) == (200, "ok")
        status, body = await raw_get(server.port, "/readyz")
        assert (status, json.loads(body)["ready"]) == (200, True)
        assert (await raw_get(server.port, "/api/v1/status"))[0] == 503  # over the cap: still refused
        assert (await raw_get(server.port, "/healthz", host="evil.example"))[0] == 503  # a name: refused
        probes.stopping()
        status, body = await raw_get(server.port, "/healthz")
        assert (status, json.loads(body)["status"]) == (503, "stopping")  # the real answer, not "busy"
    finally:
        for sock in held:
            sock.close()
        await server.stop()


async def test_a_plc_that_answers_only_errors_makes_the_line_not_ready_and_never_not_alive(tmp_path):
    """The press accepts the session and answers every request with a Modbus exception (a PLC in
    fault, a wrong address map): /readyz names it, /healthz stays 200 for many liveness bounds (a
    restart would not repair it), on a real controller over real sockets."""
    async def fault(*_args) -> ExcCodes:
        return ExcCodes.DEVICE_FAILURE

    bits = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
    regs = [SimData(address=0, values=[0] * 32, datatype=DataType.REGISTERS)]
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    faulty = ModbusTcpServer(SimDevice(id=1, simdata=(bits, bits, regs, regs), action=fault),
                             address=("127.0.0.1", port))
    await faulty.serve_forever(background=True)
    async with Rig(opcua_port=0, modbus_port=0) as rig, aiohttp.ClientSession() as http:
        def to_the_faulty_press(text: str) -> str:
            assert f"port = {rig.modbus_port}\n" in text
            return text.replace(f"port = {rig.modbus_port}\n", f"port = {port}\n")

        controller = make_controller(tmp_path, rig, None, without_model, to_the_faulty_press)
        controller.probes.liveness_s = 0.5  # the unit's 10 s would only make the test slower
        task = asyncio.create_task(controller.run())
        try:
            port_api = await api_port(controller, task)
            deadline = time.monotonic() + 30.0
            while True:  # the conveyor delivers; only the press keeps the line not ready
                async with http.get(f"http://127.0.0.1:{port_api}/readyz") as r:
                    ready = (r.status, await r.json())
                if ready[0] == 503 and [w.split(":")[0] for w in ready[1]["waiting"]] == ["press"]:
                    break
                assert time.monotonic() < deadline, f"/readyz never named only the press: {ready}"
                await asyncio.sleep(0.1)
            for _ in range(30):  # 3 s: six liveness bounds
                async with http.get(f"http://127.0.0.1:{port_api}/healthz") as r:
                    assert (r.status, (await r.json())["status"]) == (200, "ok")
                async with http.get(f"http://127.0.0.1:{port_api}/readyz") as r:
                    assert r.status == 503
                await asyncio.sleep(0.1)
        finally:
            controller.stop()
            await asyncio.wait_for(task, 15)
            await faulty.shutdown()
