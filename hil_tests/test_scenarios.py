"""Scenario files: every shipped file loads, bad files fail in one line, and a scenario plays end to end."""

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from controller.config import load_config
from controller.runtime import Controller
from drivers.modbus.driver import ModbusDriver
from drivers.opcua.driver import OpcUaDriver
from hil_tests.rig.controller_run import config_for_rig, start_controller, stop_controller
from hil_tests.rig.endpoints import modbus_config, opcua_config
from hil_tests.rig.faults import FAULT_TYPES
from hil_tests.rig.plant import INDEX, Plant, PlantParams
from hil_tests.rig.recorder import Recorder, Report, judge
from hil_tests.rig.runner import run_scenario
from hil_tests.rig.scenario import (
    SCENARIO_DIR,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    shipped_scenarios,
)
from hil_tests.rig.servers import Rig

REQUIRED = {
    "jam",
    "bearing_wear",
    "leak",
    "cavitation",
    "sensor_spike",
    "sensor_stuck",
    "dropout",
    "plc_restart",
    "normal_10min",
}


def test_every_shipped_scenario_loads_and_the_required_ones_exist():
    loaded = {p.stem: load_scenario(p) for p in shipped_scenarios()}
    assert set(loaded) >= REQUIRED
    for stem, sc in loaded.items():
        assert sc.name == stem
        assert sc.normal, f"{stem}: a scenario needs a normal phase to measure false alarms"
    assert loaded["normal_10min"].faults == [] and loaded["normal_10min"].duration_s == 600
    covered = {f.type for sc in loaded.values() for f in sc.faults}
    assert covered == set(FAULT_TYPES)  # every fault class is exercised by some shipped file


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


GOOD = 'name = "x"\nduration_s = 30\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\nduration_s = \n', "not valid TOML"),
        ('name = "x"\n', "duration_s: Field required"),
        (GOOD + 'colour = "red"\n', "colour: unknown key"),
        (
            GOOD + '[[faults]]\ntype = "meltdown"\nonset_s = 1\n',
            "faults[0].type: unknown fault type 'meltdown'",
        ),
        (GOOD + '[[faults]]\ntype = "stuck"\nonset_s = 1\n', "faults[0]: fault 'stuck' needs tag"),
        (GOOD + '[[faults]]\ntype = "jam"\nonset_s = 40\n', "onset_s 40 is not before duration_s 30"),
        (
            GOOD + '[[faults]]\ntype = "jam"\nonset_s = 10\n[faults.expect]\nwithin_ms = -5\n',
            "faults[0].expect.within_ms: Input should be greater than 0",
        ),
        (
            GOOD
            + '[[faults]]\ntype = "jam"\nonset_s = 10\nduration_s = 2\n[[normal]]\nstart_s = 0\nend_s = 12\n',
            "normal[0] (0-12 s) overlaps faults[0]",
        ),
        (GOOD + "[[normal]]\nstart_s = 5\nend_s = 2\n", "end_s (2) must be after start_s (5)"),
    ],
)
def test_bad_scenario_files_fail_with_one_line_naming_file_and_key(tmp_path, text, message):
    with pytest.raises(ScenarioError) as err:
        load_scenario(write(tmp_path, text))
    msg = str(err.value)
    assert message in msg and msg.startswith(str(tmp_path / "bad.toml")) and "\n" not in msg


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")


def test_a_scenario_drives_the_injector_on_plant_time():
    sc = load_scenario(SCENARIO_DIR / "jam.toml")
    plant, inj = Plant(sc.seed), sc.injector()
    onsets: list[float] = []
    inj.listeners.append(lambda i, f, phase, t: onsets.append(t) if phase == "onset" else None)
    before = np.mean([inj.step(plant).values[INDEX["motor_current"]] for _ in range(3000)])
    during = np.mean([inj.step(plant).values[INDEX["motor_current"]] for _ in range(300)])
    assert onsets == [pytest.approx(30.0)] and during > 1.8 * before


async def test_a_scenario_played_in_real_time_against_a_stand_in_controller_yields_a_report():
    """A toy controller (current threshold via OPC UA, line stop via Modbus) proves the measurement path."""
    sc = parse_scenario(
        {
            "name": "mini_jam",
            "duration_s": 2.5,
            "seed": 3,
            "settle_s": 1.0,
            "normal": [{"start_s": 0, "end_s": 1.0}],
            "faults": [
                {
                    "type": "jam",
                    "onset_s": 1.0,
                    "duration_s": 1.0,
                    "expect": {"alarm": "conveyor_jam", "within_ms": 500, "action": "line_stop"},
                }
            ],
        }
    )
    alarms: list[tuple[float, str]] = []

    async def controller(rig: Rig) -> None:
        ou = OpcUaDriver(
            opcua_config(
                rig.opcua_endpoint,
                timeout_s=1.0,
                groups=[{"name": "default", "mode": "polling", "poll_interval_ms": 10}],
            )
        )
        mb = ModbusDriver(modbus_config(rig.modbus_port, timeout_s=0.5))
        await ou.connect()
        await mb.connect()
        try:
            while True:
                batch = await ou.read(["motor_current"])
                if batch.values[0] > 30.0 and not alarms:
                    alarms.append((time.monotonic(), "conveyor_jam"))
                    await mb.write("line_stop", 1)
                await asyncio.sleep(0.01)  # the toy controller's scan period
        finally:
            await ou.close()
            await mb.close()

    run = await run_scenario(sc, during=controller)
    report = Report()
    result = report.add_run(sc, run.recorder, alarms, run.started_mono)
    assert result.detected == 1 and result.false_alarms == [] and result.missed == []
    assert 0 < result.detection_ms[0] < 500 and result.actuation_ms[0] >= result.detection_ms[0]
    assert run.recorder.writes[0].server == "press" and run.rig.plant.line_stop
    assert report.summary()["mini_jam"]["actuation_ms"]["p50"] == pytest.approx(result.actuation_ms[0])


# ---- every shipped scenario detects what it claims, against the real controller ----------------

LEAD_S = 8.0  # normal operation kept before the first fault (the files give 20-60 s)
NORMAL_ONLY_S = 30.0  # a fault-free file is played this long (normal_10min: the full run is a benchmark)


def compressed(sc: Scenario) -> Scenario:
    """The same faults, expectations and seed with the normal lead-in cut to LEAD_S."""
    d = sc.model_dump()
    if not sc.faults:
        d.update(duration_s=NORMAL_ONLY_S, normal=[{"start_s": 0.0, "end_s": NORMAL_ONLY_S}])
        return parse_scenario(d)
    shift = max(0.0, min(f.onset_s for f in sc.faults) - LEAD_S)
    for f in d["faults"]:
        f["onset_s"] -= shift
    d.update(duration_s=sc.duration_s - shift, normal=[{"start_s": 0.0, "end_s": LEAD_S}])
    return parse_scenario(d)


def expectations_met(sc: Scenario, recorder: Recorder, controller: Controller) -> bool:
    """Every fault has begun and every expected alarm and actuator write has been seen."""
    raised = {e["source"] for e in controller.events.since()
              if e["kind"] == "alarm" and e.get("state") == "UNACK"}
    written = {w.actuator for w in recorder.writes if w.value}
    return all(recorder.onset(i) is not None and (f.expect is None or (
        (f.expect.alarm is None or f.expect.alarm in raised)
        and (f.expect.action is None or f.expect.action in written))) for i, f in enumerate(sc.faults))


def a_detection_missed(sc: Scenario, recorder: Recorder, controller: Controller) -> bool:
    """Some fault's expected alarm has not come within its within_ms (plus 0.5 s for the event to
    land): the verdict is decided (judge() counts a later alarm as missed), so the run can end."""
    now = time.time()
    raised = [(e["time"], e["source"]) for e in controller.events.since()
              if e["kind"] == "alarm" and e.get("state") == "UNACK"]
    for i, f in enumerate(sc.faults):
        onset = recorder.onset(i, "wall")
        if f.expect is None or f.expect.alarm is None or onset is None:
            continue
        if now - onset > f.expect.within_ms / 1000 + 0.5 and not any(
                name == f.expect.alarm and t >= onset for t, name in raised):
            return True
    return False


# Known detection gaps of the demo model, kept as strict expected failures so the claim in the
# scenario file stays and this test turns red the day detection improves (issue: detection that
# works out of the box). Measured, not tuned: the same two miss on the code before this change.
KNOWN_MISSES = {
    "leak": "a 30 % leak (flow +20 %, pressure -1 bar, 2 s ramp) is not flagged within 5 s",
    "cavitation": "cavitation at intensity 0.6 is not flagged within 3 s",
}


def _scenario_params():
    return [pytest.param(p, id=p.stem, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[p.stem])]
                         if p.stem in KNOWN_MISSES else []) for p in shipped_scenarios()]


async def play(path: Path, workdir: Path, model: Path):
    """One shipped file, lead-in shortened, against its own rig and controller on the demo config.
    The run ends once everything it expects was seen, or once an expected alarm is past its
    within_ms (a detection after it counts as missed, so the verdict cannot change)."""
    sc = compressed(load_scenario(path))
    plant = Plant(sc.seed, PlantParams(watchdog_timeout_s=sc.watchdog_timeout_s))
    async with Rig(plant, sc.injector(), Recorder(), opcua_port=0, modbus_port=0) as rig:
        config = load_config(config_for_rig(rig, workdir / "state", model, workdir / "line.toml"))
        controller = Controller(config, api_port=0)
        started = time.time()
        task = await start_controller(controller)
        try:
            while plant.t < sc.duration_s and not (
                    sc.faults and plant.t > max(f.onset_s for f in sc.faults) + 1.0
                    and expectations_met(sc, rig.recorder, controller)) and not a_detection_missed(
                    sc, rig.recorder, controller):
                await asyncio.sleep(0.05)
        finally:
            await stop_controller(controller, task)
    alarms = [(e["time"], e["source"]) for e in controller.events.since()
              if e["kind"] == "alarm" and e.get("state") == "UNACK"]
    return judge(sc, rig.recorder, alarms, started, clock="wall")


def play_in_this_process(path: Path, workdir: Path, model: Path):
    return asyncio.run(play(path, workdir, model))


# Scenarios mostly wait on plant time (a drift needs half a minute to cross its limit), so the
# selected files play two at a time, each in its own process (its own event loop and core: in one
# loop, plays side by side delayed each other's PLC polls into false comm-loss alarms).
PROCESSES = 2


@pytest.fixture(scope="module")
def scenario_results(request, tmp_path_factory, model) -> dict:
    """{path: RunResult, or the exception its play raised} for the files this session selected."""
    paths = [item.callspec.params["path"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_every_shipped_scenario_detects_what_it_claims"]
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {p: pool.submit(play_in_this_process, p, tmp_path_factory.mktemp(p.stem), model)
                   for p in paths}
        return {p: f.exception() or f.result() for p, f in futures.items()}


@pytest.mark.parametrize("path", _scenario_params())
def test_every_shipped_scenario_detects_what_it_claims(scenario_results, path):
    """Played against the real controller (see `play`): every expected alarm within its within_ms,
    every expected actuator write, no false alarm."""
    result = scenario_results[path]
    if isinstance(result, BaseException):
        raise result
    assert result.missed == [] and result.detected == result.faults, result.missed
    assert result.missed_actions == [], result.missed_actions
    assert result.false_alarms == [], result.false_alarms
