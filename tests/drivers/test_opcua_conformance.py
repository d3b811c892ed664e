"""OPC UA driver conformance, written once and run against every server implementation.

Each test takes a server fixture parametrised over `KINDS` (the project's asyncua server and
node-opcua, an independent stack), as River's check_estimator runs one suite over estimators.
Both serve the same address space (tests/drivers/opcua_server.py, tests/drivers/node_opcua/server.js).
A server that cannot start FAILS the test.
"""

import asyncio
import logging
import math
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.base import Quality
from drivers.errors import CertificateUntrusted, WriteFailed, WriteRefused
from drivers.opcua import OpcUaConfig
from drivers.opcua.driver import EURANGE_FIX, OpcUaDriver
from drivers.opcua.limits import OperationLimits
from drivers.opcua.security import create_client_certificate, fetch_server_certificate, fingerprint
from drivers.supervisor import Backoff, DriverSupervisor, SessionRateLimiter
from tests.drivers.conftest import free_port, wait_for
from tests.drivers.opcua_server import (
    NS_URI,
    Collector,
    FreezingProxy,
    NodeOpcuaServer,
    SecureOptions,
    TestServer,
    make_server_certificate,
)
from tests.drivers.state_watch import Losses

pytestmark = pytest.mark.asyncio(loop_scope="module")
KINDS = ["asyncua", "node-opcua"]
CLIENT_URI = "urn:linesentry:test-client"


def nsu(name: str) -> str:
    return f"nsu={NS_URI};s=Line1.{name}"


def path(name: str) -> list[str]:
    return ["0:Objects", f"{NS_URI}:Plant", f"{NS_URI}:Line1", f"{NS_URI}:{name}"]


def config(endpoint: str, tags: list[dict], timeout_s: float = 1.0, **kw) -> OpcUaConfig:
    return OpcUaConfig(name="plc1", endpoint=endpoint, timeout_s=timeout_s, tags=tags, **kw)


async def start_server(kind: str, limits: int = 0) -> TestServer | NodeOpcuaServer:
    cls = TestServer if kind == "asyncua" else NodeOpcuaServer
    return await cls(free_port(), limits=limits).start()


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=KINDS)
async def shared(request):
    """One server per kind (starting one takes seconds). A test that changes a value, freezes or
    restarts it leaves it as it found it (a restart brings back the initial values)."""
    server = await start_server(request.param)
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=KINDS)
async def limited(request):
    """A server whose OperationLimits are 5 nodes per Read/Write/Translate/CreateMonitoredItems."""
    server = await start_server(request.param, limits=5)
    yield server
    await server.stop()


async def subscribed(driver: OpcUaDriver) -> tuple[Collector, asyncio.Task]:
    got = Collector()
    await driver.connect()
    return got, asyncio.create_task(driver.subscribe(got))


async def stop(driver: OpcUaDriver, task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await driver.close()


def latest(got: Collector, i: int) -> tuple[float, int] | None:
    values = got.values_of(i)
    return values[-1] if values else None


async def test_types_map_to_values_qualities_and_text(shared):
    driver = OpcUaDriver(config(shared.endpoint, [
        {"name": "temp", "node": nsu("Temperature")}, {"name": "press", "browse_path": path("Pressure")},
        {"name": "count", "node": nsu("Count")}, {"name": "running", "browse_path": path("Running")},
        {"name": "broken", "node": nsu("Broken")}, {"name": "drifting", "node": nsu("Drifting")},
        {"name": "label", "node": nsu("Label")}, {"name": "vec2", "node": nsu("Vector"), "index": 2},
        {"name": "numeric", "node": f"nsu={NS_URI};i=4242"}]))
    await driver.connect()
    try:
        b = await driver.read()
        assert driver.stats.tag_errors == {"broken": "the server reports BadSensorFailure"}
        assert list(b.values[[0, 2, 3, 7, 8]]) == [21.5, 7.0, 1.0, 3.5, 99.0]
        assert b.values[1] == np.float32(1.25)
        assert list(b.quality) == [0, 0, 0, 0, Quality.BAD, Quality.UNCERTAIN, 0, 0, 0]
        assert math.isnan(b.values[6]) and b.text is not None and b.text[6] == "hello"
        assert [t for k, t in enumerate(b.text) if k != 6] == [None] * 8  # numbers carry no text
        assert driver.text_tags == {"label"}
        assert np.all(np.isfinite(b.source_ts[[0, 1, 2, 3, 6, 7, 8]]))
    finally:
        await driver.close()


async def test_one_wrong_tag_is_bad_with_its_reason_and_every_other_tag_flows(shared, caplog):
    tags = [{"name": "temp", "node": nsu("Temperature")},
            {"name": "missing", "node": nsu("Nope")},
            {"name": "bad_uri", "node": "nsu=urn:nowhere;s=X"},
            {"name": "bad_path", "browse_path": path("Nope")},
            {"name": "gone_setpoint", "node": nsu("Gone"), "writable": True},
            {"name": "whole_array", "node": nsu("Vector")},
            {"name": "scalar_index", "node": nsu("Count"), "index": 1},
            {"name": "count", "browse_path": path("Count")}]
    driver = OpcUaDriver(config(shared.endpoint, tags))
    caplog.set_level(logging.WARNING, logger="drivers.opcua.driver")
    got, task = await subscribed(driver)
    try:
        errors = driver.stats.tag_errors
        assert set(errors) == {"missing", "bad_uri", "bad_path", "gone_setpoint", "whole_array",
                               "scalar_index"}
        assert "node not found on the server (BadNodeIdUnknown)" in errors["missing"]
        assert "namespace URI 'urn:nowhere' is not on the server" in errors["bad_uri"]
        assert "browse path 0:Objects/" in errors["bad_path"] and "not found" in errors["bad_path"]
        assert "BadNodeIdUnknown" in errors["gone_setpoint"]
        assert "set index = <n>" in errors["whole_array"]
        assert "not an array" in errors["scalar_index"]
        await wait_for(lambda: got.saw(0, 21.5) and got.saw(7, 7.0), what="the good tags")
        for i in range(1, 7):
            assert latest(got, i)[1] == Quality.BAD
        b = await driver.read()
        assert list(b.values[[0, 7]]) == [21.5, 7.0] and np.all(b.quality[1:7] == Quality.BAD)
        with pytest.raises(WriteFailed, match="'gone_setpoint' is BAD: node not found"):
            await driver.write("gone_setpoint", 1.0)
        assert not task.done() and driver.stats.sessions_created == 1
    finally:
        await stop(driver, task)
    await driver.connect()  # a new session: the same reasons are not logged again
    await driver.close()
    warnings = [r.getMessage() for r in caplog.records if "is BAD" in r.getMessage()]
    assert len(warnings) == 6 and all("\n" not in w for w in warnings)


async def test_operation_limits_are_read_and_every_request_is_chunked(limited):
    tags = [{"name": f"n{i}", **({"node": nsu(f"N{i}")} if i % 2 else {"browse_path": path(f"N{i}")})}
            for i in range(12)]
    driver = OpcUaDriver(config(limited.endpoint, tags, groups=[
        {"name": "default", "publishing_interval_ms": 50}]))
    got, task = await subscribed(driver)
    try:
        assert driver.limits == OperationLimits(read=5, write=5, translate=5, monitor=5)
        assert driver.stats.tag_errors == {}
        await wait_for(lambda: all(got.saw(i, float(i)) for i in range(12)), what="all 12 subscribed values")
        b = await driver.read()
        assert list(b.values) == [float(i) for i in range(12)]
    finally:
        await stop(driver, task)


async def test_max_nodes_per_request_caps_below_the_server(shared):
    driver = OpcUaDriver(config(shared.endpoint, [{"name": f"n{i}", "node": nsu(f"N{i}")} for i in range(7)],
                                max_nodes_per_request=3))
    await driver.connect()
    try:
        assert driver.limits == OperationLimits(read=3, write=3, translate=3, monitor=3)
        assert list((await driver.read()).values) == [float(i) for i in range(7)]
    finally:
        await driver.close()


async def test_percent_deadband_without_eurange_is_bad_with_the_fix(shared):
    driver = OpcUaDriver(config(shared.endpoint, [
        {"name": "level", "node": nsu("Level"), "deadband_pct": 5},
        {"name": "temp", "node": nsu("Temperature"), "deadband_pct": 5},
        {"name": "count", "node": nsu("Count")}]))
    got, task = await subscribed(driver)
    try:
        assert driver.stats.tag_errors == {"temp": EURANGE_FIX}
        await wait_for(lambda: got.saw(0, 40.0) and got.saw(2, 7.0), what="level and count")
        assert latest(got, 1)[1] == Quality.BAD
    finally:
        await stop(driver, task)


async def test_subscription_changes_and_keepalives_refresh_liveness(shared):
    driver = OpcUaDriver(config(shared.endpoint, [{"name": "numeric", "node": f"nsu={NS_URI};i=4242"}],
                                groups=[{"name": "default", "publishing_interval_ms": 50}]))
    assert driver.alive_interval_s == 0.25  # min(timeout_s / 4, 1 s)
    got, task = await subscribed(driver)
    try:
        await wait_for(lambda: got.saw(0, 99.0), what="initial value")
        await shared.set_value("Numeric", 5.5)
        await wait_for(lambda: got.saw(0, 5.5), what="the change")
        for _ in range(3):  # no data changes now: keep-alives and watchdog reads keep it fresh
            mark = driver.stats.last_alive
            await wait_for(lambda m=mark: driver.stats.last_alive > m, timeout=3 * driver.alive_interval_s,
                           what="a liveness refresh without data")
    finally:
        await stop(driver, task)
        await shared.set_value("Numeric", 99.0)


async def test_a_server_answering_only_bad_values_never_refreshes_liveness(shared):
    driver = OpcUaDriver(config(shared.endpoint, [{"name": "broken", "node": nsu("Broken")},
                                                  {"name": "missing", "node": nsu("Nope")}]))
    got, task = await subscribed(driver)
    try:
        t0 = time.monotonic()
        await wait_for(lambda: driver._last_answer > t0 + 2 * driver.alive_interval_s,
                       what="two watchdog answers")
        assert got.batches and driver.stats.last_alive == -math.inf
    finally:
        await stop(driver, task)


async def test_writes_use_the_node_type_and_confirm_by_readback(shared):
    driver = OpcUaDriver(config(shared.endpoint, [
        {"name": "setpoint", "node": nsu("Setpoint"), "writable": True},
        {"name": "mode", "browse_path": path("Mode"), "writable": True},
        {"name": "count", "node": nsu("Count"), "writable": True}]))  # the server's node is read-only
    await driver.connect()
    try:
        await driver.write("setpoint", 12.5)
        await driver.write("mode", 3)
        assert list((await driver.read(["setpoint", "mode"])).values) == [12.5, 3.0]
        with pytest.raises(WriteRefused, match="does not fit Int32"):
            await driver.write("mode", 2.5)
        with pytest.raises(WriteFailed, match="server refused the write"):
            await driver.write("count", 1)
    finally:
        await driver.close()


async def test_a_frozen_server_is_reported_comm_lost_within_the_timeout(shared):
    proxy = None
    endpoint = shared.endpoint
    if isinstance(shared, TestServer):  # in-process: freeze the link; node-opcua: SIGSTOP the process
        proxy = FreezingProxy(shared.port)
        endpoint = f"opc.tcp://127.0.0.1:{await proxy.start()}/linesentry/"
    driver = OpcUaDriver(config(endpoint, [{"name": "temp", "node": nsu("Temperature")}]))
    got = Collector()
    losses = Losses(got)
    sup = supervisor(driver, got, losses)
    sup.start()
    try:
        await wait_for(lambda: got.saw(0, 21.5), what="initial value")
        t0 = time.monotonic()
        if proxy is not None:
            proxy.frozen = True
        else:
            shared.freeze()
        await wait_for(lambda: losses.at, timeout=5, what="the loss reported")
        elapsed = time.monotonic() - t0
        assert "no answer within 1 s" in sup.last_error
        assert elapsed <= 1.5 * driver.config.timeout_s, elapsed  # documented: timeout_s of silence
    finally:
        await sup.stop()
        if proxy is not None:
            await proxy.stop()
        else:
            shared.thaw()


def supervisor(driver: OpcUaDriver, on_batch, on_state=None) -> DriverSupervisor:
    return DriverSupervisor(driver, on_batch, backoff=Backoff(initial=0.05, factor=2.0, cap=0.2),
                            limiter=SessionRateLimiter(per_minute=600), on_state=on_state)


async def test_a_restart_under_the_supervisor_reports_comm_lost_then_data_flows(shared):
    driver = OpcUaDriver(config(shared.endpoint, [
        {"name": "temp", "node": nsu("Temperature")},
        {"name": "n3", "browse_path": path("N3"), "group": "slow"}],
        groups=[{"name": "default", "publishing_interval_ms": 20},
                {"name": "slow", "mode": "polling", "poll_interval_ms": 50}]))
    got = Collector()
    losses = Losses(got)
    sup = supervisor(driver, got, losses)
    sup.start()
    try:
        await wait_for(lambda: got.saw(0, 21.5) and got.saw(1, 3.0), what="data before the restart")
        await shared.stop()
        await wait_for(lambda: losses.at, timeout=5, what="the loss reported")
        lost_at = losses.at[0]
        await shared.restart()
        await shared.set_value("N3", 33.0)
        await wait_for(lambda: got.saw(0, 21.5, lost_at) and got.saw(1, 33.0, lost_at), timeout=10,
                       what="data after the restart")  # subscription re-created, polling resumed
        assert driver.stats.sessions_created >= 2
    finally:
        await sup.stop()
        await shared.set_value("N3", 3.0)


# ----------------------------------------------------------------------------- security
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    server_cert, server_key = make_server_certificate(d)
    pem = d / "server_cert.pem"
    pem.write_bytes(x509.load_der_x509_certificate(server_cert.read_bytes()).public_bytes(Encoding.PEM))
    create_client_certificate(d / "client.der", d / "client_key.pem", CLIENT_URI, socket.gethostname())
    create_client_certificate(d / "stranger.der", d / "stranger_key.pem", CLIENT_URI, socket.gethostname())
    return {"dir": d, "server_cert": server_cert, "server_key": server_key, "server_pem": pem,
            "client_cert": d / "client.der", "client_key": d / "client_key.pem",
            "stranger_cert": d / "stranger.der", "stranger_key": d / "stranger_key.pem"}


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=KINDS)
async def secure(request, pki):
    """Basic256Sha256 SignAndEncrypt; the client certificate is trusted, every unknown one rejected."""
    if request.param == "asyncua":
        server = TestServer(free_port(), secure=SecureOptions(pki["server_cert"], pki["server_key"],
                                                              trusted_client_certs=[pki["client_cert"]]))
    else:
        server = NodeOpcuaServer(free_port(), secure={
            "pki": str(pki["dir"] / "node_pki"), "cert": str(pki["server_pem"]),
            "key": str(pki["server_key"]),
            "trusted": [str(pki["client_cert"])], "rejectUnknown": True})
    await server.start()
    yield server
    await server.stop()


def secure_config(endpoint: str, pki: dict, who: str = "client", **security) -> OpcUaConfig:
    sec = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt", "client_certificate": pki[f"{who}_cert"],
           "client_private_key": pki[f"{who}_key"], "server_certificate": pki["server_cert"]} | security
    return config(endpoint, [{"name": "temp", "node": nsu("Temperature")}], timeout_s=3.0, security=sec)


async def test_sign_and_encrypt_reads_with_a_trusted_client_certificate(secure, pki):
    driver = OpcUaDriver(secure_config(secure.endpoint, pki))
    await driver.connect()
    try:
        assert driver._client.security_policy.Mode.name == "SignAndEncrypt"
        assert list((await driver.read()).values) == [21.5]
    finally:
        await driver.close()


async def test_an_untrusted_client_certificate_gets_the_documented_message(secure, pki):
    driver = OpcUaDriver(secure_config(secure.endpoint, pki, who="stranger"))
    with pytest.raises(CertificateUntrusted) as info:
        await driver.connect()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(secure.endpoint)
    assert "the server does not trust our client certificate" in msg
    assert "add it to the server's trusted list" in msg
    assert str(pki["stranger_cert"]) in msg and "AssertionError" not in msg


async def test_the_fetched_server_certificate_pins_by_fingerprint(secure, pki):
    der = await fetch_server_certificate(secure.endpoint, 3.0)
    assert der == pki["server_cert"].read_bytes()
    fp = fingerprint(der)
    assert len(fp) == 95 and fp == fp.upper() and fp.count(":") == 31
    for form in (fp, fp.replace(":", "").lower()):
        driver = OpcUaDriver(secure_config(secure.endpoint, pki, server_certificate=None,
                                           server_certificate_sha256=form))
        await driver.connect()
        await driver.close()
    wrong = "00" + fp[2:]
    with pytest.raises(CertificateUntrusted, match="is not security.server_certificate_sha256"):
        await OpcUaDriver(secure_config(secure.endpoint, pki, server_certificate=None,
                                        server_certificate_sha256=wrong)).connect()


async def test_certs_fetch_writes_the_certificate_and_prints_the_openssl_fingerprint(secure, pki, tmp_path):
    out = tmp_path / "plc.der"
    code, stdout, stderr = await linesentry("certs", "fetch", secure.endpoint, "--out", str(out))
    assert code == 0, stderr
    der = pki["server_cert"].read_bytes()
    assert out.read_bytes() == der
    assert f"sha256 Fingerprint={fingerprint(der)}" in stdout
    dead = f"opc.tcp://127.0.0.1:{free_port()}/"
    code, _, stderr = await linesentry("certs", "fetch", dead)
    assert code == 1 and stderr.count("\n") == 1 and dead in stderr and "connection refused" in stderr


async def linesentry(*args: str) -> tuple[int, str, str]:
    """Run the CLI in a subprocess without blocking this loop (the asyncua server runs on it)."""
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).parent / "linesentry"), *args,
                                                stdout=pipe, stderr=pipe)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()
