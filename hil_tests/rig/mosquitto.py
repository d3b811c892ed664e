"""A real MQTT broker for the rig: Debian's mosquitto on a free port, started and stopped by the test.

    with Mosquitto(tmp_path) as broker:                 # plain MQTT on 127.0.0.1:<free port>
        ...broker.url                                   # "mqtt://127.0.0.1:<port>"
    with Mosquitto(tmp_path, tls=True, users={"line": "secret"}, acl=ACL) as broker:
        ...broker.ca_file, broker.cert_file, broker.key_file   # a throwaway CA and a client certificate

`stop()` is a clean stop (retained messages saved), `kill()` a SIGKILL (what a crashed or
power-cut broker does: sessions drop without DISCONNECT, the wills are sent by no one), and
`start()` again reuses the port, so clients reconnect to the same address. Retained messages
persist in the work directory across restarts (autosave every second), as a production
broker keeps them. Certificates come from the openssl command line (EC P-256, valid two days).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from hil_tests.rig.net import free_port
from hil_tests.rig.processes import end_process


class MosquittoMissing(RuntimeError):
    """The broker binary is not installed: a test that needs it fails with this (never skips)."""


def find_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoMissing("mosquitto not found: install Debian's package (apt-get install mosquitto, "
                           "or `make system-deps`)")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=linesentry test CA", cwd=directory)
    for name, san in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", None)):
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
                 f"/CN=linesentry test {name}", cwd=directory)
        ext: tuple[str, ...] = ()
        if san:
            (directory / "san.ext").write_text(san + "\n")
            ext = ("-extfile", "san.ext")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", *ext, cwd=directory)
    return {n: directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


class Mosquitto:
    """One broker process in `workdir` (config, log, persistence, certificates)."""

    host = "127.0.0.1"

    def __init__(self, workdir: str | Path, port: int | None = None, *, tls: bool = False,
                 acl: str | None = None, users: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir) / f"mosquitto-{port or 'auto'}-{time.monotonic_ns()}"
        self.port = port or free_port()
        self.tls = tls
        self.acl = acl  # mosquitto acl_file text; None = every client may use every topic
        self.users = users or {}  # username -> password; empty = anonymous clients allowed
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file = self.cert_file = self.key_file = None
        self._config: Path | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} {self.host}", "persistence true",
                 f"persistence_location {self.workdir}/", "autosave_interval 1",
                 f"log_dest file {self.log_path}", "log_type error", "log_type warning", "log_type notice",
                 "log_type information", "connection_messages true"]
        if os.geteuid() == 0:  # mosquitto drops root for user "mosquitto", who cannot read a 0700 tmp dir
            lines.append("user root")
        if self.tls:
            certs = make_certificates(self.workdir / "certs")
            self.ca_file, self.cert_file = certs["ca.crt"], certs["client.crt"]
            self.key_file = certs["client.key"]
            lines += [f"cafile {certs['ca.crt']}", f"certfile {certs['server.crt']}",
                      f"keyfile {certs['server.key']}", "require_certificate true"]
        if self.users:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            (self.workdir / "acl").write_text(self.acl)
            lines.append(f"acl_file {self.workdir / 'acl'}")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self, timeout: float = 10.0) -> Mosquitto:
        binary = find_binary()
        if self._config is None:
            self._config = self._write_config()
        log = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115 (kept open by the process)
        self.proc = subprocess.Popen([binary, "-c", str(self._config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:  # ready once it accepts TCP connections on its port
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto not accepting on {self.url} after {timeout} s: {self.tail()}")
            time.sleep(0.02)

    def tail(self, n: int = 10) -> str:
        """The last lines of the broker's log (for failure messages)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " | ".join(text.splitlines()[-n:]) or "(no log)"

    def stop(self) -> None:
        """A clean stop: clients see the connection close, retained messages are saved."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, nothing saved since the last autosave."""
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        end_process(self.proc, sig)
        self.proc = None

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
