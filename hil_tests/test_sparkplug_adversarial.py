"""The Sparkplug node's replay against a host that asks for Rebirth while the backlog is being
replayed (a host that sees historical data it did not expect, or a careless SCADA engineer's loop):
the births interrupt the replay, and the replay must go on after them, not stall with rows pending
until some later outage. Real controller on the simulated plant, real mosquitto, the independent
host application of hil_tests/rig/sparkplug_host.py."""

from __future__ import annotations

import asyncio
import time

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.rig.sparkplug_host import SparkplugHost
from hil_tests.test_sparkplug_outage import GROUP, NODE, SparkplugOutbox, born, node_config


async def test_rebirth_requests_during_the_replay_do_not_stall_it(tmp_path, rig, model):
    primary_id = "scada-primary"
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, GROUP) as observer:
        primary = SparkplugHost(broker.host, broker.port, GROUP, host_id=primary_id, primary=True).start()
        box = SparkplugOutbox(tmp_path / "state")
        config = load_config(node_config(tmp_path, rig, model, broker.port, tag_interval_s=0.1,
                                         primary_host_id=primary_id, replay_per_s=20))
        controller = Controller(config, api_port=0)
        task = await start_controller(controller)
        try:
            await born(observer)
            primary.stop()  # STATE offline: the node stores
            await wait_for(lambda: len(box.committed()) >= 60, timeout=20, what="a backlog while offline")
            mark = observer.mark()
            primary = SparkplugHost(broker.host, broker.port, GROUP, host_id=primary_id, primary=True).start()
            await born(observer, since=mark)
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:  # the replay (20 msg/s) is under way: births cut into it
                observer.rebirth(NODE)
                await asyncio.sleep(0.3)
            await wait_for(lambda: not box.pending(), timeout=30, what="the backlog acked after the rebirths")
        finally:
            await stop_controller(controller, task)
            primary.stop()
        assert observer.violations == []
