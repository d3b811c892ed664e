"""PLC health as pure logic (a fake driver, a stepped clock): the supervisor's on_state is the one
channel for connection changes, comm loss is raised by the liveness age, safe state is written
once per loss (or only announced in shadow mode)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.clock import Clock
from controller.config import load_config
from controller.events import EventLog
from controller.journal import Journal
from controller.linestate import COMM_LOST, GOOD, LineState
from controller.plc_health import Plc, PlcHealth
from drivers.base import ConnectionState, DriverStats

LINE = """
[controller]
site = "test"
line = "health"
state_dir = "{state}"
shadow = {shadow}

[[modbus]]
name = "press"
host = "127.0.0.1"
port = 1502
poll_interval_s = 0.1
stale_timeout_s = 1.0
on_comm_loss = "safe_state"
safe_state = [{{ tag = "stop", value = true }}]
  [[modbus.tags]]
  name = "pressure"
  table = "holding_register"
  dtype = "uint16"
  address = 0
  [[modbus.tags]]
  name = "stop"
  table = "coil"
  address = 0
  dtype = "bool"
  writable = true
"""


class SteppedClock(Clock):
    def __init__(self) -> None:
        self.now = 100.0

    def mono(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1e9 + self.now


class FakeDriver:
    """Only what PlcHealth reads of a driver: stats.last_alive, alive_interval_s."""

    def __init__(self) -> None:
        self.stats = DriverStats()
        self.alive_interval_s = 0.2


class Rig:
    def __init__(self, tmp_path, shadow: bool = False) -> None:
        path = tmp_path / "line.toml"
        path.write_text(LINE.format(state=tmp_path / "state", shadow=str(shadow).lower()))
        config = load_config(path)
        (_, plc_config), = config.plcs()
        self.line = LineState(list(config.tags()), [])
        self.clock = SteppedClock()
        self.journal = Journal(EventLog())
        self.plc = Plc(plc_config, FakeDriver(), self.line.binding(["pressure", "stop"]), 1.0)
        self.writes: list = []
        self.resteps = 0
        self.health = PlcHealth([self.plc], self.line, self.journal.events, self.journal, self.clock,
                                shadow=shadow, issue=self.writes.extend, restep=self._restep)
        self.health.start()

    def _restep(self) -> None:
        self.resteps += 1

    def events(self) -> list[tuple[str, str]]:
        self.journal.flush()
        return [(e["kind"], e["message"]) for e in self.journal.events.since()]


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


def test_a_lost_session_marks_the_plcs_tags_comm_lost_at_once(rig):
    rig.line.quality[:] = GOOD
    rig.health.on_state(rig.plc, ConnectionState.CONNECTED, "")
    assert rig.plc.state is ConnectionState.CONNECTED and rig.resteps == 0
    rig.health.on_state(rig.plc, ConnectionState.BACKOFF, "ConnectionLost: reset by peer")
    assert rig.plc.state is ConnectionState.BACKOFF
    assert np.all(rig.line.quality[rig.plc.binding] == COMM_LOST) and np.all(rig.line.fresh[rig.plc.binding])
    assert rig.resteps == 1  # the detector and the alarms see it now, not at the next batch
    assert not rig.plc.comm_lost  # the comm-loss alarm waits for stale_timeout_s (the age)
    assert [m for _, m in rig.events()] == ["connected", "connection lost: ConnectionLost: reset by peer"]


def test_a_permanent_failure_marks_the_tags_lost_and_says_no_more_attempts(rig, caplog):
    rig.line.quality[:] = GOOD
    rig.health.on_state(rig.plc, ConnectionState.FAILED, "CredentialsRejected: BadUserAccessDenied")
    assert np.all(rig.line.quality[rig.plc.binding] == COMM_LOST) and rig.resteps == 1
    (message,) = [m for _, m in rig.events()]
    assert "no more attempts" in message and "BadUserAccessDenied" in message
    assert any(r.levelname == "ERROR" and "no more attempts" in r.getMessage() for r in caplog.records)


def test_a_plc_that_never_delivers_is_comm_lost_after_its_timeout_from_the_start(rig):
    rig.clock.now += 0.9
    assert not rig.health.check(rig.clock.now) and not rig.plc.comm_lost
    rig.clock.now += 0.2
    assert rig.health.check(rig.clock.now) and rig.plc.comm_lost
    assert not rig.health.check(rig.clock.now)  # raised once
    (write,) = rig.writes
    assert (write.action, write.tag, write.value) == ("safe_state:press", "stop", True)
    kinds = rig.events()
    assert kinds[0][0] == "driver" and kinds[0][1].startswith("no good data for 1.10 s since the controller "
                                                              "started (stale_timeout_s 1): comm loss")
    assert kinds[1] == ("action", "writing stop=True (comm loss)")


def test_a_silent_link_is_caught_by_the_age_and_cleared_by_good_data(rig):
    rig.plc.driver.stats.last_alive = rig.clock.now
    rig.health.check(rig.clock.now)
    assert rig.plc.link.delivered and not rig.plc.comm_lost
    rig.clock.now += 1.5  # connected, no error, no data: only the age can tell
    assert rig.health.check(rig.clock.now) and rig.plc.comm_lost
    lost = [m for _, m in rig.events() if m.startswith("no good data")]
    assert lost[0].startswith("no good data for 1.50 s since its last good data"), lost
    rig.health.safe_state_failed("press")  # controller.writes on a failed safe-state write
    assert rig.plc.link.safe_state_failed
    rig.plc.driver.stats.last_alive = rig.clock.now
    rig.health.check(rig.clock.now)
    assert not rig.plc.comm_lost and not rig.plc.link.safe_state_failed
    rig.clock.now += 1.5
    rig.health.check(rig.clock.now)
    assert len(rig.writes) == 2  # a new loss writes the safe state again
    assert "good data again: comm loss cleared" in [m for _, m in rig.events()]


def test_in_shadow_mode_the_safe_state_is_announced_never_written(tmp_path):
    rig = Rig(tmp_path, shadow=True)
    rig.clock.now += 2.0
    rig.health.check(rig.clock.now)
    assert rig.writes == []
    assert ("action", "shadow: would write stop=True (comm loss)") in rig.events()


def test_the_status_says_the_state_the_supervisor_reported(rig):
    assert rig.health.status(rig.plc)["state"] == "disconnected"
    rig.health.on_state(rig.plc, ConnectionState.CONNECTING, "")
    status = rig.health.status(rig.plc)
    assert status["state"] == "connecting" and status["last_good_data_age_s"] is None
    assert math.isinf(rig.plc.driver.stats.last_alive)
