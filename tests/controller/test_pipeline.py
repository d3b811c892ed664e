"""The step pipeline without sockets or asyncio: batch -> line state -> rules-only detector ->
alarms -> first out -> actions -> the writes, with every transition and decision in the journal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from controller.actions import ActionEngine
from controller.alarms import AlarmEngine
from controller.config import load_config
from controller.events import EventLog
from controller.journal import Journal
from controller.linestate import LineState
from controller.pipeline import LinkFlags, StepPipeline
from drivers.base import Quality, ReadingBatch
from models import StreamingDetector

LINE = """
[controller]
site = "test"
line = "pipe"
state_dir = "{state}"

[[modbus]]
name = "press"
host = "127.0.0.1"
port = 1502
  [[modbus.tags]]
  name = "oil_temp"
  table = "holding_register"
  dtype = "uint16"
  address = 0
  [[modbus.tags]]
  name = "pressure"
  table = "holding_register"
  dtype = "uint16"
  address = 1
  [[modbus.tags]]
  name = "stop"
  table = "coil"
  address = 0
  dtype = "bool"
  writable = true

[detector]
tags = ["oil_temp", "pressure"]
  [detector.limits]
  pressure = {{ lo = 0.0, hi = 100.0 }}

[[alarms]]
name = "oil_hot"
source = "threshold:oil_temp > 60"
message = "hot"

[[alarms]]
name = "pressure_limit"
source = "tag:pressure:limit"
message = "pressure out of range"

[[alarms]]
name = "press_comm"
source = "comm:press"
message = "press lost"

[[actions]]
name = "stop_hot"
alarm = "oil_hot"
write = {{ tag = "stop", value = true }}
message = "stop when hot"
"""


@pytest.fixture
def pipe(tmp_path):
    path = tmp_path / "line.toml"
    path.write_text(LINE.format(state=tmp_path / "state"))
    config = load_config(path)
    tags = list(config.tags())
    line = LineState(tags, config.detector_tags())
    link = LinkFlags()
    journal = Journal(EventLog())
    p = StepPipeline(config, line, links={"press": link}, tag_plc={t: "press" for t in tags}, builtin=[],
                     alarms=AlarmEngine(config.alarms), actions=ActionEngine(config.actions), journal=journal)
    p.detector = StreamingDetector.rules_only(config.detector_tags(), limits=config.detector_spec().limits)
    return Rig(p, link, line.binding(tags))


@dataclass
class Rig:
    pipe: StepPipeline
    link: LinkFlags  # what plc_health would write
    binding: np.ndarray

    def step(self, b: ReadingBatch, mono: float):
        return self.pipe.step(self.binding, b, mono, 1000.0 + mono)

    def __getattr__(self, name: str):
        return getattr(self.pipe, name)


def batch(oil: float, pressure: float, quality: Quality = Quality.GOOD) -> ReadingBatch:
    q = np.full(2, int(quality), dtype=np.uint8)
    return ReadingBatch(index=np.array([0, 1], dtype=np.int32), values=np.array([oil, pressure]),
                        quality=q, source_ts=np.full(2, np.nan), receive_ts=np.full(2, 0.0))


def journal_lines(p: Rig) -> list[tuple[str, str, str]]:
    p.journal.flush()
    return [(e["kind"], e["source"], e["message"]) for e in p.journal.events.since()]


def test_a_threshold_alarm_fires_its_action_and_the_journal_reads_in_order(pipe):
    assert list(pipe.step(batch(20.0, 50.0), 1.0)) == []
    writes = pipe.step(batch(70.0, 50.0), 2.0)
    assert [(w.action, w.tag, w.value) for w in writes] == [("stop_hot", "stop", True)]
    assert pipe.alarms.active() == ("oil_hot",)
    assert pipe.first_out.startswith("oil_hot")
    lines = journal_lines(pipe)
    assert [(k, s) for k, s, _ in lines] == [("alarm", "oil_hot"), ("action", "stop_hot")]
    assert "first out: oil_hot" in lines[1][2]
    pipe.actions.confirm("stop_hot", 2.1, True)  # what controller.writes does with the readback
    # The step is timed into the ring (status, metrics, benchmarks).
    assert pipe.step_latency.written == 2


def test_the_detector_flags_a_limit_and_the_tag_alarm_follows(pipe):
    pipe.link.delivered = True
    pipe.step(batch(20.0, 150.0), 1.0)
    assert "pressure_limit" in pipe.alarms.active()
    assert pipe.first_out == "pressure_limit (tag:pressure:limit)"


def test_a_tag_of_a_plc_never_heard_from_raises_nothing_but_comm_loss(pipe):
    pipe.step(batch(np.nan, np.nan, Quality.COMM_LOST), 1.0)
    assert pipe.alarms.active() == ()  # not heard yet is not a sensor fault
    pipe.link.comm_lost = True  # plc_health after stale_timeout_s
    pipe.tick(2.0, 1002.0, restep=True)
    assert pipe.alarms.active() == ("press_comm",)
    assert pipe.first_out == "press_comm (comm:press)"


def test_a_tag_alarm_is_suppressed_while_its_plc_is_comm_lost(pipe):
    pipe.link.delivered = True
    pipe.step(batch(20.0, 150.0), 1.0)
    pipe.link.comm_lost = True
    pipe.tick(2.0, 1002.0, restep=True)
    states = {a["name"]: a["state"] for a in pipe.alarms.status()}
    assert states["pressure_limit"] == "SUPPRESSED" and states["press_comm"] == "UNACK"


def test_the_same_batches_give_the_same_numbers_bit_for_bit(tmp_path, pipe):
    rng = np.random.default_rng(3)
    frames = [batch(float(a), float(b)) for a, b in rng.uniform(0, 120, size=(50, 2))]
    outputs = []
    for _ in range(2):
        pipe.detector.reset()
        run = []
        for k, b in enumerate(frames):
            pipe.step(b, float(k))
            run.append((pipe.detector.out.copy(), pipe.detector.tag_flags.copy()))
        outputs.append(run)
    for (out_a, flags_a), (out_b, flags_b) in zip(*outputs, strict=True):
        assert out_a.tobytes() == out_b.tobytes() and flags_a.tobytes() == flags_b.tobytes()
