"""The model lifecycle in the real controller and its shadow agent (the demo line, PLCs on closed ports,
the in-test link of test_shadow_agent; the rig + mosquitto run is hil_tests/test_model_lifecycle.py):
the challenger's own thresholds under the margin, in-place promotion that does not scale them twice,
a challenger that fails or names the active model, a desired challenger applied again at a restart,
the rises-based automatic rollback, a watch that ends with the model kept, and the report_s throttle."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from hil_tests.rig.net import wait_for
from hil_tests.rig.service_process import closed_ports_config
from hil_tests.test_model_lifecycle import variant
from models.kernels import D_THRESHOLD_OFF, D_THRESHOLD_ON
from tests.controller.test_shadow_agent import FakeLink, Line


def config_with(tmp_path: Path, model: Path, models: str) -> Path:
    path = closed_ports_config(tmp_path, model)
    path.write_text(path.read_text() + f"\n[models]\n{models}\n")
    return path


def challenger_model(line: Line, model: Path, factor: float = 1.05) -> tuple[str, float]:
    """A variant of `model` (its line threshold x factor) in models_dir as `ch.npz`: (name, threshold)."""
    models_dir = Path(line.controller.state_dir.path) / "models"
    models_dir.mkdir(exist_ok=True)
    base = line.controller.pipeline.model_threshold * factor
    variant(model, models_dir / "ch.npz", threshold=base)
    return "ch", base


def lifecycle_events(line: Line, result: str) -> list[dict]:
    return [e for e in line.events("lifecycle") if e.get("result") == result]


async def test_the_challenger_keeps_its_own_thresholds_under_the_margin_and_is_promoted_once_scaled(
        tmp_path, model):
    async with Line(config_with(tmp_path, model, "report_s = 0.01"), FakeLink()) as line:
        p, lc = line.controller.pipeline, line.agent.lifecycle
        active, active_base = p.detector, p.model_threshold
        name, base = challenger_model(line, model)
        assert await line.send("challenger", name, 1) == "applied"
        det = p.challenger.detector
        assert det is not active and det.threshold == pytest.approx(base)
        assert await line.send("threshold_margin", 1.2, 1) == "applied"
        await lc.decide()
        dp = det.model["decision_params"]
        assert dp[D_THRESHOLD_ON] == pytest.approx(base * 1.2)
        assert dp[D_THRESHOLD_OFF] / dp[D_THRESHOLD_ON] == pytest.approx(
            active.model["decision_params"][D_THRESHOLD_OFF] / active.threshold)
        assert active.threshold == pytest.approx(active_base * 1.2)  # the active's own, unchanged
        report, _ = line.agent.build_report()
        assert report["state"]["model"]["challenger"]["version"] == "ch" and report["delta"] == {}

        assert await line.send("model_version", name, 1) == "applied"  # the challenger: in place
        assert p.detector is det and p.challenger is None
        assert p.model_threshold == pytest.approx(base)  # its own threshold, not base x 1.2
        assert p.detector.threshold == pytest.approx(base * 1.2)
        assert await line.send("threshold_margin", 1.0, 2) == "applied"
        assert p.detector.threshold == pytest.approx(base)
        report, _ = line.agent.build_report()
        model_state = report["state"]["model"]
        assert model_state["previous"] == active.metadata["checksum"]
        assert model_state["watch"]["verdict"] == "watching"
        assert report["desired"]["challenger"] == {"value": "", "version": 2, "by": "edge:promotion"}


async def test_a_challenger_that_is_the_active_model_or_fails_is_refused_or_ended(tmp_path, model):
    async with Line(config_with(tmp_path, model, "report_s = 0.01"), FakeLink()) as line:
        p, lc = line.controller.pipeline, line.agent.lifecycle
        active_id = p.detector.metadata["checksum"]
        assert await line.send("challenger", active_id[:12], 1) == "rejected"
        assert "is the active model already" in line.agent.doc.rejected["challenger"]["reason"]
        name, _ = challenger_model(line, model)
        assert await line.send("challenger", name, 2) == "applied"
        counters = p.challenger
        bad = np.zeros(3)  # a frame of the wrong length: its step raises
        counters.step(1.0, 1.0, False, bad, np.zeros(3, np.uint8), np.zeros(3, np.uint8))
        assert counters.failed.startswith("ValueError")
        await lc.decide()
        assert p.challenger is None and lifecycle_events(line, "challenge_failed")
        assert line.agent.doc.desired["challenger"].by == "edge:promotion"
        assert p.detector.metadata["checksum"] == active_id
        report, _ = line.agent.build_report()
        assert report["state"]["model"]["challenger"]["verdict"].startswith("ended: its step failed")
        assert report["delta"] == {}


async def test_a_desired_challenger_runs_again_after_a_restart_and_null_stops_it(tmp_path, model):
    config = config_with(tmp_path, model, "report_s = 0.01")
    async with Line(config, FakeLink()) as line:
        name, _ = challenger_model(line, model)
        assert await line.send("challenger", name, 1) == "applied"
    async with Line(config, FakeLink(connected=False)) as line:
        p = line.controller.pipeline
        assert p.challenger is not None and p.challenger.detector is not p.detector
        started = lifecycle_events(line, "challenge_started")[-1]
        assert started["reason"] == "device shadow challenger v1, again at start"
        assert await line.send("challenger", None, 2) == "applied"
        assert p.challenger is None and lifecycle_events(line, "challenge_stopped")
        report, _ = line.agent.build_report()
        assert report["delta"] == {} and not report["state"]["model"]["challenger"]["running"]


async def test_a_promoted_model_rising_too_often_is_rolled_back_fresh_from_its_file(tmp_path, model):
    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600"), FakeLink()) as line:
        p, lc = line.controller.pipeline, line.agent.lifecycle
        first, first_path = p.detector, line.controller.model_path
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 3) == "applied"  # from its file: watched
        assert p.watch is not None and p.detector is not first
        models_dir = Path(line.controller.state_dir.path) / "models"
        kept = models_dir / f"{first.metadata['checksum']}.npz"
        await wait_for(lambda: lc.previous[0] == kept, timeout=10, what="the previous model kept")
        watch = p.watch
        watch.rows, watch.rises = 10_000, 100  # at the bound (0.01 a row): no evidence above it
        await lc.decide()
        assert p.watch is watch
        watch.rises = 200
        await lc.decide()
        assert p.watch is None
        assert p.detector is not first and p.detector.metadata["checksum"] == first.metadata["checksum"]
        assert line.controller.model_path == kept  # the copy kept in models_dir
        assert first_path.is_file()
        back = lifecycle_events(line, "rollback_automatic")[-1]
        assert back["user"] == "edge:rollback" and "rises 200 in 10000 rows" in back["message"]
        desired = line.agent.doc.desired["model_version"]
        assert (desired.value, desired.version) == (first.metadata["checksum"], 4)
        assert desired.by == "edge:rollback"


async def test_a_watch_ends_with_the_model_kept(tmp_path, model):
    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 0.2"), FakeLink()) as line:
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 1) == "applied"
        await wait_for(lambda: lifecycle_events(line, "watch_kept"), timeout=10, what="the watch to end")
        report, _ = line.agent.build_report()
        assert report["state"]["model"]["watch"]["verdict"] == "kept"
        assert line.controller.pipeline.watch is None


async def test_figures_are_refreshed_at_most_every_report_s_and_at_once_on_a_change(tmp_path, model):
    async with Line(config_with(tmp_path, model, "report_s = 3600"), FakeLink()) as line:
        lc = line.agent.lifecycle
        name, _ = challenger_model(line, model)
        assert await line.send("challenger", name, 1) == "applied"
        counters = line.controller.pipeline.challenger
        rows = lc.report()["challenger"]["rows"]
        for _ in range(5):
            counters.after(time.monotonic(), time.time(), False)
        await asyncio.sleep(0)
        assert counters.rows == rows + 5 and lc.report()["challenger"]["rows"] == rows  # not yet
        lc.stop_challenge("ann", "test")
        assert lc.report()["challenger"]["rows"] == rows + 5


async def test_the_challenger_steps_after_the_write_tasks_of_its_row_began(tmp_path, model):
    """handle_batch issues the step's writes as tasks; the challenger of that row runs behind their first
    step (the write request goes out first), and right away on a row without writes."""
    from controller.config import load_config
    from controller.lifecycle.counters import Challenger
    from controller.runtime import Controller

    c = Controller(load_config(closed_ports_config(tmp_path, model)), api_port=0)
    c.pipeline.detector = c.models.initial()
    order: list[str] = []

    class Recording:
        def step(self, t, x, fresh, good):
            order.append("challenger")
            return False

    async def write() -> None:
        order.append("write")

    c.pipeline.challenger = Challenger(Recording(), c.line)
    c.pipeline.step = lambda *args: ["a write"]
    c.writes.issue = lambda writes: [asyncio.create_task(write()) for _ in writes]
    plc = c.plcs[0]
    c.handle_batch(plc, None)
    assert order == []
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["write", "challenger"]
    c.pipeline.step = lambda *args: []
    c.handle_batch(plc, None)
    assert order == ["write", "challenger", "challenger"]


async def test_the_previous_model_and_the_watch_are_known_again_after_a_restart(tmp_path, model):
    config = config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600")
    async with Line(config, FakeLink()) as line:
        first = line.controller.pipeline.detector.metadata["checksum"]
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 1) == "applied"
        since = line.agent.lifecycle.watched.since
    async with Line(config, FakeLink(connected=False)) as line:
        report, _ = line.agent.build_report()
        assert report["state"]["model"]["version"] == name and report["state"]["model"]["previous"] == first
        watch = report["state"]["model"]["watch"]
        assert watch["verdict"] == "watching" and watch["since"] == since and watch["rows"] == 0
        assert line.controller.pipeline.watch is not None and lifecycle_events(line, "watch_resumed")
        assert await line.send("model_version", first[:12], 2) == "applied"  # `model rollback`'s target
        assert line.controller.pipeline.detector.metadata["checksum"] == first
        assert lifecycle_events(line, "rollback_manual")


async def test_a_challenger_step_queued_behind_writes_never_touches_it_once_promoted(tmp_path, model):
    """A row with writes queues the challenger's step behind them; a promotion in place before that
    step runs must not let it step the now active detector a second time."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01"), FakeLink()) as line:
        p = line.controller.pipeline
        name, _ = challenger_model(line, model)
        assert await line.send("challenger", name, 1) == "applied"
        counters = p.challenger
        before = counters.detector.checkpoint()
        counters.after(time.monotonic(), time.time(), False, later=True)  # queued, not run yet
        assert await line.send("model_version", name, 1) == "applied"  # promoted in place meanwhile
        assert p.detector is counters.detector and counters.rows == 0
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        after = p.detector.checkpoint()
        assert all(np.array_equal(before[k], after[k]) for k in before), "the queued step ran on it"
