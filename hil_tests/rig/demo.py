"""The demo line: the simulated plant and the real controller on the demo config (demo_config.py).

Starts the plant's OPC UA and Modbus servers on 127.0.0.1 (4840 and 5020),
fits the demo model on simulated normal operation if there is none yet, runs
the controller from a clean state (the state file of an earlier run, e.g. a
latch left by Ctrl-C, is removed first), and injects a fault every so often so
a newcomer sees detection and actuation within a minute. After each line stop the demo plays
the operator: it waits until the fault is over, the alarm that stopped the line has cleared
and the line has come to rest, then acknowledges the alarms, resets the latched action (with
a reason) and restarts the line. A new fault comes only once the line is quiet again (no
active alarm, no fault acting).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controller.config import LineConfig, load_config
from controller.runtime import Controller
from controller.statedir import STATE_FILE
from drivers.base import ConnectionState
from hil_tests.rig.demo_config import DEMO_CONFIG
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.plant import Plant
from hil_tests.rig.servers import Rig
from hil_tests.rig.training import simulated_normal
from models import ModelError, StreamingDetector, load_model

FAULTS = (
    FaultSpec(type="jam", onset_s=0, duration_s=4.0),
    FaultSpec(type="stuck", onset_s=0, duration_s=8.0, tag="vibration_rms"),
    FaultSpec(type="leak", onset_s=0, duration_s=10.0),
    FaultSpec(type="dropout", onset_s=0, duration_s=5.0, tag="pump_flow"),
    FaultSpec(type="bearing_wear", onset_s=0, duration_s=20.0, ramp_s=10.0),
)
# The demo "operator" restarts a stopped line this long after the stop at the earliest (and only
# once the fault is over and the alarm has cleared): about the stops the demo model was trained
# on (hil_tests.rig.training: 3 s). After longer stops the detector scores the restart of the
# cooled-down line as an anomaly and the line is stopped again at once.
OPERATOR_DELAY_S = 3.0


@dataclass
class DemoLog:
    """What happened, for the summary printed at the end."""

    faults: list[tuple[float, str]] = field(default_factory=list)  # (wall time, description)
    stops: list[float] = field(default_factory=list)  # wall times of line stops at the PLC
    alarms: list[tuple[float, str]] = field(default_factory=list)  # (wall time, alarm) raised

    def first_after(self, t: float, until: float) -> float | None:
        return next((s for s in self.stops if t <= s < until), None)

    def first_alarm_after(self, t: float, until: float) -> tuple[float, str] | None:
        return next(((at, name) for at, name in self.alarms if t <= at < until), None)


def ensure_model(config: LineConfig, console: Console) -> None:
    """Fit the demo model on ten simulated minutes of normal operation if it does not exist."""
    path = config.detector.model
    if path is None:
        return
    if path.exists():
        try:
            load_model(path, expected_tags=config.detector_tags())
            return
        except ModelError as exc:  # the demo's own model, e.g. from an older linesentry: refit it
            console.print(f"demo model not usable ({exc}); refitting")
    console.print(f"fitting the demo model on 10 simulated minutes of normal operation -> {path}")
    tags = config.detector_tags()
    times, rows = simulated_normal(tags, seconds=600.0)
    StreamingDetector(tags, config.detector_spec()).fit(rows, times).save(path)


async def run_demo(config_path: Path = DEMO_CONFIG, seconds: float | None = None, live: bool = True,
                   fault_every_s: float = 20.0, console: Console | None = None) -> DemoLog:
    console = console or Console()
    config = load_config(config_path)
    ensure_model(config, console)
    saved = config.controller.state_dir / STATE_FILE
    if saved.exists():  # a demo starts clean: a latch or shelve left by the last run must not linger
        saved.unlink()
        console.print(f"demo: starting from a clean state (removed {saved})")
    drivers = {protocol: plc.driver for (protocol, _), plc in config.plcs()}
    port = int(drivers["opcua"].endpoint.rsplit(":", 1)[1].split("/")[0])
    rig = Rig(Plant(seed=7), opcua_port=port, modbus_port=drivers["modbus"].port)
    log = DemoLog()
    async with rig:
        controller = Controller(config)
        run = asyncio.create_task(controller.run())
        try:
            deadline = time.monotonic() + 15
            while not all(p.state is ConnectionState.CONNECTED for p in controller.plcs):
                if run.done():
                    run.result()
                if time.monotonic() > deadline:
                    raise RuntimeError("the controller did not connect to the simulated PLCs within 15 s")
                await asyncio.sleep(0.05)
            console.print(f"controller API on http://127.0.0.1:{controller.api_port}/api/v1/status; "
                          "Ctrl-C stops")
            if config.mqtt is not None and config.mqtt.sparkplug is not None:
                group, node = config.mqtt.sparkplug.ids_for(config.controller.site, config.controller.line)
                console.print(f"Sparkplug B edge node spBv1.0/{group}/+/{node} on {config.mqtt.broker}")
            await _drive(controller, rig, log, seconds, live, fault_every_s, console)
        finally:
            controller.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await run
    return log


async def _drive(controller: Controller, rig: Rig, log: DemoLog, seconds: float | None, live: bool,
                 fault_every_s: float, console: Console) -> None:
    started = time.monotonic()
    next_fault, fault_index, stopped_at = started + fault_every_s / 2, 0, None
    seen_event = controller.events.last_id
    with Live(render(controller, log), console=console, refresh_per_second=4,
              transient=False) if live else contextlib.nullcontext() as view:
        while seconds is None or time.monotonic() - started < seconds:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if rig.plant.line_stop and stopped_at is None:
                stopped_at = now
                log.stops.append(time.time())
            fault_acting = bool(rig.injector.active(rig.plant.t))
            if stopped_at is not None and _may_restart(controller, rig, now - stopped_at):
                _operator_restart(controller, rig)
                stopped_at = None
                next_fault = max(next_fault, now + fault_every_s / 2)
            quiet = not controller.alarms.active() and not fault_acting
            if stopped_at is None and now >= next_fault and quiet:
                spec = FAULTS[fault_index % len(FAULTS)]
                fault_index += 1
                onset = rig.plant.t
                rig.injector.faults.append(spec.model_copy(update={"onset_s": onset}))
                what = spec.type + (f" on {spec.tag}" if spec.tag else "")
                log.faults.append((time.time(), what))
                controller.events.add("model", "demo", f"injected fault: {what}")
                next_fault = now + fault_every_s
            for event in controller.events.since(seen_event):
                seen_event = event["id"]
                if event["kind"] == "alarm" and event.get("state") == "UNACK":
                    log.alarms.append((event["time"], event["source"]))
                if not live:
                    console.print(f"{time.strftime('%H:%M:%S', time.localtime(event['time']))} "
                                  f"{event['kind']:<6} {event['source']:<24} {event['message']}")
            if live:
                view.update(render(controller, log))


def _may_restart(controller: Controller, rig: Rig, stopped_for: float) -> bool:
    """What an operator checks before restarting a stopped line: the fault is over, no alarm that
    drives an action is still active (a restart into a standing trip is stopped again at once),
    the detector's line alarm is off, and the line has come to rest."""
    trips = {a.alarm for a in controller.config.actions}
    return (stopped_for > OPERATOR_DELAY_S and not rig.injector.active(rig.plant.t)
            and not trips.intersection(controller.alarms.active()) and not controller.line_alarm
            and rig.plant.speed < 1.0)


def _operator_restart(controller: Controller, rig: Rig) -> None:
    for alarm in controller.alarms.status():
        if alarm["state"] in ("UNACK", "RTN_UNACK"):
            controller.ack(alarm["name"], "demo-operator")
    for action in controller.actions.status():
        if action["latched"] or action["failed"]:
            controller.reset_action(action["name"], "demo-operator", "demo: fault over, line at rest")
    rig.plant.set_actuator("line_stop", False)
    controller.events.add("model", "demo", "operator restarted the line")


def tag_value(row: dict, unit: str, bit: bool) -> str:
    """A tag's value as an operator reads it: on/off for a bit (never 1.000), a number with its unit."""
    if row["text"] is not None:
        return row["text"]
    if row["value"] is None:
        return "-"
    if bit:
        return "on" if row["value"] else "off"
    return f"{row['value']:.4g}" + (f" {unit}" if unit else "")


def bit_tags(config: LineConfig) -> set[str]:
    """Tags that carry a bit: a coil or discrete input, or a tag the controller writes true/false to
    (an OPC UA Boolean node's kind is only known once connected)."""
    writes = [a.write for a in config.actions] + [w for _, plc in config.plcs() for w in plc.safe_state]
    return ({t for t, ref in config.tags().items() if ref.kind == "bit"}
            | {w.tag for w in writes if isinstance(w.value, bool)})


def render(controller: Controller, log: DemoLog) -> Group:
    tags = Table(title="tags", expand=False)
    for col in ("tag", "value", "quality"):
        tags.add_column(col)
    units, bits = controller.config.detector.units, bit_tags(controller.config)
    for row in controller.tags():
        value = tag_value(row, units.get(row["tag"], ""), row["tag"] in bits)
        style = "" if row["quality"] == "good" else "red"
        tags.add_row(row["tag"], value, row["quality"], style=style)
    det = controller.detector
    score = f"line score {controller.line_score:.3f}" + (f" / threshold {det.threshold:.3f}" if det else "")
    alarms = Table(title="alarms")
    for col in ("alarm", "state", "priority", "why"):
        alarms.add_column(col)
    for a in controller.alarm_list():
        if a["state"] != "NORMAL":
            why = (a.get("explanation") or {}).get("why", "")
            alarms.add_row(a["name"], a["state"], a["priority"], why,
                           style="bold red" if a["state"] == "UNACK" else "")
    events = Table(title="latest events")
    for col in ("time", "kind", "source", "message"):
        events.add_column(col)
    for e in controller.events.since(max(0, controller.events.last_id - 8)):
        events.add_row(time.strftime("%H:%M:%S", time.localtime(e["time"])), e["kind"], e["source"],
                       e["message"][:70])
    counts = f"faults injected {len(log.faults)}, line stops {len(log.stops)}"
    return Group(score, *why_line(controller), tags, plcs(controller), alarms, events,
                 *protections(controller), counts)


def plcs(controller: Controller) -> Table:
    """PLC health: session state, age of the last good data, reads and errors, the last error with
    how long ago data last came (a stale error of a PLC that is fine again reads as such)."""
    table = Table(title="PLCs")
    for col in ("plc", "state", "last good data", "reads", "read errors", "last error"):
        table.add_column(col)
    for p in controller.status()["plcs"]:
        age = p["last_good_data_age_s"]
        state = "COMM LOSS" if p["comm_lost"] else p["state"]
        table.add_row(p["name"], state, "never" if age is None else f"{age:.1f} s ago", str(p["reads"]),
                      str(p["read_errors"]), p["last_error"] or "", style="red" if p["comm_lost"] else "")
    return table


def why_line(controller: Controller) -> list[Text]:
    """Why the line alarm is on, or why it last fired (and when): it stays on screen, unlike the
    events that scroll away."""
    now = controller.pipeline.explanation
    if now is not None:
        return [Text(f"why: {now['text']}", style="bold red")]
    last = max((e for e in controller.pipeline.alarm_explanations.values() if e), default=None,
                key=lambda e: e["at"] or 0.0)
    if last is None:
        return []
    at = time.strftime("%H:%M:%S", time.localtime(last["at"])) if last["at"] else "?"
    return [Text(f"last line alarm {at}: {last['text']}", style="yellow")]


def protections(controller: Controller) -> list[Text]:
    """The standing indication of the live view: what will not act now, and what was restored."""
    disabled = controller.protections_disabled()
    lines = [Text(f"PROTECTIONS DISABLED: {len(disabled)}", style="bold red")] if disabled else [
        Text("protections: all armed", style="green")]
    lines += [Text(f"  {p['message']}", style="red") for p in disabled]
    return lines + [Text(r, style="yellow") for r in controller.restored]
