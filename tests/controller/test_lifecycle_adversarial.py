"""The model lifecycle (controller.lifecycle), attacked: races between the edge's own decisions and the
fleet's, a challenger that failed or that the margin pushed past 1, a restart in the middle of a watch,
a watch with nothing to roll back to, hostile frames into a challenger, hostile [models] bounds, the
statistics at huge counts, and a history disk that stalls at stop.

The real controller on the demo line (PLCs on closed ports) and its shadow agent on the in-test link,
as tests/controller/test_challenger.py does. A test marked xfail(strict) proves a defect of the code
under test: it fails now and must pass once the defect is fixed (then its marker goes). A test whose
docstring starts "Was (before <commit>)" proved a defect that commit fixed; "Holds" pins a property.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from controller.config import load_config
from controller.config.errors import ConfigError
from controller.config.models import ModelsSection
from controller.lifecycle.policy import ROLLBACK_ALPHA, Policy, promotion_verdict, rollback_verdict
from controller.lifecycle.stats import binomial_cdf, binomial_sf
from hil_tests.rig.net import wait_for
from hil_tests.rig.service_process import closed_ports_config
from hil_tests.test_model_lifecycle import variant
from models.kernels import D_THRESHOLD_ON
from tests.controller.test_challenger import challenger_model, config_with, lifecycle_events
from tests.controller.test_shadow_agent import PREFIX, FakeLink, Line

ROOT = Path(__file__).resolve().parents[2]


def models_dir(line: Line) -> Path:
    path = Path(line.controller.state_dir.path) / "models"
    path.mkdir(exist_ok=True)
    return path


def second_model(line: Line, model: Path, name: str, factor: float) -> str:
    """Another variant of `model` (its line threshold x factor) in models_dir as `<name>.npz`: its id."""
    base = line.controller.pipeline.model_threshold
    from models import artifact

    path = variant(model, models_dir(line) / f"{name}.npz", threshold=base * factor)
    return artifact.read(path, ())[1]["checksum"]


def checksum(det) -> str:
    return det.metadata["checksum"]


async def waiters(lock: asyncio.Lock, n: int) -> None:
    """Until `n` tasks wait on `lock` (bounded)."""
    await wait_for(lambda: len(lock._waiters or ()) >= n, timeout=10, what=f"{n} task(s) waiting on the lock")


def quiet_lifecycle(line: Line) -> None:
    """End the agent's own decision task: the test takes the decisions (lc.decide) when it wants."""
    for task in line.agent._tasks:
        if task.get_name() == "shadow:model-lifecycle":
            task.cancel()


# ------------------------------------------------------------------ a failed challenger
async def test_a_challenger_whose_step_failed_is_never_promoted_in_place(tmp_path, model):
    """Was (before 435c93f): a challenger whose step failed is promoted in place by a desired
    model_version before the next decision round ends it."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01"), FakeLink()) as line:
        quiet_lifecycle(line)
        p = line.controller.pipeline
        active = p.detector
        name, _ = challenger_model(line, model)
        assert await line.send("challenger", name, 1) == "applied"
        counters = p.challenger
        counters.step(1.0, 1.0, False, np.zeros(3), np.zeros(3, np.uint8), np.zeros(3, np.uint8))
        assert counters.failed  # its step raised: "skipped from then on"
        await line.send("model_version", name, 1)
        assert p.detector is not counters.detector, "the failed detector became the active model"
        assert p.detector is active or lifecycle_events(line, "promoted") == []


# ------------------------------------------------------------------ the margin and the challenger
def unreachable_margin(line: Line, model: Path) -> tuple[str, float]:
    """A challenger (`ch`) whose line threshold x margin reaches 1 while the active one's stays below."""
    p = line.controller.pipeline
    active = p.model_threshold
    margin = 1.3  # within [mqtt.shadow] threshold_margin_min / max (0.8, 1.5)
    assert active * margin < 0.97, f"the demo model's threshold {active} leaves no room for the attack"
    target = 1.02 / margin  # under 1 alone: a valid model
    variant(model, models_dir(line) / "ch.npz", threshold=target)
    return "ch", margin


async def test_a_margin_that_makes_the_running_challengers_alarm_unreachable_is_not_silently_applied(
        tmp_path, model):
    """Was (before 435c93f): a threshold_margin accepted while a challenger runs puts the challenger's
    line threshold at or above 1 (its alarm can never fire)."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01"), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        name, margin = unreachable_margin(line, model)
        assert await line.send("challenger", name, 1) == "applied"
        result = await line.send("threshold_margin", margin, 1)
        await lc.decide()
        running = p.challenger
        if result == "applied" and running is not None:
            on = float(running.detector.model["decision_params"][D_THRESHOLD_ON])
            assert on < 1.0, f"the challenger runs with line threshold {on:.4g}: its alarm can never fire"


async def test_auto_promotion_of_a_challenger_the_margin_made_unpromotable_ends_it_instead_of_raising(
        tmp_path, model):
    """Was (before 435c93f): auto promotion of a challenger the margin made unpromotable raises
    ModelLoadError out of every decision round; the challenge never ends."""
    keys = 'report_s = 0.01\npromotion = "auto"\nmin_rows = 1\nmax_alarm_rate = 0.5\nmin_agreement = 0.0'
    async with Line(config_with(tmp_path, model, keys), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        active = p.detector
        name, margin = unreachable_margin(line, model)
        assert await line.send("challenger", name, 1) == "applied"
        assert await line.send("threshold_margin", margin, 1) == "applied"
        counters = p.challenger
        counters.rows = 10_000  # quiet rows: within the bounds
        lc.challenge.since_mono -= 7200.0  # challenge_s passed
        for _ in range(3):
            await lc.decide()  # the decision task calls this every TICK_S: it must not raise every time
        assert p.detector is active
        assert p.challenger is None, "the challenge goes on, and so does the failing promotion"


async def test_a_challenger_named_like_the_active_models_file_is_judged_by_its_id(tmp_path, model):
    """Was (before 435c93f): a challenger file named like the active model's file (another model, another
    id) is refused as 'the active model already' by name alone."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01"), FakeLink()) as line:
        quiet_lifecycle(line)
        p = line.controller.pipeline
        active = p.detector
        assert line.controller.model_path.stem == "model"  # [detector] model = .../model.npz
        other = second_model(line, model, "model", 1.05)  # a refit dropped in models_dir as model.npz
        assert other != checksum(active)
        result = await line.send("challenger", "model", 1)
        assert result == "applied", line.agent.doc.rejected.get("challenger")
        assert checksum(p.challenger.detector) == other and p.detector is active


# ------------------------------------------------------------------ races with the fleet
async def test_an_automatic_rollback_racing_a_manual_promotion_never_restores_the_misbehaving_model(
        tmp_path, model):
    """Was (before 435c93f): an automatic rollback decided on model A's watch, waiting for the lifecycle
    lock while the fleet promotes B, rolls B back to A."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600"), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        first = checksum(p.detector)
        bad, _ = challenger_model(line, model)
        good = second_model(line, model, "good", 1.1)
        assert await line.send("model_version", bad, 1) == "applied"  # watched; previous: first
        bad_id = checksum(p.detector)
        p.watch.rows, p.watch.rises = 10_000, 200  # misbehaves: rollback verdict
        await lc.lock.acquire()  # the fleet's promotion is loading (inside the lock) ...
        fleet = asyncio.create_task(line.send("model_version", "good", 2, by="ann"))
        await waiters(lc.lock, 1)
        tick = asyncio.create_task(lc.decide())  # ... when the decision round sees the bad watch
        await waiters(lc.lock, 2)
        lc.lock.release()
        assert await fleet == "applied"
        await tick
        assert checksum(p.detector) != bad_id, "the model that misbehaved is active again"
        assert checksum(p.detector) in (good, first)
        desired = line.agent.doc.desired["model_version"]
        assert desired.value != bad_id, desired


async def test_an_auto_promotion_judged_on_one_challenger_never_promotes_its_replacement(tmp_path, model):
    """Was (before 435c93f): an automatic promotion judged on challenger A, waiting for the lifecycle
    lock while the fleet replaces A by B, promotes B (0 rows)."""
    keys = 'report_s = 0.01\npromotion = "auto"\nmin_rows = 1\nmax_alarm_rate = 0.5\nmin_agreement = 0.0'
    async with Line(config_with(tmp_path, model, keys), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        name, _ = challenger_model(line, model)
        b_id = second_model(line, model, "b", 1.1)
        assert await line.send("challenger", name, 1) == "applied"
        await lc.lock.acquire()
        p.challenger.rows = 10_000  # A: quiet, long enough: within the bounds
        lc.challenge.since_mono -= 7200.0
        fleet = asyncio.create_task(line.send("challenger", "b", 2, by="ann"))  # B replaces A ...
        await waiters(lc.lock, 1)
        tick = asyncio.create_task(lc.decide())  # ... while the round judges A
        await waiters(lc.lock, 2)
        lc.lock.release()
        assert await fleet == "applied"
        await tick
        assert checksum(p.detector) != b_id, "B was promoted on A's figures, after 0 rows of its own"
        assert lc.challenge is not None and lc.challenge.id == b_id


async def test_a_local_reload_during_a_watch_is_not_rolled_back_on_the_promoted_models_figures(
        tmp_path, model):
    """Was (before 435c93f): a model reloaded by hand (API / CLI) during a watch is not seen by the
    lifecycle: the watch goes on and rolls it back to the older one."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600"), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        name, _ = challenger_model(line, model)
        good = second_model(line, model, "good", 1.1)
        assert await line.send("model_version", name, 1) == "applied"  # watched
        await line.controller.ops.reload_model("ann", str(models_dir(line) / "good.npz"), "by hand",
                                               role="engineer")  # the local API's `model reload`
        assert checksum(p.detector) == good
        if p.watch is not None:
            p.watch.rows, p.watch.rises = 10_000, 200
        await lc.decide()
        assert checksum(p.detector) == good, "the operator's model was rolled back on another's figures"


async def test_a_challenge_does_not_outlive_the_promotion_of_another_model(tmp_path, model):
    """Was (before 435c93f): a challenge survives the promotion of another model: its figures, taken
    against the old active model, auto-promote it over the new one."""
    keys = ('report_s = 0.01\npromotion = "auto"\nmin_rows = 1\nmax_alarm_rate = 0.5\nmin_agreement = 0.0\n'
            "watch_s = 600")
    async with Line(config_with(tmp_path, model, keys), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        name, _ = challenger_model(line, model)
        chosen = second_model(line, model, "chosen", 1.1)
        assert await line.send("challenger", name, 1) == "applied"
        p.challenger.rows = 10_000  # quiet beside the first model: within the bounds
        lc.challenge.since_mono -= 7200.0
        assert await line.send("model_version", "chosen", 1, by="ann") == "applied"  # the fleet's choice
        await lc.decide()
        assert checksum(p.detector) == chosen, "the challenger replaced the model the fleet just promoted"


@pytest.mark.parametrize("bad", ["units", "nan", "cap", "zero", "copy_of_active", "other_tags"])
async def test_a_challenger_that_must_not_run_is_rejected_in_one_line_and_nothing_changes(
        tmp_path, model, bad):
    """Holds: other units, a NaN / 1.0 / 0 line threshold, the active model under another file name and a
    model of other tags are each refused as a challenger with one line; the active model is untouched."""
    import shutil

    from models import artifact
    from models.detector import MODEL_ARRAYS

    async with Line(config_with(tmp_path, model, "report_s = 0.01"), FakeLink()) as line:
        quiet_lifecycle(line)
        p = line.controller.pipeline
        active, dp = p.detector, p.detector.model["decision_params"].copy()
        target = models_dir(line) / "bad.npz"
        if bad == "units":
            variant(model, target, units={"motor_current": "mA"})
        elif bad == "copy_of_active":
            shutil.copy(model, target)
        elif bad == "other_tags":
            arrays, meta = artifact.read(model, MODEL_ARRAYS)
            meta = {k: v for k, v in meta.items() if k not in ("checksum", "versions")}
            meta["tags"] = [f"{t}_x" for t in meta["tags"]]
            artifact.write(target, arrays, meta)
        else:
            variant(model, target, threshold={"nan": math.nan, "cap": 1.0, "zero": 0.0}[bad])
        assert await line.send("challenger", "bad", 1) == "rejected"
        reason = line.agent.doc.rejected["challenger"]["reason"]
        assert reason and "\n" not in reason, reason
        assert p.challenger is None and p.detector is active
        assert np.array_equal(dp, active.model["decision_params"])


async def test_a_stalled_copy_of_the_previous_model_never_holds_back_a_desired_shadow_mode(
        tmp_path, model):
    """Was (before 2426dfe): a promotion hung copying the previous model to models_dir stalled the shadow
    worker: a desired shadow_mode queued after it never applied."""
    import threading

    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600"), FakeLink()) as line:
        quiet_lifecycle(line)
        lc, ops = line.agent.lifecycle, line.controller.ops
        name, _ = challenger_model(line, model)
        keep, stalled, release = lc._keep, threading.Event(), threading.Event()

        def hung_disk(path, model_id):  # the copy into models_dir hangs, as on a stalled mount
            stalled.set()
            release.wait(60)
            return keep(path, model_id)

        lc._keep = hung_disk
        try:
            for field, value, version in (("model_version", name, 1), ("shadow_mode", True, 1)):
                payload = json.dumps({"value": value, "version": version, "by": "fleet"}).encode()
                line.agent._on_message(f"{PREFIX}/desired/{field}", payload, False)  # as the broker delivers
            assert await asyncio.to_thread(stalled.wait, 10)
            await wait_for(lambda: ops.actions.shadow_global, timeout=10,
                           what="the desired shadow mode applied while the model copy hangs")
        finally:
            release.set()


async def test_fleet_versions_older_than_the_edges_own_rollback_never_undo_it(tmp_path, model):
    """Holds: the edge records its automatic rollback one version above every version seen; the fleet's
    retained older copies, redelivered late (a reconnect), are stale and change nothing; a newer one
    applies."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600"), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc, doc = line.controller.pipeline, line.agent.lifecycle, line.agent.doc
        first = checksum(p.detector)
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 41) == "applied"
        assert await line.send("model_version", "nope", 42) == "rejected"  # seen: 42, accepted: 41
        p.watch.rows, p.watch.rises = 10_000, 200
        await lc.decide()
        assert checksum(p.detector) == first
        edge = doc.desired["model_version"]
        assert (edge.value, edge.version, edge.by) == (first, 43, "edge:rollback")
        for version in (41, 42, 43):
            assert await line.send("model_version", name, version) == "stale"
        assert checksum(p.detector) == first
        assert await line.send("model_version", name, 44, by="ann") == "applied"  # a newer decision
        assert p.detector.metadata["checksum"] != first


# ------------------------------------------------------------------ a restart and a watch
async def test_a_restart_in_the_middle_of_a_watch_keeps_watching_with_the_previous_model(tmp_path, model):
    """Was (before 435c93f): a restart in the middle of a watch forgets the watch and the previous model:
    a misbehaving promoted model is never rolled back."""
    config = config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600")
    async with Line(config, FakeLink()) as line:
        first = checksum(line.controller.pipeline.detector)
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 1) == "applied"
        promoted = checksum(line.controller.pipeline.detector)
        assert line.agent.lifecycle.watched is not None
    async with Line(config, FakeLink(connected=False)) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        assert checksum(p.detector) == promoted  # the desired model, applied again at start
        report, _ = line.agent.build_report()
        assert report["state"]["model"]["previous"] == first, report["state"]["model"]
        assert p.watch is not None, "the watch did not survive the restart"
        p.watch.rows, p.watch.rises = 10_000, 200
        await lc.decide()
        assert checksum(p.detector) == first


async def test_a_misbehaving_watched_model_with_nothing_to_roll_back_to_is_not_silently_kept(tmp_path, model):
    """Was (before 435c93f): a watched model with no previous model (the line ran rules only) that
    misbehaves is silently kept: no event, the watch says watching."""
    path = closed_ports_config(tmp_path, None)  # the commissioning config: rules only
    path.write_text(path.read_text() + "\n[models]\nreport_s = 0.01\nwatch_s = 600\n")
    async with Line(path, FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        variant(model, models_dir(line) / "m.npz")
        assert await line.send("model_version", "m", 1) == "applied"
        assert p.watch is not None
        seen = line.controller.events.last_id
        p.watch.rows, p.watch.rises = 10_000, 200  # far above the rollback bound
        await lc.decide()
        report, _ = line.agent.build_report()
        verdict = report["state"]["model"]["watch"]["verdict"]
        said = [e for e in line.controller.events.since(seen) if e["source"] == "lifecycle"]
        assert verdict != "watching" or said, "the rollback verdict was dropped without a word"


async def test_a_model_whose_line_alarm_was_on_for_its_whole_watch_is_not_kept(tmp_path, model):
    """Was (before 435c93f): a watch shorter than min_rows rows keeps a model whose line alarm was stuck
    on for every row of it (the stuck rule never had the rows)."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 60"), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        first = checksum(p.detector)
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 1) == "applied"
        w = p.watch
        assert lc.watched.policy.min_rows == 1498  # derived from the designed rate 0.001
        w.rows = w.alarm_rows = w.on_run = w.longest_on = 600  # 60 s at 10 Hz, the alarm on throughout
        w.rises = 1
        lc.watched.since_mono -= 61.0  # the watch is over
        await lc.decide()
        report, _ = line.agent.build_report()
        watch = report["state"]["model"]["watch"]
        assert watch["verdict"] != "kept", f"kept with its line alarm on for all {watch['rows']} rows"
        assert checksum(p.detector) == first


# Was (before 96b897d): one row off (the first, a flicker) kept a model alarming 99.8 % of a watch
@pytest.mark.parametrize(("on_run", "rises"), [(599, 1), (300, 2)])  # the first row off; one flicker
async def test_a_model_whose_line_alarm_was_on_for_all_but_one_row_of_its_watch_is_not_kept(
        tmp_path, model, on_run, rises):
    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 60"), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 1) == "applied"
        w = p.watch
        w.rows, w.alarm_rows, w.rises, w.on_run, w.longest_on = 600, 599, rises, on_run, max(on_run, 299)
        lc.watched.since_mono -= 61.0  # the watch is over
        await lc.decide()
        report, _ = line.agent.build_report()
        watch = report["state"]["model"]["watch"]
        assert watch["verdict"] != "kept", f"kept with its line alarm on for 599 of {watch['rows']} rows"


async def test_a_previous_model_that_cannot_be_kept_in_models_dir_is_still_the_rollback_target(
        tmp_path, model):
    """Holds: when the copy of the previous model into models_dir fails (the name is taken by a
    directory: as a full or read-only disk would refuse it), the rollback reloads it from its own path."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01\nwatch_s = 600"), FakeLink()) as line:
        quiet_lifecycle(line)
        p, lc = line.controller.pipeline, line.agent.lifecycle
        first, first_path = checksum(p.detector), line.controller.model_path
        (models_dir(line) / f"{first}.npz").mkdir()  # the copy cannot land there
        name, _ = challenger_model(line, model)
        assert await line.send("model_version", name, 1) == "applied"
        assert lc.previous == (first_path, first)
        p.watch.rows, p.watch.rises = 10_000, 200
        await lc.decide()
        assert checksum(p.detector) == first and line.controller.model_path == first_path
        assert lifecycle_events(line, "rollback_automatic")


@pytest.mark.parametrize("text", ["[" * 100_000,  # was: RecursionError out of the shadow's start
                                  '["previous"]', '"x"', '{"previous": "m.npz"}',
                                  '{"previous": {"path": 1, "id": []}}', '{"previous": null, "watch": 5}',
                                  '{"previous": null, "watch": {"id": "x", "since": "soon"}}',
                                  "\x00\xff", ""])
async def test_a_damaged_lifecycle_state_file_never_stops_the_start(tmp_path, model, text):
    """A model-lifecycle.json cut short, edited or corrupted (a nesting too deep for the decoder too, as
    the shadow document guards against) costs the previous model, not the start."""
    config = config_with(tmp_path, model, "report_s = 0.01")
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "model-lifecycle.json").write_text(text, errors="surrogateescape")
    async with Line(config, FakeLink(connected=False)) as line:
        lc = line.agent.lifecycle
        assert lc.previous is None and lc.watched is None
        report, _ = line.agent.build_report()
        assert report["state"]["model"]["previous"] is None


# ------------------------------------------------------------------ hostile frames, shared arrays
async def test_hostile_frames_into_the_challenger_never_touch_the_active_model(tmp_path, model):
    """Holds: the challenger's arrays are its own (no memory shared with the active detector), and a
    1e300 / inf / NaN frame stepped into it changes nothing of the active model's state."""
    async with Line(config_with(tmp_path, model, "report_s = 0.01"), FakeLink()) as line:
        quiet_lifecycle(line)
        p = line.controller.pipeline
        active = p.detector
        name, _ = challenger_model(line, model)
        assert await line.send("challenger", name, 1) == "applied"
        det = p.challenger.detector
        mine = [a for a in (*det.model.values(), *det.state.values()) if isinstance(a, np.ndarray)]
        theirs = [a for a in (*active.model.values(), *active.state.values()) if isinstance(a, np.ndarray)]
        assert not any(np.shares_memory(a, b) for a in mine for b in theirs)
        before = {k: v.copy() for k, v in active.state.items() if isinstance(v, np.ndarray)}
        dp = active.model["decision_params"].copy()
        m = len(p.line.frame_values)
        good = np.ones(m, np.uint8)
        for value in (1e300, -1e300, math.inf, math.nan, 0.0):
            p.challenger.step(2.0, 2.0, False, np.full(m, value), good, good)
        for k, v in before.items():
            assert np.array_equal(v, active.state[k], equal_nan=True), k
        assert np.array_equal(dp, active.model["decision_params"])
        assert p.challenger.rows + bool(p.challenger.failed) >= 1


# ------------------------------------------------------------------ [models] bounds
@pytest.mark.parametrize("line_text", ["min_rows = 0", "min_rows = true", "min_rows = 1.5",
                                       "min_rows = 1_000_000_001", "max_alarm_rate = nan",
                                       "max_alarm_rate = inf", "max_alarm_rate = 1.0", "max_alarm_rate = 0.0",
                                       "rollback_alarm_rate = nan", "min_agreement = nan",
                                       "min_agreement = -0.1", "challenge_s = nan", "challenge_s = inf",
                                       "watch_s = -1", "watch_s = nan", "report_s = 0", "promotion = 'AUTO'",
                                       "challenger = 'x'"])
def test_bad_models_bounds_in_the_toml_are_one_line_errors_naming_the_key(tmp_path, model, line_text):
    """Holds: every bad [models] value is refused at load with one line that names the key."""
    path = closed_ports_config(tmp_path, model)
    path.write_text(path.read_text() + f"\n[models]\n{line_text}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    text = str(exc.value)
    assert "\n" not in text.strip() and line_text.split(" ")[0] in text, text


@pytest.mark.parametrize("keys", [{"max_alarm_rate": 0.5},
                                  {"max_alarm_rate": 0.1, "rollback_alarm_rate": 0.01}])
def test_the_promotion_bound_never_lies_above_the_rollback_bound(keys):
    """Was (before 435c93f): an incoherent pair was accepted. hil_tests/test_model_lifecycle.py's own
    auto config (max_alarm_rate = 0.5, the rollback bound derived: 0.01) promoted a model at 0.3 rises a
    row, which the watch then had to roll back."""
    try:
        p = Policy.derive(ModelsSection(**keys), 0.001)
    except ValueError:
        return  # refused: fine
    assert p.max_alarm_rate <= p.rollback_alarm_rate, p
    rows = 10_000
    rises = int(0.3 * rows)
    promoted = promotion_verdict(p, rows=rows, rises=rises, agreement=1.0, elapsed_s=1e9) == "within bounds"
    assert not (promoted and rollback_verdict(p, rows=rows, rises=rises, on_run=0))


# ------------------------------------------------------------------ statistics at the edges
@pytest.mark.parametrize(("k", "n", "p"), [(0, 1, 0.5), (1, 1, 0.01), (0, 2_600_000_000, 1e-9),
                                           (2_700_000, 2_600_000_000, 0.001), (26_500, 2_600_000, 0.01)])
def test_binomial_tails_at_huge_counts_match_scipy(k, n, p):
    """Holds: up to a month at 1 kHz (2.6e9 rows) the tails agree with scipy to 1e-4 (measured: 5e-6
    relative at 2.6e9 rows; to 1e-9 below a million rows, test_promotion_policy)."""
    assert binomial_cdf(k, n, p) == pytest.approx(sp.binom.cdf(k, n, p), rel=1e-4, abs=1e-12)
    assert binomial_sf(k, n, p) == pytest.approx(sp.binom.sf(k - 1, n, p), rel=1e-4, abs=1e-12)


@pytest.mark.parametrize(("k", "n", "p"), [(10**7, 10**12, 1e-5), (1, 10**12, 1e-13)])
def test_binomial_tails_at_a_million_million_rows_match_scipy(k, n, p):
    """Was (before 600006a): off by ~1e-3 absolute at 1e12 rows (lgamma of ~1e12 in the beta prefactor)."""
    assert binomial_cdf(k, n, p) == pytest.approx(sp.binom.cdf(k, n, p), rel=1e-4)
    assert binomial_sf(k, n, p) == pytest.approx(sp.binom.sf(k - 1, n, p), rel=1e-4)


def test_a_stuck_line_alarm_is_rolled_back_even_at_zero_rises_and_the_rate_rule_needs_evidence():
    """Holds (policy): a line alarm on for min_rows rows rolls back with one rise; 0 and 1 rows never."""
    p = Policy.derive(ModelsSection(), 0.001)
    assert rollback_verdict(p, rows=0, rises=0, on_run=0) == ""
    assert rollback_verdict(p, rows=1, rises=1, on_run=1) == ""  # one alarm row is no evidence
    assert rollback_verdict(p, rows=p.min_rows, rises=1, on_run=p.min_rows).startswith("line alarm on for")
    assert rollback_verdict(p, rows=10**12, rises=10**10, on_run=0) == ""  # exactly the bound
    big = rollback_verdict(p, rows=10**12, rises=10**10 + 10**7, on_run=0)
    assert big.startswith("rises"), big
    assert ROLLBACK_ALPHA < 0.01


# ------------------------------------------------------------------ a lost cancel at stop
class LosesCancelInItsPoll:
    """A driver (a plugin, or asyncua / pymodbus underneath one) whose poll loop awaits each answer with
    asyncio.wait_for: a cancel arriving in the loop round an answer arrives is lost (Python 3.11)."""

    name, tag_names = "plugin", ["a"]

    def __init__(self) -> None:
        from drivers.base import DriverStats

        self.stats = DriverStats()
        self.answer: asyncio.Future | None = None

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def subscribe(self, on_batch) -> None:
        while True:
            self.answer = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self.answer, 30)


async def test_a_supervisor_stop_ends_even_when_the_drivers_poll_loses_the_cancel():
    """Was: DriverSupervisor.stop() (linesentry record) cancelled once: a cancel lost in a wait_for of
    the driver's poll loop hung the stop for ever."""
    from drivers.supervisor import DriverSupervisor

    driver = LosesCancelInItsPoll()
    sup = DriverSupervisor(driver, lambda batch: None)
    task = sup.start()
    await wait_for(lambda: driver.answer is not None, timeout=10, what="the first poll")
    driver.answer.set_result(None)  # the answer arrives in the round the stop's cancel does
    stopping = asyncio.ensure_future(sup.stop())
    done, _ = await asyncio.wait({stopping}, timeout=10)  # asyncio.wait: its timeout cancels nothing
    try:
        assert stopping in done, "the supervisor's stop still waits for a task that lost its cancel"
    finally:
        task.cancel()
        await asyncio.wait({stopping}, timeout=10)


# ------------------------------------------------------------------ the history at stop
STALLED = textwrap.dedent("""
    import asyncio, sys, threading, time
    sys.path.insert(0, {root!r})
    from tests.controller.test_history import controller, frames
    from pathlib import Path

    async def main():
        c = controller(Path({tmp!r}))
        stall = threading.Event()
        c.history.write = lambda rows: stall.wait()  # the disk stalls: the write never returns
        frames(c, [time.time()] * 10)
        task = asyncio.create_task(c.history.flush())
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        frames(c, [time.time()] * 10)
        await c.history.close()  # gives up after CLOSE_TIMEOUT_S
        print("closed", flush=True)

    asyncio.run(main())
    print("exiting", flush=True)
""")


def test_a_stop_on_a_stalled_history_disk_lets_the_process_exit(tmp_path):
    """Was: the writer thread close() keeps (a ThreadPoolExecutor's) was joined at interpreter exit."""
    script = tmp_path / "stalled.py"
    script.write_text(STALLED.format(root=str(ROOT), tmp=str(tmp_path)))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        assert "closed" in out, err  # close() itself returned: the hang is the exit
        pytest.fail(f"the process did not exit within 30 s after close() returned: {out!r}")
    assert proc.returncode == 0 and "exiting" in out, err
