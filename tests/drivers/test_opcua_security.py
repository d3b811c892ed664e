"""Basic256Sha256 SignAndEncrypt end to end, server-certificate trust, credentials, config validation."""

import socket
import stat

import pytest
import pytest_asyncio
from asyncua.ua import uaerrors
from pydantic import ValidationError

from drivers.errors import CertificateUntrusted, CredentialsRejected, DriverError
from drivers.opcua import OpcUaConfig, OpcUaSecurity, OpcUaTag
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.security import create_client_certificate
from tests.drivers.conftest import free_port
from tests.drivers.opcua_server import NS_URI, SecureOptions, TestServer, make_server_certificate

on_module_loop = pytest.mark.asyncio(loop_scope="module")  # shares the module-scoped server's loop

CLIENT_URI = "urn:linesentry:test-client"
PASSWORD_ENV = "LINESENTRY_TEST_OPCUA_PASSWORD"
TAGS = [{"name": "temp", "node": f"nsu={NS_URI};s=Line1.Temperature"}]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Key material for this run only, in a temp dir: server pair, trusted client pair, a stranger's pairs."""
    d = tmp_path_factory.mktemp("pki")
    host = socket.gethostname()
    server_cert, server_key = make_server_certificate(d)
    other = d / "other"
    other.mkdir()
    rogue_cert, _ = make_server_certificate(other)
    create_client_certificate(d / "client.der", d / "client_key.pem", CLIENT_URI, host)
    create_client_certificate(d / "stranger.pem", d / "stranger.key", CLIENT_URI, host)  # PEM, odd key suffix
    return {"dir": d, "server_cert": server_cert, "server_key": server_key, "rogue_cert": rogue_cert,
            "client_cert": d / "client.der", "client_key": d / "client_key.pem",
            "stranger_cert": d / "stranger.pem", "stranger_key": d / "stranger.key"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def secure_server(certs):
    opts = SecureOptions(certs["server_cert"], certs["server_key"],
                         trusted_client_certs=[certs["client_cert"]],
                         users={"operator": "s3cret"})
    server = await TestServer(free_port(), secure=opts).start()
    yield server
    await server.stop()


def secure_config(endpoint: str, certs: dict, **security) -> OpcUaConfig:
    sec = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "client_certificate": certs["client_cert"],
           "client_private_key": certs["client_key"], "server_certificate": certs["server_cert"],
           "username": "operator", "password_env": PASSWORD_ENV} | security
    return OpcUaConfig(name="secure", endpoint=endpoint, timeout_s=2.0, security=sec, tags=TAGS)


async def connect_error(driver: OpcUaDriver, kind: type[DriverError] = DriverError,
                        cause: type[BaseException] | None = None) -> str:
    """The one-line message of the `kind` error connect() raises (with a `cause` of that type)."""
    with pytest.raises(kind) as info:
        await driver.connect()
    msg = str(info.value)
    assert "\n" not in msg and driver._client is None
    if cause is not None:
        assert isinstance(info.value.__cause__, cause), repr(info.value.__cause__)
    return msg


def test_client_certificate_helper_writes_a_private_key_only_the_owner_can_read(certs):
    mode = stat.S_IMODE(certs["client_key"].stat().st_mode)
    assert mode == 0o600
    assert certs["client_cert"].read_bytes()[:1] == b"\x30"  # DER
    assert certs["stranger_cert"].read_bytes().startswith(b"-----BEGIN CERTIFICATE")


@on_module_loop
async def test_sign_and_encrypt_with_username_from_the_environment(secure_server, certs, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    driver = OpcUaDriver(secure_config(secure_server.endpoint, certs))
    await driver.connect()
    try:
        assert driver._client.security_policy.Mode.name == "SignAndEncrypt"
        assert driver._client.application_uri == CLIENT_URI  # taken from the certificate
        batch = await driver.read()
        assert list(batch.values) == [21.5]
    finally:
        await driver.close()


@on_module_loop
async def test_unknown_server_certificate_is_accepted_only_when_explicitly_trusted(secure_server, certs,
                                                                                 monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    untrusting = secure_config(secure_server.endpoint, certs, server_certificate=None)
    msg = await connect_error(OpcUaDriver(untrusting), CertificateUntrusted)
    assert "untrusted server certificate (sha256 " in msg and "trust_server_certificate" in msg
    trusting = OpcUaDriver(secure_config(secure_server.endpoint, certs, server_certificate=None,
                                         trust_server_certificate=True))
    await trusting.connect()
    await trusting.close()


@on_module_loop
async def test_a_server_whose_certificate_differs_from_the_configured_one_is_refused(secure_server, certs,
                                                                                   monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    driver = OpcUaDriver(secure_config(secure_server.endpoint, certs, server_certificate=certs["rogue_cert"]))
    msg = await connect_error(driver, CertificateUntrusted)
    assert msg.startswith(secure_server.endpoint) and "untrusted server certificate" in msg
    assert "does not match security.server_certificate" in msg
    assert driver.stats.sessions_created == 0


@on_module_loop
async def test_wrong_password_or_missing_variable_or_untrusted_client_give_clear_errors(secure_server, certs,
                                                                                       monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    msg = await connect_error(OpcUaDriver(secure_config(secure_server.endpoint, certs)), CredentialsRejected,
                              uaerrors.BadUserAccessDenied)
    assert "bad credentials" in msg and "'operator'" in msg and "BadUserAccessDenied" in msg
    assert "wrong" not in msg
    monkeypatch.delenv(PASSWORD_ENV)
    msg = await connect_error(OpcUaDriver(secure_config(secure_server.endpoint, certs)))
    assert f"environment variable {PASSWORD_ENV} (security.password_env) is not set" in msg
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    stranger = secure_config(secure_server.endpoint, certs, client_certificate=certs["stranger_cert"],
                             client_private_key=certs["stranger_key"])
    msg = await connect_error(OpcUaDriver(stranger), CertificateUntrusted, uaerrors.BadCertificateUntrusted)
    assert "does not trust our client certificate" in msg and "BadCertificateUntrusted" in msg
    assert "add it to the server's trusted list" in msg


@on_module_loop
async def test_a_mode_the_server_does_not_offer_is_named_with_what_it_offers(secure_server, certs,
                                                                            monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    cfg = secure_config(secure_server.endpoint, certs, mode="Sign")
    msg = await connect_error(OpcUaDriver(cfg))
    assert "offers no Basic256Sha256/Sign endpoint" in msg and "SignAndEncrypt" in msg


@pytest.mark.parametrize(("security", "expected"), [
    ({"policy": "Basic256Sha256", "mode": "SignAndEncrypt"},
     "needs security.client_certificate and security.client_private_key"),
    ({"policy": "None", "mode": "Sign"}, "security.mode 'Sign' needs a signing policy"),
    ({"policy": "Basic256Sha256", "mode": "None", "client_certificate": "c.der",
      "client_private_key": "k.pem"},
     "needs security.mode Sign or SignAndEncrypt"),
    ({"username": "op", "password_env": "hunter2!"}, "must be an environment variable NAME"),
    ({"password_env": "PW"}, "password_env is set but security.username is not"),
    ({"username": "op", "password_env": "PW"}, "a password over security.policy None is sent readable"),
    ({"server_certificate_sha256": "AB:CD"}, "is not a SHA-256 fingerprint"),
    ({"server_certificate": "s.der", "server_certificate_sha256": "ab" * 32}, "set only one of"),
    ({"password": "x"}, "Extra inputs are not permitted"),
])
def test_security_config_errors_name_the_field_and_the_fix(security, expected):
    with pytest.raises(ValidationError, match=expected):
        OpcUaSecurity(**security)


@pytest.mark.parametrize(("tags", "groups", "expected"), [
    ([{"name": "a"}], None, "set exactly one of 'node'"),
    ([{"name": "a", "node": "nsu=urn:x;s=A", "browse_path": ["0:Objects"]}], None, "set exactly one"),
    ([{"name": "a", "node": "ns=2;s=A"}], None, r"write nsu=<namespace URI>;s=A instead of ns=2"),
    ([{"name": "a", "node": "nsu=urn:x;q=A"}], None, "unknown identifier type 'q'"),
    ([{"name": "a", "browse_path": ["Objects"]}], None, "must be <namespace URI or index>:<BrowseName>"),
    ([{"name": "a", "node": "i=1", "group": "fast"}], None, "group 'fast' is not defined"),
    ([{"name": "a", "node": "i=1"}, {"name": "a", "node": "i=2"}], None, "duplicate name"),
    ([{"name": "a", "node": "i=1", "group": "p", "deadband_abs": 1}], [{"name": "p", "mode": "polling"}],
     "deadbands apply to subscription groups only"),
    ([{"name": "a", "node": "i=1", "deadband_abs": 1, "deadband_pct": 2}], None, "only one of deadband_abs"),
    ([{"name": "a", "node": "i=1", "index": 2, "writable": True}], None, "writes to an array element"),
    ([{"name": "a", "node": "i=1", "index": -1}], None, "greater than or equal to 0"),
])
def test_tag_and_group_config_errors_name_the_tag_and_the_fix(tags, groups, expected):
    extra = {} if groups is None else {"groups": groups}
    with pytest.raises(ValidationError, match=expected):
        OpcUaConfig(name="p", endpoint="opc.tcp://127.0.0.1:4840", tags=tags, **extra)


def test_plaintext_password_and_fingerprint_forms_when_allowed():
    sec = OpcUaSecurity(username="op", password_env="PW", allow_plaintext_password=True)
    assert sec.password_env == "PW"
    colon = ":".join(["AB"] * 32)
    assert OpcUaSecurity(server_certificate_sha256=colon).server_certificate_sha256 == "ab" * 32
    assert OpcUaSecurity(server_certificate_sha256="AB" * 32).server_certificate_sha256 == "ab" * 32


@on_module_loop
async def test_a_private_key_readable_by_others_is_refused_unless_allowed(secure_server, certs, monkeypatch,
                                                                         tmp_path):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    key = tmp_path / "client_key.pem"
    key.write_bytes(certs["client_key"].read_bytes())
    key.chmod(0o644)
    driver = OpcUaDriver(secure_config(secure_server.endpoint, certs, client_private_key=key))
    msg = await connect_error(driver)
    assert f"security.client_private_key {key} is readable by group/others (mode 0644)" in msg
    assert "chmod 600" in msg and "allow_insecure_key_permissions" in msg
    allowed = OpcUaDriver(secure_config(secure_server.endpoint, certs, client_private_key=key,
                                        allow_insecure_key_permissions=True))
    await allowed.connect()
    await allowed.close()


def test_endpoint_and_valid_node_forms():
    with pytest.raises(ValidationError, match="must look like opc.tcp://host:4840"):
        OpcUaConfig(name="p", endpoint="http://plc:4840", tags=[{"name": "a", "node": "i=1"}])
    for node in ("nsu=urn:a:b;s=X.Y", "nsu=urn:a;i=5", "nsu=urn:a;g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
                 "nsu=urn:a;b=AAEC", "i=2258", "ns=0;i=2258"):
        assert OpcUaTag(name="a", node=node).node == node
