"""Client security: certificates, server trust and user identity for one asyncua Client.

The server certificate is checked against the configured, trusted copy before any
secure channel is opened: asyncua on its own would adopt whatever certificate the
server's endpoint list presents (trust on every use), which is what we must refuse.
"""

import hashlib
import os
import stat
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import cert_gen, security_policies, uacrypto
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.errors import CertificateUntrusted, DriverError, SecretMissing
from drivers.opcua.config import OpcUaSecurity

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
}
MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
DEFAULT_APPLICATION_URI = "urn:linesentry:client"


def create_client_certificate(path_cert: str | Path, path_key: str | Path, application_uri: str,
                              hostname: str, days: int = 365) -> None:
    """Write a self-signed client certificate (DER, or PEM if the name ends in .pem) and its key (PEM, 0600).

    The application URI is put in the certificate's SubjectAltName; the driver uses it as
    the client's ApplicationUri, which servers require to match.
    """
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, application_uri, {}, [x509.UniformResourceIdentifier(application_uri), x509.DNSName(hostname)],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH], days=days)
    path_cert, path_key = Path(path_cert), Path(path_key)
    fd = os.open(path_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    os.chmod(path_key, 0o600)  # also when the file already existed with wider permissions
    encoding = Encoding.PEM if path_cert.suffix.lower() == ".pem" else Encoding.DER
    path_cert.write_bytes(cert.public_bytes(encoding))


def load_certificate_der(path: Path, what: str) -> bytes:
    """A certificate file (DER or PEM) as DER bytes; DriverError naming the config key when unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DriverError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as exc:
        raise DriverError(f"{what}: {path} is not a DER or PEM certificate") from exc
    return cert.public_bytes(Encoding.DER)


def first_certificate(der: bytes) -> bytes:
    """The leading certificate of a possibly chained DER blob (servers may append their chain)."""
    length = int.from_bytes(der[2:4], "big") + 4
    return der[:length]


def fingerprint(der: bytes) -> str:
    """SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` prints it (AB:CD:...)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


async def fetch_server_certificate(endpoint: str, timeout_s: float) -> bytes:
    """The server's own certificate (DER) from GetEndpoints, preferring a Basic256Sha256 endpoint."""
    client = Client(endpoint, timeout=timeout_s)
    endpoints = await client.connect_and_get_server_endpoints()
    policy = POLICIES["Basic256Sha256"].URI
    ranked = sorted(endpoints, key=lambda ep: ep.SecurityPolicyUri != policy)
    for ep in ranked:
        if ep.ServerCertificate:
            return first_certificate(ep.ServerCertificate)
    raise DriverError(f"{endpoint}: the server presents no certificate (it offers security policy None only)")


def check_key_permissions(sec: OpcUaSecurity) -> None:
    """Refuse a private key file that group or others can read, unless the config allows it."""
    assert sec.client_private_key is not None
    try:
        mode = stat.S_IMODE(sec.client_private_key.stat().st_mode)
    except OSError as exc:
        raise DriverError(f"security.client_private_key: cannot read {sec.client_private_key}: "
                          f"{exc.strerror}") from exc
    if mode & 0o077 and not sec.allow_insecure_key_permissions:
        raise DriverError(f"security.client_private_key {sec.client_private_key} is readable by group/others "
                          f"(mode {mode:04o}): run chmod 600 on it, or set "
                          "security.allow_insecure_key_permissions = true")


def application_uri_of(der: bytes) -> str | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def password_from_env(sec: OpcUaSecurity) -> str | None:
    if sec.password_env is None:
        return None
    password = os.environ.get(sec.password_env)
    if password is None:
        raise SecretMissing(f"environment variable {sec.password_env} (security.password_env) is not set")
    return password


async def apply_security(client: Client, sec: OpcUaSecurity, endpoint: str) -> None:
    """Configure `client` (not yet connected): message security, server trust, user identity."""
    if sec.username is not None:
        client.set_user(sec.username)
        password = password_from_env(sec)
        if password is not None:
            client.set_password(password)
    if not sec.is_secure:
        client.application_uri = DEFAULT_APPLICATION_URI
        return
    assert sec.client_certificate is not None and sec.client_private_key is not None
    own = load_certificate_der(sec.client_certificate, "security.client_certificate")
    uri = application_uri_of(own)
    if uri is None:
        raise DriverError(f"security.client_certificate {sec.client_certificate} has no URI in its "
                          "SubjectAltName; recreate it with `linesentry certs`")
    client.application_uri = uri  # servers check that it matches the certificate
    policy, mode = POLICIES[sec.policy], MODES[sec.mode]
    endpoints = await client.connect_and_get_server_endpoints()  # over an unsecured, session-less channel
    offered = [ep for ep in endpoints if ep.SecurityPolicyUri == policy.URI and ep.SecurityMode == mode]
    if not offered:
        have = ", ".join(sorted({f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}"
                                 for ep in endpoints}))
        raise DriverError(f"{endpoint}: server offers no {sec.policy}/{sec.mode} endpoint "
                          f"(it offers: {have})")
    presented = first_certificate(offered[0].ServerCertificate or b"")
    if not presented:
        raise DriverError(f"{endpoint}: server presents no certificate for {sec.policy}/{sec.mode}")
    if sec.server_certificate is not None:
        trusted = load_certificate_der(sec.server_certificate, "security.server_certificate")
        if presented != trusted:
            raise CertificateUntrusted(
                f"{endpoint}: untrusted server certificate: it does not match security.server_certificate "
                f"{sec.server_certificate} (server sha256 {fingerprint(presented)}, trusted sha256 "
                f"{fingerprint(trusted)})")
    elif sec.server_certificate_sha256 is not None:
        if hashlib.sha256(presented).hexdigest() != sec.server_certificate_sha256:
            raise CertificateUntrusted(f"{endpoint}: untrusted server certificate: its sha256 "
                                       f"{fingerprint(presented)} is not security.server_certificate_sha256")
    elif not sec.trust_server_certificate:
        raise CertificateUntrusted(
            f"{endpoint}: untrusted server certificate (sha256 {fingerprint(presented)}): pin it with "
            f"`linesentry certs fetch {endpoint}` and security.server_certificate (or "
            "server_certificate_sha256), or set trust_server_certificate = true")
    check_key_permissions(sec)
    try:
        key = sec.client_private_key.read_bytes()
    except OSError as exc:
        raise DriverError(f"security.client_private_key: cannot read {sec.client_private_key}: "
                          f"{exc.strerror}") from exc
    key_format = "pem" if b"-----BEGIN" in key else "der"  # by content: asyncua would guess by file suffix
    try:
        await client.set_security(policy, uacrypto.CertProperties(own, "der"),
                                  uacrypto.CertProperties(key, key_format),
                                  server_certificate=uacrypto.CertProperties(presented, "der"), mode=mode)
    except (ValueError, TypeError) as exc:
        raise DriverError(f"security.client_private_key {sec.client_private_key}: cannot load it "
                          f"({type(exc).__name__})") from exc


def channel_refused(exc: BaseException) -> bool:
    """Did the server refuse to open our secure channel?

    node-opcua answers an OpenSecureChannel from an untrusted client certificate with a
    ServiceFault (BadSecurityChecksFailed) that asyncua 2.1 cannot parse as the response it
    expects; all that reaches us is its internal AssertionError.
    """
    return isinstance(exc, AssertionError)
