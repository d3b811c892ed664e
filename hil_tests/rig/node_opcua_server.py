"""An OPC UA server from an independent stack (node-opcua, Node.js) in a subprocess, freezable with SIGSTOP.

Its address space (namespace urn:linesentry:test, Objects/Plant/Line1/<Name>, node ids s=Line1.<Name>)
is the one of the asyncua test server in tests/drivers/opcua_server.py, so the driver conformance
suite runs against both stacks; benchmarks/opcua_latency.py measures against it too. It lives in the
rig (not the test tree) so benchmarks can start it; the npm package is not part of the wheel.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

SERVER_URI = "urn:linesentry:test-server"  # the application URI both test servers announce
NODE_OPCUA_DIR = Path(__file__).with_name("node_opcua")


class NodeOpcuaServer:
    """The node-opcua server (node_opcua/server.js next to this module) in a subprocess.

    Needs `npm ci --prefix hil_tests/rig/node_opcua` (`make node-opcua`; make test runs it); start()
    FAILS when node or the package is missing, it never skips.
    """

    __test__ = False
    name = "node-opcua"

    def __init__(self, port: int, limits: int = 0, secure: dict | None = None) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/linesentry/"
        self.limits, self.secure = limits, secure
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> NodeOpcuaServer:
        opts = {"port": self.port, "limits": self.limits, "applicationUri": SERVER_URI}
        if self.secure is not None:
            opts["secure"] = self.secure
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(NODE_OPCUA_DIR / "server.js"), json.dumps(opts), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(60):
                while not (line := await self.proc.stdout.readline()).startswith(b"READY"):
                    if not line:
                        err = (await self.proc.stderr.read()).decode(errors="replace")
                        raise RuntimeError(f"node-opcua test server did not start (did `npm ci --prefix "
                                           f"{NODE_OPCUA_DIR}` run?): {err.strip()[-2000:]}")
        except BaseException:
            await self.stop()
            raise
        return self

    async def set_value(self, name: str, value: Any) -> None:
        self.proc.stdin.write(json.dumps({"set": name, "value": value}).encode() + b"\n")
        await self.proc.stdin.drain()
        while (line := await self.proc.stdout.readline()) != b"OK\n":
            if not line:
                raise RuntimeError("node-opcua test server exited")

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets open and answers nothing (a hung PLC)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            await proc.wait()

    async def restart(self) -> NodeOpcuaServer:
        await self.stop()
        return await self.start()
