"""The model lifecycle on real servers, attacked.

- A flaky plant network: the broker freezes (SIGSTOP: its sockets stay open and nothing answers) while a
  challenger runs on the rig, and the controller is stopped then. The stop must still end within a bound
  (the MQTT link, the shadow agent and its lifecycle task end through controller.tasks.cancel_and_wait),
  and the restart must run the same challenger beside the same active model. Holds today.
- The fleet's `linesentry model rollback` after the edge rolled a misbehaving model back by itself: the
  edge then reports no previous model on purpose (the bad one is no rollback target); the command must not
  fall back to the deployments log and send the bad model again, also after a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiomqtt
import pytest

from controller import registry
from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.test_model_lifecycle import LINE, lifecycle_config, model_state, variant
from hil_tests.test_shadow import PREFIX, Fleet
from models import artifact
from models.detector import MODEL_ARRAYS
from models.kernels import D_THRESHOLD_ON

STOP_BOUND_S = 30.0  # generous on 2 shared cores: a hang is for ever, a slow stop a few seconds


async def test_a_stop_with_the_broker_frozen_mid_challenge_ends_and_the_restart_runs_the_same_challenge(
        tmp_path, rig, model):
    reg = tmp_path / "registry"
    m1 = artifact.read(model, ())[1]["checksum"]
    first = float(artifact.read(model, MODEL_ARRAYS)[0]["decision_params"][D_THRESHOLD_ON])
    m2 = registry.push(reg, variant(model, tmp_path / "m2.npz", threshold=first * 1.02))[0]["id"]
    with Mosquitto(tmp_path) as broker:
        config = lifecycle_config(tmp_path, rig, model, broker, reg, 'promotion = "manual"')
        controller = Controller(load_config(config), api_port=0)
        task = await start_controller(controller)
        frozen = False
        try:
            async with Fleet(broker) as fleet:
                await wait_for(lambda: model_state(fleet.last).get("id") == m1, timeout=15, what="a report")
                await fleet.desire("challenger", m2, 1)
                await wait_for(lambda: (c := model_state(fleet.last).get("challenger")) and c.get("running")
                               and c["rows"] > 0, timeout=30, what="the challenger stepping")
            os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker host hangs: TCP stays up, nothing answers
            frozen = True
            controller.stop()
            async with asyncio.timeout(STOP_BOUND_S):
                await task
        finally:
            if frozen:
                os.kill(broker.proc.pid, signal.SIGCONT)
            if not task.done():
                await stop_controller(controller, task)

        again = Controller(load_config(config), api_port=0)
        task = await start_controller(again)
        try:
            assert again.detector.metadata["checksum"] == m1  # the active model: unchanged by the challenge
            running = again.pipeline.challenger
            assert running is not None and running.detector.metadata["checksum"] == m2
            assert running.detector is not again.detector
            await wait_for(lambda: running.rows > 0, timeout=30, what="the challenger stepping after restart")
        finally:
            await stop_controller(again, task)


async def edge_report_after_an_automatic_rollback(tmp_path, model, *,
                                                  restarted: bool) -> tuple[dict, str, str]:
    """The reported document the real edge code builds once it rolled a misbehaving promoted model back
    by itself (and, `restarted`, after a restart since): (report, the model it runs, the bad one)."""
    from tests.controller.test_challenger import challenger_model, config_with
    from tests.controller.test_shadow_agent import FakeLink, Line

    config = config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600")
    async with Line(config, FakeLink()) as line:
        p = line.controller.pipeline
        first = p.detector.metadata["checksum"]
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 1) == "applied"
        bad = p.detector.metadata["checksum"]
        p.watch.rows, p.watch.rises = 10_000, 200
        await line.agent.lifecycle.decide()
        assert p.detector.metadata["checksum"] == first  # rolled back
        report, _ = line.agent.build_report()
    if restarted:
        async with Line(config, FakeLink(connected=False)) as line:
            report, _ = line.agent.build_report()
    return report, first, bad


@pytest.mark.parametrize("restarted", [
    False,  # Was (before 59aaa0c): model rollback re-sent the model the edge had just rolled back from
    True,  # Was (before 1a5b2b2): after a restart the edge reported neither previous nor watch
])
async def test_model_rollback_after_an_automatic_rollback_never_sends_the_rolled_back_model_again(
        tmp_path, model, restarted):
    """The edge reports previous: null on purpose after its own rollback (the bad model is no target);
    `linesentry model rollback` must not take the deployments log's word over it and send the bad one."""
    (tmp_path / "edge").mkdir()
    report, m1, bad = await edge_report_after_an_automatic_rollback(tmp_path / "edge", model,
                                                                    restarted=restarted)
    assert report["state"]["model"]["previous"] is None
    assert report["desired"]["model_version"] == {"value": m1, "version": 2, "by": "edge:rollback"}
    reg = tmp_path / "registry"
    registry.push(reg, model)
    site, line = LINE.split("/")
    registry.log_deployment(reg, site, line, {"at": time.time(), "by": "ann", "action": "promote", "id": bad,
                                              "version": 5, "previous": m1})
    with Mosquitto(tmp_path) as broker:
        async with aiomqtt.Client(broker.host, broker.port, identifier="edge-stand-in") as edge:
            await edge.publish(f"{PREFIX}/reported", json.dumps(report), qos=1, retain=True)
        launch = [sys.executable, "-c", "from controller.cli import app; app(prog_name='linesentry')"]
        done = await asyncio.to_thread(
            subprocess.run, [*launch, "model", "rollback", "--line", LINE, "--broker",
                             f"{broker.host}:{broker.port}", "--registry", str(reg), "--by", "bob"],
            capture_output=True, text=True, timeout=120)
    sent = [e for e in registry.read_deployments(reg, site, line) if e["action"] == "rollback"]
    assert not any(e["id"] == bad for e in sent), f"the rolled-back model was sent again: {done.stdout}"
