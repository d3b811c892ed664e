"""systemd notifications over a REAL unix datagram NOTIFY_SOCKET bound by the test, as systemd
binds it for a `Type=notify` unit (configs/linesentry@.service).

- `linesentry run` (the console script the unit starts) says READY=1 once its API answers, then
  WATCHDOG=1 every WATCHDOG_USEC / 2; a SIGSTOPped process sends none, after SIGCONT they
  resume; SIGTERM brings STOPPING=1 and a clean exit.
- The pings come from the event loop (the housekeeping round), not from a thread: while the
  loop is blocked, none is sent. The test blocks the loop it shares with an in-process controller.
- A notify socket that is gone is logged once and never stops the controller.

The PLCs of the config point at closed ports: notifications do not need a plant.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from controller.config import load_config
from controller.housekeeping import STEPS_FAILING_S
from controller.runtime import Controller
from controller.systemd import SystemdNotify, watchdog_interval
from hil_tests.rig.controller_run import (
    live,
    make_controller,
    start_controller,
    stop_controller,
    without_model,
)
from hil_tests.rig.demo_config import demo_text
from hil_tests.rig.net import free_port, wait_for
from hil_tests.rig.servers import Rig

PING_USEC = 200_000  # systemd's WatchdogSec=0.2s: a ping every 0.1 s
BLOCKED_S = 1.0  # five watchdog timeouts without a ping
IN_FLIGHT_S = 0.05  # a ping sent just before the stop may be stamped just after it


class NotifySocket:
    """A bound AF_UNIX datagram socket and a thread stamping each message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def times(self, first_line: str) -> list[float]:
        return [t for t, m in list(self.received) if m.split("\n")[0] == first_line]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def line_config(tmp_path: Path, api_port: int | None = None) -> Path:
    """The commissioning demo config (no model), its PLCs on closed ports, its API on `api_port`
    (None: the config's, for a Controller given its own)."""
    text = demo_text(tmp_path / "state", tmp_path / "none.npz",
                     opcua_endpoint=f"opc.tcp://127.0.0.1:{free_port()}/linesentry/",
                     modbus_port=free_port(), api_port=api_port)
    path = tmp_path / "line.toml"
    path.write_text(without_model(text))
    return path


def test_the_service_says_ready_pings_not_while_stopped_and_says_stopping(tmp_path):
    notify, api_port = NotifySocket(tmp_path / "notify"), free_port()
    linesentry = Path(sys.executable).with_name("linesentry")
    assert linesentry.exists(), "the linesentry console script is not installed in this venv"
    log = tmp_path / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(linesentry), "run", str(line_config(tmp_path, api_port))],
                                stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | {"NOTIFY_SOCKET": str(notify.path),
                                                  "WATCHDOG_USEC": str(PING_USEC)})
    try:
        deadline = time.monotonic() + 60
        while not notify.times("READY=1"):
            assert proc.poll() is None, f"the controller exited:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no READY=1 in 60 s:\n{log.read_text()[-2000:]}"
            time.sleep(0.02)
        # READY=1 means the API answers now, with no retry.
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v1/status", timeout=5) as r:
            assert r.status == 200
        ready = notify.times("READY=1")[0]
        assert all(t >= ready for t in notify.times("WATCHDOG=1"))  # no ping before READY
        asyncio.run(wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, timeout=10, what="3 pings"))

        os.kill(proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(BLOCKED_S)  # observing an absence: there is no condition to wait for
        resumed = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        assert [t for t in notify.times("WATCHDOG=1") if stopped + IN_FLIGHT_S < t < resumed] == []
        asyncio.run(wait_for(lambda: any(t > resumed for t in notify.times("WATCHDOG=1")), timeout=10,
                             what="a ping after SIGCONT"))

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
        assert len(notify.times("STOPPING=1")) == 1
        assert notify.times("STOPPING=1")[0] > notify.times("WATCHDOG=1")[-1] - IN_FLIGHT_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


async def test_a_blocked_event_loop_sends_no_ping(tmp_path, monkeypatch):
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(PING_USEC))
    controller = Controller(load_config(line_config(tmp_path)), api_port=0)
    task = asyncio.create_task(controller.run())
    try:
        await wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3 or task.done(), timeout=30,
                       what="READY and 3 pings")
        assert not task.done() and len(notify.times("READY=1")) == 1
        blocked = time.monotonic()
        time.sleep(BLOCKED_S)  # on purpose: a blocking call in a coroutine blocks the controller's loop
        unblocked = time.monotonic()
        await wait_for(lambda: any(t > unblocked for t in notify.times("WATCHDOG=1")), timeout=5,
                       what="a ping once the loop runs again")
        assert [t for t in notify.times("WATCHDOG=1") if blocked + IN_FLIGHT_S < t < unblocked] == []
    finally:
        controller.stop()
        await asyncio.wait_for(task, 15)
        notify.close()
    assert len(notify.times("STOPPING=1")) == 1


def test_a_notify_socket_that_is_gone_is_logged_once_and_never_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    monkeypatch.setenv("WATCHDOG_USEC", "2")  # a ping at every call
    notifier = SystemdNotify.from_environment()
    with caplog.at_level(logging.ERROR, logger="controller.systemd"):
        notifier.ready()
        notifier.watchdog()
        notifier.watchdog()
        notifier.stopping()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]  # (and the short-watchdog warning)
    assert len(errors) == 1 and "READY=1" in errors[0].getMessage()


def test_watchdog_interval_follows_what_systemd_passes():
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}, 42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, 42) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "7"}, 42) is None  # a parent's
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    silent = SystemdNotify(None, None)  # no NOTIFY_SOCKET: nothing is sent, nothing fails
    silent.ready()
    silent.watchdog()
    silent.stopping()


def test_a_notify_socket_nobody_reads_never_blocks_the_controller(tmp_path):
    """systemd (PID 1) busy or hung: its socket's queue fills after net.unix.max_dgram_qlen (10)
    messages. A blocking send froze the event loop at the 11th ping: no API, no housekeeping, no
    protection; the sends are non-blocking now, the dropped pings one log line."""
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(tmp_path / "notify"))  # bound, never read
    api_port = free_port()
    linesentry = Path(sys.executable).with_name("linesentry")
    log = tmp_path / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(linesentry), "run", str(line_config(tmp_path, api_port))],
                                stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | {"NOTIFY_SOCKET": str(tmp_path / "notify"),
                                                  "WATCHDOG_USEC": "1"})  # a ping every round (50 ms)
    status = f"http://127.0.0.1:{api_port}/api/v1/status"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the controller exited:\n{log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(status, timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"no API in 60 s:\n{log.read_text()[-2000:]}"
                time.sleep(0.1)
        time.sleep(2 * 10 * 0.05)  # twice the rounds that fill the queue
        with urllib.request.urlopen(status, timeout=5) as r:  # the loop still turns
            assert r.status == 200
        first = deaf.recv(4096).decode()
        assert first.startswith("READY=1")
        assert log.read_text().count("systemd notification 'WATCHDOG=1'") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        deaf.close()


def test_an_abstract_notify_socket_gets_the_messages():
    """NOTIFY_SOCKET=@name is a socket in Linux's abstract namespace (systemd --user, containers)."""
    name = f"linesentry-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(5)
    try:
        notifier = SystemdNotify("@" + name, 1e-9)
        notifier.ready()
        notifier.watchdog()
        assert receiver.recv(4096).decode().startswith("READY=1")
        assert receiver.recv(4096).decode() == "WATCHDOG=1"
    finally:
        receiver.close()


async def test_no_ping_while_the_checks_fail_and_pings_on_while_only_the_flush_fails(tmp_path, monkeypatch,
                                                                                     caplog):
    """The ping says the time-based protections run. Checks that raise every round (comm loss,
    staleness, alarm delays never evaluated) used to be pinged on for ever, the service
    looking healthy to systemd; now they stop the pings (a restart). A failing flush (the disk)
    is logged and pinged on: a restart frees no disk."""
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(PING_USEC))
    controller = Controller(load_config(line_config(tmp_path)), api_port=0)
    task = asyncio.create_task(controller.run())

    def broken(*_args):
        raise RuntimeError("a bug in a check")

    try:
        await wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3 or task.done(), timeout=30,
                       what="READY and 3 pings")
        assert not task.done()
        with caplog.at_level(logging.ERROR, logger="controller.housekeeping"):
            monkeypatch.setattr(controller.health, "check", broken)
            broke = time.monotonic()
            rounds = controller.housekeeping_rounds
            await asyncio.sleep(BLOCKED_S)  # observing an absence: there is no condition to wait for
            assert controller.housekeeping_rounds > rounds + 5  # the rounds run, their checks fail
            assert [t for t in notify.times("WATCHDOG=1") if t > broke + IN_FLIGHT_S] == []
            monkeypatch.undo()
            monkeypatch.setattr(controller.cloud, "feed", broken)
            flushing = time.monotonic()
            await wait_for(lambda: len([t for t in notify.times("WATCHDOG=1") if t > flushing]) >= 3,
                           timeout=5, what="pings while only the flush fails")
        messages = [r.getMessage() for r in caplog.records]
        assert sum("housekeeping checks failed" in m for m in messages) == 1, messages
        assert sum("housekeeping flush failed" in m for m in messages) == 1, messages
    finally:
        monkeypatch.undo()
        controller.stop()
        await asyncio.wait_for(task, 15)
        notify.close()


def test_a_watchdog_shorter_than_the_housekeeping_rounds_is_one_warning(monkeypatch, caplog):
    """WatchdogSec=20ms: pings come every 50 ms round at best, so systemd kills the service over and
    over; that used to be silent until the restarts showed in the journal."""
    monkeypatch.setenv("WATCHDOG_USEC", "20000")
    with caplog.at_level(logging.WARNING, logger="controller.systemd"):
        SystemdNotify.from_environment()
        monkeypatch.setenv("WATCHDOG_USEC", "10000000")
        SystemdNotify.from_environment()
    (record,) = caplog.records
    assert record.getMessage().startswith("WatchdogSec=0.02s is shorter than two 0.05 s housekeeping")


async def test_no_ping_while_every_batch_fails_on_the_hot_path(tmp_path, monkeypatch, caplog):
    """The PLCs deliver, but every batch's step raises (a detector fault): the driver sessions are
    dropped and reopened, no comm loss is ever seen (data arrives), the alarms and actions never
    see a batch, and housekeeping kept pinging: a controller protecting nothing looked healthy.
    Past STEPS_FAILING_S of failed steps the pings stop (a restart) and the cause is logged once."""
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(PING_USEC))
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        controller = make_controller(tmp_path, rig, None, without_model)
        task = await start_controller(controller)
        try:
            await live(controller)
            await wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, timeout=10, what="3 pings")

            def broken(*_args):
                raise FloatingPointError("detector fault")

            with caplog.at_level(logging.ERROR, logger="controller.housekeeping"):
                monkeypatch.setattr(controller.pipeline.detector, "step", broken)
                broke = time.monotonic()
                await wait_for(lambda: any(controller.pipeline.failing_since(p.binding) is not None
                                           for p in controller.plcs), timeout=5, what="a failed step")
                await asyncio.sleep(STEPS_FAILING_S + BLOCKED_S)
                late = [t for t in notify.times("WATCHDOG=1") if t > broke + STEPS_FAILING_S + 0.2]
                assert late == []
                monkeypatch.undo()
                fixed = time.monotonic()
                await wait_for(lambda: any(t > fixed for t in notify.times("WATCHDOG=1")), timeout=20,
                               what="pings once the steps succeed again")
            messages = [r.getMessage() for r in caplog.records]
            assert sum("every batch from " in m and "FloatingPointError: detector fault" in m
                       for m in messages) == 1, messages
        finally:
            monkeypatch.undo()
            await stop_controller(controller, task)
            notify.close()


def unit_environment() -> dict[str, str]:
    """The shipped unit's Environment= settings that need no systemd specifier (%C, %i, ...)."""
    unit = Path(__file__).resolve().parents[2] / "configs" / "linesentry@.service"
    pairs = [line.split("=", 1)[1].split("=", 1) for line in unit.read_text().splitlines()
             if line.startswith("Environment=")]
    return {k: v for k, v in pairs if "%" not in v}


def test_the_watchdogs_sigabrt_leaves_the_stuck_stack_in_the_log(tmp_path):
    """systemd's watchdog kills with SIGABRT: the service died without a word on where its loop was
    stuck; under the unit's environment (PYTHONFAULTHANDLER=1) it prints every thread's stack."""
    notify, api_port = NotifySocket(tmp_path / "notify"), free_port()
    linesentry = Path(sys.executable).with_name("linesentry")
    log = tmp_path / "service.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"} | unit_environment()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(linesentry), "run", str(line_config(tmp_path, api_port))],
                                stdout=out, stderr=subprocess.STDOUT,
                                env=env | {"NOTIFY_SOCKET": str(notify.path)})
    try:
        deadline = time.monotonic() + 60
        while not notify.times("READY=1"):
            assert proc.poll() is None, f"the controller exited:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no READY=1 in 60 s:\n{log.read_text()[-2000:]}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGABRT)  # what systemd sends when WatchdogSec passes without a ping
        assert proc.wait(30) == -signal.SIGABRT
        text = log.read_text()
        assert "Fatal Python error: Aborted" in text and "Current thread" in text, text[-2000:]
        assert 'File "' in text.split("Fatal Python error: Aborted", 1)[1]  # the stack, with files
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


async def test_no_ping_while_one_plcs_batches_all_fail_and_the_others_go_through(tmp_path, monkeypatch,
                                                                                  caplog):
    """Only the conveyor's batches fail (the press's go through): its tags were never seen by the
    detector or the alarms again, with no comm loss (data arrives) and the pings going on."""
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(PING_USEC))
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        controller = make_controller(tmp_path, rig, None, without_model)
        task = await start_controller(controller)
        try:
            await live(controller)
            await wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, timeout=10, what="3 pings")
            conveyor = next(p for p in controller.plcs if p.name == "conveyor")
            apply = controller.pipeline.line.apply

            def conveyor_broken(binding, batch, mono):
                if binding is conveyor.binding:
                    raise IndexError("conveyor batch fault")
                return apply(binding, batch, mono)

            with caplog.at_level(logging.ERROR, logger="controller.housekeeping"):
                monkeypatch.setattr(controller.pipeline.line, "apply", conveyor_broken)
                broke = time.monotonic()
                await asyncio.sleep(STEPS_FAILING_S + BLOCKED_S)
                assert [t for t in notify.times("WATCHDOG=1") if t > broke + STEPS_FAILING_S + 0.2] == []
            messages = [r.getMessage() for r in caplog.records]
            assert any("every batch from conveyor failed" in m for m in messages), messages
        finally:
            monkeypatch.undo()
            await stop_controller(controller, task)
            notify.close()
