"""A new model's lifecycle at the edge, end to end: the real controller on the simulated plant (OPC UA +
Modbus), its device shadow on a real mosquitto, the models in a registry directory and the real
`linesentry model` command line (docs/models.md#at-the-edge).

- validation: a model fitted in other units is refused as a challenger and as the model (rejected
  in the reported document, journaled), and nothing changes;
- manual policy: `model promote --challenge` runs the registry model in shadow beside the active one
  (fetched into models_dir, the active detector untouched), its figures reported; `model promote` of
  the running challenger promotes it in place (the same detector object: no second fetch or load), the
  previous model is kept and reported, the new one watched; `model rollback` goes back in one command;
- auto policy: a challenger within the bounds is promoted by the edge (recorded as the desired
  model_version by edge:promotion, one version above the fleet's), and a promoted model whose line
  alarm stays on is rolled back automatically (edge:rollback), fresh from its file; the fleet's older
  retained value does not revert it, and a restart loads the rolled-back-to model from models_dir.

Durations are configured short ([models] challenge_s, min_rows, report_s) instead of waiting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from controller import registry
from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.test_fleet import cli
from hil_tests.test_shadow import Fleet, shadow_config
from models import artifact
from models.detector import MODEL_ARRAYS
from models.kernels import D_THRESHOLD_OFF, D_THRESHOLD_ON

LINE = "demo-site/demo-line"


def variant(model: Path, path: Path, *, threshold: float | None = None, units: dict | None = None) -> Path:
    """A copy of `model` with another line threshold or other units recorded (a new id)."""
    arrays, meta = artifact.read(model, MODEL_ARRAYS)
    if threshold is not None:
        dp = arrays["decision_params"].copy()
        hysteresis = dp[D_THRESHOLD_OFF] / dp[D_THRESHOLD_ON]
        dp[D_THRESHOLD_ON], dp[D_THRESHOLD_OFF] = threshold, threshold * hysteresis
        arrays["decision_params"] = dp
    if units is not None:
        meta["units"] = units
    artifact.write(path, arrays, {k: v for k, v in meta.items() if k not in ("checksum", "versions")})
    return path


def lifecycle_config(tmp_path: Path, rig, model: Path, broker: Mosquitto, reg: Path, models: str) -> Path:
    """The shadow test's line config (global shadow mode on: a model under test never writes to the
    plant) with [models] registry and `models` keys."""
    path = shadow_config(tmp_path, rig, model, broker.port)
    text = path.read_text().replace("\nshadow = false\n", "\nshadow = true\n", 1)
    path.write_text(text + f'\n[models]\nregistry = "{reg}"\nreport_s = 0.2\n{models}\n')
    return path


def model_state(report: dict) -> dict:
    return (report.get("state") or {}).get("model") or {}


def lifecycle_events(controller: Controller, result: str) -> list[dict]:
    return [e for e in controller.events.since(0) if e["source"] == "lifecycle" and e.get("result") == result]


async def test_a_challenger_runs_in_shadow_and_is_promoted_in_place_and_rolled_back_by_hand(tmp_path, rig,
                                                                                          model):
    reg = tmp_path / "registry"
    m1 = artifact.read(model, ())[1]["checksum"]
    first = artifact.read(model, MODEL_ARRAYS)[0]["decision_params"][D_THRESHOLD_ON]
    m2 = registry.push(reg, variant(model, tmp_path / "m2.npz", threshold=float(first) * 1.01))[0]["id"]
    other = registry.push(reg, variant(model, tmp_path / "ma.npz", units={"motor_current": "mA"}))[0]["id"]
    with Mosquitto(tmp_path) as broker:
        config = lifecycle_config(tmp_path, rig, model, broker, reg, 'promotion = "manual"\nwatch_s = 600')
        controller = Controller(load_config(config), api_port=0)
        task = await start_controller(controller)
        where = ["--line", LINE, "--broker", f"{broker.host}:{broker.port}", "--registry", str(reg),
                 "--by", "ann"]
        try:
            async with Fleet(broker) as fleet:
                await wait_for(lambda: model_state(fleet.last).get("id") == m1, timeout=15, what="a report")
                active = controller.detector
                # validation before anything runs: other units, as challenger and as model
                await fleet.desire("challenger", other, 1)
                await fleet.desire("model_version", other, 1)
                report = await wait_for(lambda: len(fleet.last.get("rejected", {})) == 2 and fleet.last,
                                        timeout=15, what="both refusals reported")
                for field in ("challenger", "model_version"):
                    reason = report["rejected"][field]["reason"]
                    assert "other units than [detector.units]: motor_current 'mA' (model) vs 'A'" in reason
                assert controller.detector is active and controller.pipeline.challenger is None
                assert sum(e.get("result") == "rejected" for e in controller.events.since(0)) >= 2

                # the challenger, by the command line: fetched, stepped in shadow, reported
                out = await asyncio.to_thread(cli, "model", "promote", m2[:12], "--challenge", *where,
                                              "--wait", "30")
                assert f"{LINE}: reports {m2[:16]}" in out.stdout, out.stdout
                models_dir = Path(controller.state_dir.path) / "models"
                assert (models_dir / f"{m2}.npz").is_file()
                figures = await wait_for(
                    lambda: (c := model_state(fleet.last).get("challenger")) and c["rows"] >= 300 and c,
                    timeout=30, what="challenger figures over 300 rows")
                assert figures["id"] == m2 and figures["running"] and figures["verdict"]
                assert 0.9 <= figures["agreement"] <= 1.0, figures
                assert set(figures["alarm_rate"]) == {"active", "challenger"}
                assert set(figures["rises"]) >= {"active", "challenger"}
                assert len(figures["differences"]) <= 10
                counters = controller.pipeline.challenger
                assert controller.detector is active and counters.detector is not active
                assert counters.detector.state["decision_state"] is not active.state["decision_state"]
                assert lifecycle_events(controller, "challenge_started")

                # promoted by hand: in place, the previous model kept and reported, the new one watched
                out = await asyncio.to_thread(cli, "model", "promote", m2[:12], *where, "--wait", "30")
                assert controller.detector is counters.detector  # no second fetch or load
                assert controller.pipeline.challenger is None
                report = await wait_for(lambda: (model_state(fleet.last).get("watch") or {}).get("id") == m2
                                        and fleet.last, timeout=15, what="the promoted model watched")
                state = model_state(report)
                assert state["id"] == m2 and state["previous"] == m1
                assert state["watch"]["verdict"] == "watching"
                assert state["challenger"]["verdict"] == "promoted" and not state["challenger"]["running"]
                assert report["desired"]["challenger"]["value"] == ""
                assert report["desired"]["challenger"]["by"] == "edge:promotion"
                await wait_for(lambda: (models_dir / f"{m1}.npz").is_file(), timeout=15,
                               what="the previous model kept in models_dir (copied in the background)")
                promoted = lifecycle_events(controller, "promoted")[-1]
                assert "from challenger, in place" in promoted["message"] and promoted["user"] == "shadow:ann"

                # rollback: one command, to the reported previous model, reloaded from its file
                await asyncio.to_thread(cli, "model", "rollback", *where, "--wait", "30")
                assert controller.detector.metadata["checksum"] == m1 and controller.detector is not active
                assert lifecycle_events(controller, "rollback_manual")
                await wait_for(lambda: (model_state(fleet.last).get("watch") or {}).get("verdict", "")
                               .startswith("ended: rolled back by hand"), timeout=15, what="the watch ended")
        finally:
            await stop_controller(controller, task)


async def test_auto_promotion_within_bounds_then_automatic_rollback_of_a_stuck_alarm(tmp_path, rig, model):
    reg = tmp_path / "registry"
    m1 = registry.push(reg, model)[0]["id"]
    bad = registry.push(reg, variant(model, tmp_path / "bad.npz", threshold=1e-6))[0]["id"]  # always on
    keys = ('promotion = "auto"\nchallenge_s = 1.0\nmin_rows = 100\nmax_alarm_rate = 0.5\n'
            "min_agreement = 0.0\nwatch_s = 600")
    with Mosquitto(tmp_path) as broker:
        config = lifecycle_config(tmp_path, rig, model, broker, reg, keys)
        controller = Controller(load_config(config), api_port=0)
        task = await start_controller(controller)
        try:
            async with Fleet(broker) as fleet:
                await fleet.desire("model_version", m1, 5)  # the fleet's own desired value, retained
                await wait_for(lambda: fleet.agrees("model_version", 5), timeout=15, what="v5 accepted")
                first = controller.detector
                await fleet.desire("challenger", bad, 1)
                report = await wait_for(
                    lambda: (model_state(fleet.last).get("watch") or {}).get("verdict", "").startswith(
                        "rolled back") and fleet.last, timeout=60, what="the automatic rollback")
                state = model_state(report)
                assert "line alarm on for" in state["watch"]["verdict"], state["watch"]
                assert state["watch"]["id"] == bad and state["id"] == m1 and state["previous"] is None
                assert report["desired"]["model_version"] == {"value": m1, "version": 7,
                                                              "by": "edge:rollback"}
                assert report["desired"]["challenger"]["value"] == "" and report["delta"] == {}
                auto = lifecycle_events(controller, "promoted")[-1]
                assert "promoted automatically" in auto["message"] and auto["user"] == "edge:promotion"
                back = lifecycle_events(controller, "rollback_automatic")[-1]
                assert back["user"] == "edge:rollback" and "line alarm on for" in back["message"]
                assert controller.detector is not first and controller.detector.metadata["checksum"] == m1
                assert controller.pipeline.watch is None and controller.pipeline.challenger is None
                # the fleet's older retained value comes again (a reconnect): stale, the decision stays
                stale = controller.shadow.stats.stale
                await fleet.desire("model_version", m1, 5)
                await fleet.desire("model_version", bad, 6)
                await wait_for(lambda: controller.shadow.stats.stale >= stale + 2, timeout=15,
                               what="both older versions ignored")
                assert controller.detector.metadata["checksum"] == m1
        finally:
            await stop_controller(controller, task)
        models_dir = Path(controller.state_dir.path) / "models"
        assert sorted(p.name for p in models_dir.glob("*.npz")) == sorted([f"{m1}.npz", f"{bad}.npz"])
        again = Controller(load_config(config), api_port=0)  # the restart applies the edge's decision
        task = await start_controller(again)
        try:
            assert again.model_path == models_dir / f"{m1}.npz"
            assert again.shadow.doc.rejected == {} and again.pipeline.challenger is None
            assert again.pipeline.watch is None  # the watch ended with the rollback: not resumed
            assert np.isfinite(again.detector.threshold)
        finally:
            await stop_controller(again, task)


async def test_a_challenger_that_alarms_never_alarms_or_acts_and_is_refused_by_the_auto_policy(tmp_path, rig,
                                                                                               model):
    reg = tmp_path / "registry"
    bad = registry.push(reg, variant(model, tmp_path / "bad.npz", threshold=1e-6))[0]["id"]
    keys = 'promotion = "auto"\nchallenge_s = 1.0\nmin_rows = 100'  # min_agreement 0.99 (default)
    with Mosquitto(tmp_path) as broker:
        config = lifecycle_config(tmp_path, rig, model, broker, reg, keys)
        config.write_text(config.read_text().replace("\nshadow = true\n", "\nshadow = false\n", 1))
        controller = Controller(load_config(config), api_port=0)
        task = await start_controller(controller)
        try:
            async with Fleet(broker) as fleet:
                await wait_for(lambda: fleet.last.get("version"), timeout=15, what="a report")
                first = controller.detector
                seen = controller.events.last_id
                await fleet.desire("challenger", bad, 1)
                report = await wait_for(
                    lambda: (c := model_state(fleet.last).get("challenger")) and not c["running"]
                    and fleet.last, timeout=60, what="the challenge to end")
                ended = model_state(report)["challenger"]
                assert ended["verdict"].startswith("not promoted: outside bounds: agreement"), ended
                assert ended["alarm_rate"]["challenger"] > 0.9 and ended["alarm_rate"]["active"] < 0.1, ended
                assert ended["only_challenger"] > 0 and ended["differences"][0]["alarmed"] == "challenger"
                assert report["desired"]["challenger"]["by"] == "edge:promotion" and report["delta"] == {}
                assert controller.detector is first
                assert model_state(report)["id"] == first.metadata["checksum"]
                # the challenger alarmed on ~all rows: none of it reached the alarms or the actions (the
                # active model's own rises, if it had any, are the only line alarms allowed)
                during = controller.events.since(seen)
                raised = [e for e in during if e["kind"] == "alarm" and e["source"] == "line_anomaly"
                          and e.get("state") == "UNACK"]
                acted = [e for e in during if e["kind"] == "action" and e["source"] == "stop_line"]
                assert len(raised) <= ended["rises"]["active"], raised
                assert not acted or ended["rises"]["active"], acted
                assert lifecycle_events(controller, "challenge_refused")
        finally:
            await stop_controller(controller, task)
