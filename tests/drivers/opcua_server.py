"""Real OPC UA servers for driver tests, with one address space and one handle interface.

`TestServer`: an asyncua server in this process: typed variables, a Bad and an Uncertain node,
a String, an array, a node with EURange, optional OperationLimits (published AND enforced:
BadTooManyOperations above them), optional Basic256Sha256 SignAndEncrypt with a trusted client
certificate, optional username/password, and stop/restart on the same port (optionally with
extra namespaces registered first, so indexes shift).

`NodeOpcuaServer` (re-exported from hil_tests/rig/node_opcua_server.py, where benchmarks use it too):
the same address space served by node-opcua in a subprocess, an independent stack; it can be frozen
with SIGSTOP.
"""

import asyncio
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_session import InternalSession
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from hil_tests.rig.node_opcua_server import SERVER_URI
from hil_tests.rig.node_opcua_server import NodeOpcuaServer as NodeOpcuaServer  # TestServer's twin

NS_URI = "urn:linesentry:test"

# name -> (initial value, variant type, writable)
VARIABLES: dict[str, tuple[Any, ua.VariantType, bool]] = {
    "Temperature": (21.5, ua.VariantType.Double, False),
    "Pressure": (1.25, ua.VariantType.Float, False),
    "Count": (7, ua.VariantType.Int32, False),
    "Running": (True, ua.VariantType.Boolean, False),
    "Setpoint": (50.0, ua.VariantType.Double, True),
    "Mode": (1, ua.VariantType.Int32, True),
    "Broken": (0.0, ua.VariantType.Double, False),  # Bad status
    "Drifting": (3.0, ua.VariantType.Double, False),  # Uncertain status
    "Label": ("hello", ua.VariantType.String, False),  # not numeric
    "Limited": (10.0, ua.VariantType.Double, True),  # the server clamps writes to 0..100
    "Vector": ([1.5, 2.5, 3.5, 4.5, 5.5], ua.VariantType.Double, False),  # an array
    "Level": (40.0, ua.VariantType.Double, False),  # has an EURange property (0..100)
    **{f"N{i}": (float(i), ua.VariantType.Double, False) for i in range(12)},  # for operation limits
}
LIMIT = 100.0

_LIMIT_IDS = (ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
              ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerWrite,
              ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
              ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall)


def _limited_session(limit: int) -> type[InternalSession]:
    """An asyncua session that answers BadTooManyOperations above `limit` nodes, as real PLCs do."""

    def check(items: list) -> None:
        if len(items) > limit:
            raise ServiceError(ua.StatusCodes.BadTooManyOperations)

    class LimitedSession(InternalSession):
        async def read(self, params):
            check(params.NodesToRead)
            return await super().read(params)

        async def write(self, params):
            check(params.NodesToWrite)
            return await super().write(params)

        async def translate_browsepaths_to_nodeids(self, params):
            check(params)
            return await super().translate_browsepaths_to_nodeids(params)

        async def create_monitored_items(self, params):
            check(params.ItemsToCreate)
            return await super().create_monitored_items(params)

    return LimitedSession


def make_server_certificate(directory: Path, hostname: str | None = None) -> tuple[Path, Path]:
    """Self-signed server certificate (DER) and key (PEM) in `directory` (a tmp_path; never committed)."""
    hostname = hostname or socket.gethostname()
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, SERVER_URI, {}, [x509.UniformResourceIdentifier(SERVER_URI), x509.DNSName(hostname)],
        extended=[ExtendedKeyUsageOID.SERVER_AUTH])
    cert_path, key_path = directory / "server_cert.der", directory / "server_key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def _clamp(node: Any, attr: ua.AttributeIds, dv: ua.DataValue) -> None:
    """Store min(value, LIMIT): a PLC that accepts a write but applies another value (readback catches it)."""
    value = min(float(dv.Value.Value), LIMIT)
    node.attributes[attr].value = ua.DataValue(ua.Variant(value, ua.VariantType.Double),
                                               SourceTimestamp=datetime.now(UTC))


class _Users:
    """Username/password check; returns None (BadUserAccessDenied) on a wrong password."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User)
        return None


@dataclass
class SecureOptions:
    server_cert: Path
    server_key: Path
    trusted_client_certs: list[Path] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)


class TestServer:
    """Handles to a running asyncua server: change values, set statuses, stop and restart on the same port."""

    __test__ = False  # not a pytest class

    name = "asyncua"

    def __init__(self, port: int, secure: SecureOptions | None = None, limits: int = 0) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/linesentry/"
        self.secure = secure
        self.limits = limits  # OperationLimits for read/write/translate/monitor; 0: none
        self.server: Server | None = None
        self.nodes: dict[str, Node] = {}
        self.ns = 0

    async def start(self, extra_namespaces: tuple[str, ...] = ()) -> "TestServer":
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.disable_clock()  # its 1 s tick delays stop() by up to 1 s; CurrentTime still answers reads
        server.set_server_name("linesentry test server")
        for uri in extra_namespaces:  # registered first: shifts the test namespace's index
            await server.register_namespace(uri)
        if self.secure is not None:
            await self._secure(server, self.secure)
        self.ns = await server.register_namespace(NS_URI)
        ns = self.ns
        plant = await server.nodes.objects.add_object(ua.NodeId("Plant", ns), ua.QualifiedName("Plant", ns))
        line = await plant.add_object(ua.NodeId("Plant.Line1", ns), ua.QualifiedName("Line1", ns))
        self.nodes = {}
        for name, (value, vtype, writable) in VARIABLES.items():
            node = await line.add_variable(ua.NodeId(f"Line1.{name}", ns), ua.QualifiedName(name, ns),
                                           ua.Variant(value, vtype))
            if writable:
                await node.set_writable()
            self.nodes[name] = node
        # A numeric node id too, for servers that expose only i= ids.
        self.nodes["Numeric"] = await line.add_variable(ua.NodeId(4242, ns), ua.QualifiedName("Numeric", ns),
                                                        ua.Variant(99.0, ua.VariantType.Double))
        server.set_attribute_value_setter(self.nodes["Limited"].nodeid, _clamp)
        await self.nodes["Level"].add_property(
            ua.NodeId("Line1.Level.EURange", ns), ua.QualifiedName("EURange", 0),
            ua.Variant(ua.Range(0.0, 100.0), ua.VariantType.ExtensionObject))
        if self.limits:
            self._enforce_limits(server)
            for ident in _LIMIT_IDS:
                await server.get_node(ua.NodeId(ident)).write_value(
                    ua.Variant(self.limits, ua.VariantType.UInt32))
        await server.start()
        self.server = server
        await self.set_status("Broken", ua.StatusCodes.BadSensorFailure)
        await self.set_status("Drifting", ua.StatusCodes.UncertainLastUsableValue)
        return self

    def _enforce_limits(self, server: Server) -> None:
        iserver, session = server.iserver, _limited_session(self.limits)

        def create_session(name: str, user: User | None = None, external: bool = False) -> InternalSession:
            return session(iserver, iserver.aspace, iserver.subscription_service, name,
                           user=user or User(role=UserRole.Anonymous), external=external)

        iserver.create_session = create_session

    @staticmethod
    async def _secure(server: Server, opts: SecureOptions) -> None:
        await server.set_application_uri(SERVER_URI)
        await server.load_certificate(str(opts.server_cert))
        await server.load_private_key(str(opts.server_key))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        if opts.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
            server.iserver.user_manager = _Users(opts.users)
        trusted = [x509.load_der_x509_certificate(p.read_bytes()).public_bytes(Encoding.DER)
                   for p in opts.trusted_client_certs]

        async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
            if cert.public_bytes(Encoding.DER) not in trusted:
                raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

        server.set_certificate_validator(validate)

    async def set_value(self, name: str, value: Any) -> None:
        _, vtype, _ = VARIABLES.get(name, (None, ua.VariantType.Double, False))
        await self.nodes[name].write_value(ua.Variant(value, vtype))

    async def set_status(self, name: str, code: int, value: Any = None) -> None:
        _, vtype, _ = VARIABLES[name]
        current = (await self.nodes[name].read_data_value()).Value.Value if value is None else value
        await self.server.write_attribute_value(
            self.nodes[name].nodeid, ua.DataValue(ua.Variant(current, vtype), StatusCode=ua.StatusCode(code),
                                                  SourceTimestamp=datetime.now(UTC)))

    async def read(self, name: str) -> Any:
        return await self.nodes[name].read_value()

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    async def restart(self, extra_namespaces: tuple[str, ...] = ()) -> "TestServer":
        await self.stop()
        return await self.start(extra_namespaces)


class FreezingProxy:
    """TCP proxy that can stop forwarding while keeping sockets open: a silent, half-dead link."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.frozen = target_port, False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not self.frozen:
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class Collector:
    """on_batch target: keeps every batch and answers "latest value/quality of tag i"."""

    def __init__(self) -> None:
        self.batches: list = []

    def __call__(self, batch) -> None:
        self.batches.append(batch)

    def values_of(self, i: int, since: int = 0) -> list[tuple[float, int]]:
        out = []
        for b in self.batches[since:]:
            for k in np.flatnonzero(b.index == i):
                out.append((float(b.values[k]), int(b.quality[k])))
        return out

    def saw(self, i: int, value: float, since: int = 0) -> bool:
        return any(v == value and q <= 1 for v, q in self.values_of(i, since))  # GOOD or UNCERTAIN

