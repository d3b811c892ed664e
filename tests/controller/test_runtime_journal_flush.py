"""A batch that makes an alarm transition is journaled right after it (the event stream, the HMI
and the Sparkplug node see it at once), not at the next housekeeping round up to 50 ms later."""

import asyncio
import time

import numpy as np

from controller.config import load_config
from controller.runtime import Controller
from drivers.base import Quality, ReadingBatch
from hil_tests.rig.service_process import closed_ports_config


def over_limit(plc, tag: str, value: float) -> ReadingBatch:
    names = [t.name for t in plc.config.driver.tags]
    now = time.time()
    return ReadingBatch(index=np.array([names.index(tag)], dtype=np.int32), values=np.array([value]),
                        quality=np.array([int(Quality.GOOD)], dtype=np.uint8), source_ts=np.array([now]),
                        receive_ts=np.array([now]))


async def test_an_alarm_from_a_batch_is_an_event_after_one_loop_turn(tmp_path):
    # not started: no supervisor, housekeeping or write task can flush the journal in its place
    controller = Controller(load_config(closed_ports_config(tmp_path)), api_port=0)
    controller.pipeline.detector = controller.models.initial()  # what start does (rules only: no model)
    plc = next(p for p in controller.plcs if "bearing_temp" in [t.name for t in p.config.driver.tags])
    controller.handle_batch(plc, over_limit(plc, "bearing_temp", 150.0))  # the limit is 90 degC
    assert not controller.events.since(0)  # the step only queues (no logging, no JSON on the hot path)
    await asyncio.sleep(0)  # one turn of the loop: far less than a housekeeping round (50 ms)
    raised = [e for e in controller.events.since(0) if e["source"] == "bearing_temp_limit"]
    assert raised and raised[0]["state"] == "UNACK", controller.events.since(0)
