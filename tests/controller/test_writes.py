"""Writes as pure logic over a fake driver: one at a time per tag, every result (an action's
confirmation or failure, a safe-state write's) back through the journal, in order after the
decision that caused it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from controller.actions import ActionEngine, WriteRequest
from controller.clock import Clock
from controller.events import EventLog
from controller.journal import Journal
from controller.writes import Writes
from drivers.errors import WriteFailed


@dataclass
class Write:
    tag: str
    value: bool
    confirm_within_s: float | None = 1.0


@dataclass
class Action:
    name: str
    alarm: str
    write: Write
    interlocks: tuple = ()
    latch: bool = False
    min_interval_s: float = 0.0
    confirm_within_s: float | None = 1.0
    shadow: bool = False


class FakeDriver:
    """Records writes; a tag in `fail` is refused; each write takes `delay` seconds."""

    def __init__(self, delay: float = 0.0, fail: frozenset[str] = frozenset()) -> None:
        self.delay, self.fail = delay, fail
        self.busy: set[str] = set()
        self.overlaps = 0
        self.written: list[tuple[str, float]] = []

    async def write(self, tag: str, value: float) -> None:
        self.overlaps += tag in self.busy
        self.busy.add(tag)
        try:
            await asyncio.sleep(self.delay)
            if tag in self.fail:
                raise WriteFailed(f"{tag}: readback 0, wrote {value:g}")
            self.written.append((tag, value))
        finally:
            self.busy.discard(tag)


def parts(driver: FakeDriver):
    actions = ActionEngine([Action("stop_line", "hot", Write("stop", True))])
    journal = Journal(EventLog())
    failed: list[str] = []
    writes = Writes({"stop": driver, "valve": driver}, actions, journal, Clock(), failed.append)
    return actions, journal, writes, failed


def fire(actions: ActionEngine, journal: Journal) -> list[WriteRequest]:
    reqs = list(actions.evaluate(1.0, ("hot",), {}, 1.0))
    journal.put(actions.take_events())
    return reqs


def results(journal: Journal) -> list[tuple[str, str]]:
    return [(e["source"], e["result"]) for e in journal.events.since()]


async def test_an_action_write_is_confirmed_through_the_journal_after_its_decision():
    driver = FakeDriver()
    actions, journal, writes, _ = parts(driver)
    writes.issue(fire(actions, journal))
    await writes.finish()
    assert driver.written == [("stop", 1.0)]
    assert results(journal) == [("stop_line", "fired"), ("stop_line", "confirmed")]
    assert not actions.has_failed("stop_line") and writes.in_flight == 0


async def test_a_refused_write_fails_the_action_with_the_drivers_reason():
    actions, journal, writes, _ = parts(FakeDriver(fail=frozenset({"stop"})))
    writes.issue(fire(actions, journal))
    await writes.finish()
    assert actions.has_failed("stop_line")
    last = journal.events.since()[-1]
    assert last["result"] == "failed" and "readback 0" in last["message"]


async def test_a_failed_safe_state_write_tells_plc_health_and_is_an_action_event():
    """Recorded by the write task itself: in the event log before the alarm it raises is seen."""
    actions, journal, writes, failed = parts(FakeDriver(fail=frozenset({"valve"})))
    writes.issue([WriteRequest("safe_state:press", "valve", False, 1.0, None),
                  WriteRequest("safe_state:press", "stop", True, 1.0, None)])
    await writes.finish()
    assert failed == ["press"]
    assert sorted(results(journal)) == [("safe_state:press", "confirmed"), ("safe_state:press", "failed")]
    assert journal.action_counts == {"confirmed": 1, "failed": 1}


async def test_writes_to_one_tag_never_overlap():
    driver = FakeDriver(delay=0.02)
    _, _, writes, _ = parts(driver)
    writes.issue([WriteRequest(f"safe_state:p{k}", "stop", True, 1.0, None) for k in range(4)])
    await writes.finish()
    assert driver.overlaps == 0 and len(driver.written) == 4
