"""End-to-end actuation latency on the hardware-in-the-loop rig: fault onset -> actuator write at the PLC.

    python -m benchmarks.hil_latency [--runs 10] [--normal-minutes 2] [--json out.json]

The simulated plant serves its PLCs over real sockets on 127.0.0.1; the real
controller runs the demo config with OPC UA sampling/publishing at 10 ms and
Modbus polling at 10 ms. For each protocol the line-stop action writes through
that protocol (OPC UA node Conveyor.LineStop, or Modbus coil 0). Each run
injects a jam, records its onset (the plant tick it starts on) and the moment
the line-stop write arrives at the simulated PLC, then plays the operator
(ack, reset, restart) and waits for the line to settle. A normal phase first
counts false line alarms. Printed figures, not a pass/fail test.
"""

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.config import load_config
from controller.runtime import Controller
from drivers.base import ConnectionState
from hil_tests.rig.demo_config import DEMO_CONFIG, demo_text
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.servers import Rig
from hil_tests.rig.training import simulated_normal
from models import StreamingDetector

TARGET_TAG = {"opcua": "conveyor_line_stop", "modbus": "line_stop"}


def bench_config(tmp: Path, rig: Rig, model: Path, protocol: str) -> Path:
    text = demo_text(tmp / protocol, model, opcua_endpoint=rig.opcua_endpoint, modbus_port=rig.modbus_port)
    text = text.replace("poll_interval_s = 0.05", "poll_interval_s = 0.01")
    text = text.replace('write = { tag = "conveyor_line_stop", value = true }',
                        f'write = {{ tag = "{TARGET_TAG[protocol]}", value = true }}')
    path = tmp / f"{protocol}.toml"
    path.write_text(text)
    return path


async def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def measure(protocol: str, model: Path, tmp: Path, runs: int, normal_s: float) -> dict:
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        controller = Controller(load_config(bench_config(tmp, rig, model, protocol)), api_port=0)
        task = asyncio.create_task(controller.run())
        await wait(lambda: all(p.state is ConnectionState.CONNECTED for p in controller.plcs), 15)
        await wait(lambda: False, 3.0)  # let subscriptions and the detector settle
        alarm_events_before = _line_alarm_raises(controller)
        t_normal = rig.plant.t
        await wait(lambda: rig.plant.t > t_normal + normal_s, normal_s + 30)
        false_alarms = _line_alarm_raises(controller) - alarm_events_before
        latencies, missed = [], 0
        last_stop = -1e9
        for _ in range(runs):
            await wait(lambda: not controller.alarms.active() and not rig.injector.active(rig.plant.t), 120)
            # the action's min_interval_s (5 s) must have passed, or the stop waits for it
            await wait(lambda ls=last_stop: time.monotonic() - ls > 6.0, 10)
            index = len(rig.injector.faults)
            writes_before = len(rig.recorder.writes)
            rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=3.0))
            if not await wait(lambda wb=writes_before: any(
                    w.actuator == "line_stop" for w in rig.recorder.writes[wb:]), 5.0):
                missed += 1
                continue
            write = next(w for w in rig.recorder.writes[writes_before:] if w.actuator == "line_stop")
            latencies.append((write.mono - rig.recorder.onset(index)) * 1000.0)
            last_stop = write.mono
            await wait(lambda: not rig.injector.active(rig.plant.t), 10)
            for a in controller.alarms.status():
                if a["state"] in ("UNACK", "RTN_UNACK"):
                    controller.ack(a["name"], "bench")
            controller.reset_action("stop_line", "bench", "benchmark: next run")
            rig.plant.set_actuator("line_stop", False)
        ring = controller.step_latency
        n = min(ring.written, ring.ring.shape[0])
        steps = ring.ring[:n] * 1e6
        controller.stop()
        await task
    lat = np.asarray(latencies)
    return {
        "protocol": protocol, "runs": runs, "missed": missed,
        "actuation_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                         "max": float(lat.max()), "min": float(lat.min())} if lat.size else None,
        "false_line_alarms_in_normal_phase": false_alarms, "normal_phase_s": normal_s,
        "hot_path_us": {"n": int(n), "p50": float(np.percentile(steps, 50)),
                        "p99": float(np.percentile(steps, 99)), "max": float(steps.max())},
    }


def _line_alarm_raises(controller: Controller) -> int:
    return sum(1 for e in controller.events.since() if e["source"] == "line_anomaly"
               and e.get("state") == "UNACK")


async def main_async(args) -> list[dict]:
    config = load_config(DEMO_CONFIG)
    tags = config.detector_tags()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        times, rows = simulated_normal(tags, seconds=600.0)
        model = tmp / "model.npz"
        StreamingDetector(tags, config.detector_spec()).fit(rows, times).save(model)
        return [await measure(p, model, tmp, args.runs, args.normal_minutes * 60.0)
                for p in ("opcua", "modbus")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--normal-minutes", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(main_async(args))
    print("HIL actuation latency: jam onset (plant tick) -> line-stop write arriving at the simulated PLC")
    print("OPC UA subscription 10 ms sampling/publishing, Modbus polling 10 ms, loopback, 2-core machine")
    for r in results:
        a = r["actuation_ms"]
        lat = "no stop" if a is None else (f"p50 {a['p50']:.1f} ms  p99 {a['p99']:.1f} ms  "
                                           f"max {a['max']:.1f} ms  min {a['min']:.1f} ms")
        h = r["hot_path_us"]
        print(f"  stop via {r['protocol']:<6}: {r['runs'] - r['missed']}/{r['runs']} stopped, {lat}")
        print(f"      hot path per batch: p50 {h['p50']:.1f} us  p99 {h['p99']:.1f} us  "
              f"max {h['max']:.1f} us "
              f"(n={h['n']}); false line alarms in {r['normal_phase_s']:.0f} s normal: "
              f"{r['false_line_alarms_in_normal_phase']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
