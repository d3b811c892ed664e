"""A hostile installation and hostile PLCs against the driver registry and the supervisor.

Broken third-party packages (does not import, exports the wrong object, claims a built-in's name,
uses a controller key), a plugin whose create() raises, and a secured asyncua server that refuses
our identity: each must be one clear line, must not take the other drivers down, and a refusal
that cannot heal must stop the retries.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from controller.config.plcs import SETTING_KEYS
from controller.errors import LinesentryError
from drivers import registry
from drivers.base import ConnectionState
from drivers.errors import CertificateUntrusted, CredentialsRejected, DriverError
from drivers.opcua import OpcUaConfig
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.security import create_client_certificate
from drivers.supervisor import Backoff, DriverSupervisor
from tests.drivers.conftest import free_port
from tests.drivers.opcua_server import NS_URI, SecureOptions, TestServer, make_server_certificate
from tests.drivers.toy.config import ToyConfig

REPO = Path(__file__).resolve().parents[2]
PASSWORD_ENV = "LINESENTRY_ADV_OPCUA_PASSWORD"


def installed(site: Path, entry_points: str, modules: dict[str, str] | None = None) -> Path:
    """A site directory holding one installed package with these `linesentry.drivers` entry points."""
    dist = site / "adv_drivers-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: adv-drivers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[linesentry.drivers]\n" + entry_points)
    for name, text in (modules or {}).items():
        (site / f"{name}.py").write_text(text)
    return site


def run_python(site: Path, code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (the registry loads entry points once per process)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{site}:{REPO}"}, cwd=REPO)


PROBE = """
import drivers.registry as r
from drivers.errors import DriverError
print("usable", sorted(r.plugins()))
for name in NAMES:
    try:
        r.plugin(name)
        print(name, "OK")
    except DriverError as exc:
        print(name, "REFUSED", exc)
"""


def probe(site: Path, *names: str) -> dict[str, str]:
    run = run_python(site, f"NAMES = {list(names)!r}\n" + PROBE)
    assert run.returncode == 0, run.stderr
    out = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    out["stderr"] = run.stderr
    return out


def test_a_package_that_fails_to_import_or_exports_the_wrong_object_spares_the_other_drivers(tmp_path):
    """One broken third-party entry point raised out of plugins(): no driver could be used at all,
    not even the built-ins of a line that never names the broken one."""
    site = installed(tmp_path / "site", "broken = no_such_module_xyz:PLUGIN\n"
                                        "wrongobj = drivers.errors:DriverError\n")
    out = probe(site, "modbus", "opcua", "broken", "wrongobj")
    assert out["usable"] == "['modbus', 'opcua']"
    assert out["modbus"] == "OK" and out["opcua"] == "OK"
    assert out["broken"].startswith("REFUSED driver plugin 'broken' (no_such_module_xyz:PLUGIN) failed to "
                                    "load: ModuleNotFoundError")
    assert out["wrongobj"].startswith("REFUSED entry point 'wrongobj' = 'drivers.errors:DriverError'")
    assert "Traceback" not in out["stderr"]


def test_validate_of_a_modbus_line_works_with_a_broken_driver_package_installed(tmp_path):
    site = installed(tmp_path / "site", "broken = no_such_module_xyz:PLUGIN\n")
    linesentry = str(Path(sys.executable).with_name("linesentry"))
    run = subprocess.run([linesentry, "validate", str(REPO / "configs" / "modbus_only.toml")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{site}:{REPO}", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "modbus_only.toml: OK" in run.stdout
    assert "Traceback" not in run.stderr


SHADOW = """
from drivers.modbus import ModbusDeviceConfig
from drivers.registry import DriverPlugin

PLUGIN = DriverPlugin("modbus", ModbusDeviceConfig, lambda config: None, description="not the real one")
"""


def test_a_package_claiming_a_builtin_drivers_name_is_refused_not_silently_chosen(tmp_path):
    """Two packages registering "modbus": the registry kept whichever sys.path listed first."""
    site = installed(tmp_path / "site", "modbus = shadow_modbus:PLUGIN\n", {"shadow_modbus": SHADOW})
    out = probe(site, "modbus", "opcua")
    assert out["modbus"].startswith("REFUSED two installed packages register the driver 'modbus'")
    assert out["opcua"] == "OK" and "modbus" not in out["usable"]


RESERVED = """
from pydantic import BaseModel
from drivers.registry import DriverPlugin

class Config(BaseModel):
    name: str
    watchdog: str = "mine"

PLUGIN = DriverPlugin("evil", Config, lambda config: None)
"""


def test_a_plugin_defining_a_controller_key_is_refused_alone(tmp_path):
    """A plugin whose config had `watchdog` made every `linesentry validate` fail with "internal error:
    TypeError" (the schema is built from all plugins), even for a line without [[evil]] tables."""
    site = installed(tmp_path / "site", "evil = evil_drv:PLUGIN\n", {"evil_drv": RESERVED})
    out = probe(site, "evil", "modbus")
    assert out["modbus"] == "OK"
    assert "reserved PLC setting key(s) watchdog" in out["evil"] and out["evil"].startswith("REFUSED")

    class Clash(BaseModel):
        name: str
        on_comm_loss: str

    with pytest.raises(ValueError, match="reserved PLC setting key.s. on_comm_loss"):
        registry.DriverPlugin("clash", Clash, lambda config: None)


def test_the_reserved_keys_are_the_controllers_plc_settings():
    assert registry.RESERVED_KEYS == SETTING_KEYS


def test_a_driver_whose_create_raises_is_named_by_plc_and_plugin(tmp_path, monkeypatch):
    from controller.config import load_config
    from controller.runtime import Controller

    def create(config):
        raise RuntimeError("create blew up")

    registry.register(registry.DriverPlugin("exploding", ToyConfig, create))
    try:
        path = tmp_path / "line.toml"
        path.write_text(f"""
[controller]
site = "t"
line = "l"
state_dir = "{tmp_path / 'state'}"

[[exploding]]
name = "mixer"
port = 1
token_env = "LINESENTRY_TEST_TOY_TOKEN"

  [[exploding.tags]]
  name = "speed"

[detector]
tags = ["speed"]

  [detector.limits]
  speed = {{ hi = 100.0 }}
""")
        config = load_config(path)
        with pytest.raises(LinesentryError, match=r"mixer.*exploding.*create blew up"):
            Controller(config, api_port=0)
    finally:
        registry.unregister("exploding")


# -- a secured asyncua server that refuses us: the supervisor must stop, not back off forever --------


@pytest.fixture
async def secure_server(tmp_path):
    host = socket.gethostname()
    server_cert, server_key = make_server_certificate(tmp_path)
    create_client_certificate(tmp_path / "client.der", tmp_path / "client_key.pem", "urn:adv:client", host)
    create_client_certificate(tmp_path / "stranger.der", tmp_path / "stranger.pem", "urn:adv:client", host)
    opts = SecureOptions(server_cert, server_key, trusted_client_certs=[tmp_path / "client.der"],
                         users={"operator": "s3cret"})
    server = await TestServer(free_port(), secure=opts).start()
    server.pki = tmp_path
    server.server_cert = server_cert
    yield server
    await server.stop()


def secured(server, client: str = "client", client_key: str = "client_key.pem") -> OpcUaConfig:
    sec = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt",
           "client_certificate": server.pki / f"{client}.der", "client_private_key": server.pki / client_key,
           "server_certificate": server.server_cert, "username": "operator", "password_env": PASSWORD_ENV}
    return OpcUaConfig(name="secure", endpoint=server.endpoint, timeout_s=2.0, security=sec,
                       tags=[{"name": "temp", "node": f"nsu={NS_URI};s=Line1.Temperature"}])


async def supervise_until_failed(config: OpcUaConfig) -> tuple[DriverSupervisor, list]:
    states: list = []
    backoff = Backoff(initial=0.05, cap=0.1)
    sup = DriverSupervisor(OpcUaDriver(config), on_batch=lambda batch: None, backoff=backoff,
                           on_state=lambda s, d: states.append((s, d)))
    await asyncio.wait_for(sup.run(), 30)  # returns only on a permanent error
    return sup, states


async def test_refusals_that_cannot_heal_stop_the_retries_against_a_real_server(secure_server, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    sup, states = await supervise_until_failed(secured(secure_server))
    assert isinstance(sup.failure, CredentialsRejected) and sup.state is ConnectionState.FAILED
    assert [s for s, _ in states].count(ConnectionState.CONNECTING) == 1
    assert "BadUserAccessDenied" in states[-1][1]

    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    sup, states = await supervise_until_failed(secured(secure_server, "stranger", "stranger.pem"))
    assert isinstance(sup.failure, CertificateUntrusted)
    assert [s for s, _ in states].count(ConnectionState.CONNECTING) == 1


async def test_a_password_variable_that_is_not_set_stops_the_retries(secure_server, monkeypatch):
    """The variable cannot appear in a running process's environment, yet the supervisor retried
    the connect forever (a plain DriverError), logging one warning and then nothing."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    sup, states = await supervise_until_failed(secured(secure_server))
    assert sup.failure is not None and sup.failure.permanent and isinstance(sup.failure, DriverError)
    assert f"environment variable {PASSWORD_ENV} (security.password_env) is not set" in states[-1][1]
    assert [s for s, _ in states].count(ConnectionState.CONNECTING) == 1
