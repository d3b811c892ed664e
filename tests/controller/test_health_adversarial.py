"""The probes under attack: a client that holds every API connection must not get the controller
restarted by Kubernetes (two failed liveness probes 5 s apart are a restart, and a restart leaves
the line unwatched for a start). Real sockets against a real ApiServer."""

from __future__ import annotations

import asyncio
import json
import socket
import time

from controller.api import ApiServer, create_app
from controller.health import Probes
from hil_tests.rig.net import wait_for


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
