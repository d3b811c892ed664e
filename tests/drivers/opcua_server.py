"""A small real asyncua server for driver tests: typed variables, a Bad and an Uncertain node,
optional Basic256Sha256 SignAndEncrypt with a trusted client certificate, optional username/password,
and stop/restart on the same port (optionally with extra namespaces registered first, so indexes shift).
"""

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

NS_URI = "urn:linesentry:test"
SERVER_URI = "urn:linesentry:test-server"

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
}
LIMIT = 100.0


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

    def __init__(self, port: int, secure: SecureOptions | None = None) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/linesentry/"
        self.secure = secure
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
        await server.start()
        self.server = server
        await self.set_status("Broken", ua.StatusCodes.BadSensorFailure)
        await self.set_status("Drifting", ua.StatusCodes.UncertainLastUsableValue)
        return self

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
