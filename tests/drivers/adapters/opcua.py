"""Conformance adapter of the OPC UA plugin: the asyncua server and node-opcua (independent)."""

import socket

from asyncua import Client

from drivers.errors import CertificateUntrusted
from drivers.opcua.security import create_client_certificate
from hil_tests.rig.net import free_port
from hil_tests.rig.node_opcua_server import NodeOpcuaServer
from tests.drivers.adapters import PermanentCase
from tests.drivers.opcua_server import NS_URI, SecureOptions, TestServer, make_server_certificate

CLIENT_URI = "urn:linesentry:test-client"


def nsu(name: str) -> str:
    return f"nsu={NS_URI};s=Line1.{name}"


class OpcUaAdapter:
    plugin = "opcua"
    servers = ("asyncua", "node-opcua")
    expected = {"temp": 21.5, "press": 1.25, "count": 7.0, "running": 1.0, "numeric": 99.0}
    bad_tag = "broken"
    write = ("setpoint", 12.5)
    read_only_tag = "count"

    async def start(self, kind: str):
        cls = TestServer if kind == "asyncua" else NodeOpcuaServer
        return await cls(free_port()).start()

    def config(self, server) -> dict:
        tags = [{"name": "temp", "node": nsu("Temperature")},
                {"name": "press", "browse_path": ["0:Objects", f"{NS_URI}:Plant", f"{NS_URI}:Line1",
                                                  f"{NS_URI}:Pressure"]},
                {"name": "count", "node": nsu("Count")}, {"name": "running", "node": nsu("Running")},
                {"name": "numeric", "node": f"nsu={NS_URI};i=4242"},
                {"name": "broken", "node": nsu("Broken")},
                {"name": "setpoint", "node": nsu("Setpoint"), "writable": True}]
        return {"name": "dut", "endpoint": server.endpoint, "timeout_s": 2.0, "tags": tags,
                "groups": [{"name": "default", "publishing_interval_ms": 50}]}

    def dead_config(self, port: int) -> dict:
        return {"name": "dead", "endpoint": f"opc.tcp://127.0.0.1:{port}/", "timeout_s": 0.5,
                "tags": [{"name": "x", "node": nsu("Temperature")}]}

    async def read_independently(self, server, tag: str) -> float:
        assert tag == "setpoint"
        async with Client(server.endpoint, timeout=5) as client:
            ns = await client.get_namespace_index(NS_URI)
            return float(await client.get_node(f"ns={ns};s=Line1.Setpoint").read_value())

    async def permanent_cases(self, tmp_path) -> list[PermanentCase]:
        """A secure server that does not trust our client certificate, and one whose certificate
        we were told not to trust (no pin, trust_server_certificate = false)."""
        server_cert, server_key = make_server_certificate(tmp_path)
        host = socket.gethostname()
        create_client_certificate(tmp_path / "trusted.der", tmp_path / "trusted.pem", CLIENT_URI, host)
        create_client_certificate(tmp_path / "stranger.der", tmp_path / "stranger.pem", CLIENT_URI, host)
        server = await TestServer(free_port(), secure=SecureOptions(
            server_cert, server_key, trusted_client_certs=[tmp_path / "trusted.der"])).start()
        base = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}
        stranger = {**base, "client_certificate": tmp_path / "stranger.der",
                    "client_private_key": tmp_path / "stranger.pem", "server_certificate": server_cert}
        unpinned = {**base, "client_certificate": tmp_path / "trusted.der",
                    "client_private_key": tmp_path / "trusted.pem"}
        table = {"name": "dut", "endpoint": server.endpoint, "timeout_s": 2.0,
                 "tags": [{"name": "temp", "node": nsu("Temperature")}]}
        return [PermanentCase(server, {**table, "security": stranger}, CertificateUntrusted),
                PermanentCase(None, {**table, "security": unpinned}, CertificateUntrusted)]
