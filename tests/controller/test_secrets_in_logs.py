"""No configured secret ever reaches the service log, at any level, from any logger.

The real `linesentry run` (its own process) at DEBUG for every logger, asyncua included, holds
two password-protected OPC UA sessions against asyncua test servers: one Basic256Sha256
SignAndEncrypt, one over policy None (allowed explicitly), where asyncua's DEBUG dumps carry
`Password=b'...'` in clear. [sync] reads its token from the environment too. The captured
output must contain none of the passwords, the sync token or the API tokens.
"""

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from controller.logs import SCRUBBED
from drivers.opcua.security import create_client_certificate
from hil_tests.rig.net import free_port
from tests.drivers.opcua_server import NS_URI, SecureOptions, TestServer, make_server_certificate

LINESENTRY = Path(sys.executable).with_name("linesentry")


def config_text(tmp: Path, secure: TestServer, plain: TestServer, certs: dict, api_port: int) -> str:
    tag = f'node = "nsu={NS_URI};s=Line1.Temperature"'
    return f"""
[controller]
site = "s"
line = "secrets"
state_dir = "{tmp / 'state'}"
api_port = {api_port}

[[opcua]]
name = "secure"
endpoint = "{secure.endpoint}"
timeout_s = 2.0
  [opcua.security]
  policy = "Basic256Sha256"
  mode = "SignAndEncrypt"
  client_certificate = "{certs['client_cert']}"
  client_private_key = "{certs['client_key']}"
  server_certificate = "{certs['server_cert']}"
  username = "operator"
  password_env = "LS_TEST_PASSWORD_SECURE"
  [[opcua.tags]]
  name = "temp_secure"
  {tag}

[[opcua]]
name = "plain"
endpoint = "{plain.endpoint}"
timeout_s = 2.0
  [opcua.security]
  username = "operator"
  password_env = "LS_TEST_PASSWORD_PLAIN"
  allow_plaintext_password = true
  [[opcua.tags]]
  name = "temp_plain"
  {tag}

[sync]
url = "http://127.0.0.1:{free_port()}"
org = "o"
bucket = "b"
token_env = "LS_TEST_SYNC_TOKEN"
"""


async def test_no_secret_in_the_debug_log_of_secured_sessions(tmp_path):
    secret = {"LS_TEST_PASSWORD_SECURE": "pw-" + secrets.token_hex(12),
              "LS_TEST_PASSWORD_PLAIN": "pw-" + secrets.token_hex(12),
              "LS_TEST_SYNC_TOKEN": "tok-" + secrets.token_hex(16)}
    host = socket.gethostname()
    server_cert, server_key = make_server_certificate(tmp_path)
    create_client_certificate(tmp_path / "client.der", tmp_path / "client_key.pem",
                              "urn:linesentry:test-client", host)
    certs = {"server_cert": server_cert, "client_cert": tmp_path / "client.der",
             "client_key": tmp_path / "client_key.pem"}
    secure = await TestServer(free_port(), secure=SecureOptions(
        server_cert, server_key, trusted_client_certs=[certs["client_cert"]],
        users={"operator": secret["LS_TEST_PASSWORD_SECURE"]})).start()
    plain = await TestServer(free_port()).start()
    api_port = free_port()
    config = tmp_path / "line.toml"
    config.write_text(config_text(tmp_path, secure, plain, certs, api_port))
    log_path = tmp_path / "out.log"
    try:
        with log_path.open("w") as out:
            proc = subprocess.Popen(
                [str(LINESENTRY), "run", str(config), "--log-level", "DEBUG", "--log-rate-limit", "0",
                 "--log-levels", "asyncua=DEBUG,aiohttp=DEBUG,influxdb_client=DEBUG,urllib3=DEBUG"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **secret, "COLUMNS": "200"})
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                deadline = time.monotonic() + 30
                while True:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        status = await (await http.get(f"http://127.0.0.1:{api_port}/api/v1/status")).json()
                        if all(p["state"] == "connected" for p in status["plcs"]):
                            break
                    assert proc.poll() is None, log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, "both sessions did not connect"
                    await asyncio.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    finally:
        await secure.stop()
        await plain.stop()
    log = log_path.read_text()
    tokens = [(tmp_path / "state" / name).read_text().strip()
              for name in ("api-token", "api-read-token", "api-engineer-token")]
    assert "DEBUG asyncua" in log  # asyncua really logged at DEBUG
    assert f"Password=b'{SCRUBBED}'" in log  # its plaintext dump was there, and scrubbed
    for value in [*secret.values(), *tokens]:
        assert value not in log and repr(value.encode())[2:-1] not in log
