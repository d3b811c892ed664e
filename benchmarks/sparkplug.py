"""Sparkplug B and device shadow figures on a real mosquitto (printed, never pass/fail).

    .venv/bin/python -m benchmarks.sparkplug [--transitions 20] [--outage-s 10] [--json out.json]

The real controller runs the demo line (commissioning config: no detector model, so only the
configured alarms move) on the simulated plant and publishes to a mosquitto on a free port; an
independent host application (hil_tests/rig/sparkplug_host.py: paho + pysparkplug) subscribes.

1. Alarm latency: the `bearing_temp` sensor drops out (Bad quality) for 1 s every 2.5 s, so
   bearing_temp_bad goes UNACK and RTN_UNACK; for each transition, the time from the transition
   (the journal event's time: the alarm engine's time of the step that changed the state) to the
   NDATA carrying that state at the host (time.time() in paho's callback), split where the event
   entered the journal (seen by a task waiting on EventLog.wait_newer, as the node does) and at the
   NDATA's payload timestamp (the node's clock when it encoded the message, ms, same machine):
   transition -> journaled (the pipeline), journaled -> encoded (the node's wake-up and report) and
   encoded -> arrival (publish, broker, subscriber).
   Baseline in the same process and broker: a bare paho QoS 1 publish -> subscriber round trip
   (one at a time); the ratio p50 alarm / p50 baseline is the cost over the broker's own.
   The controller shares this process's event loop with the simulated plant and PLC servers; the
   loop's lag (how late a 5 ms sleep wakes) is printed per phase, as it bounds both figures.
2. Replay: the broker is SIGKILLed for K s (the node's path is closed by a TCP gate until the
   host has subscribed again), then restarted; the backlog's size and its replay rate (historical
   messages / s between the first and last historical arrival), at the configured replay_per_s
   and at a replay_per_s too high to limit.
3. Shadow convergence: the node's path to the broker is cut (the broker stays up), a new desired
   threshold_margin is published (retained) meanwhile, the path restored; the time from the
   restore to the retained reported document showing that version applied with no delta.

The load average is printed: the machine is shared, so compare figures taken under similar load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import config_for_rig, start_controller, stop_controller, without_model
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.gate import Gate
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.rig.servers import Rig
from hil_tests.rig.sparkplug_host import SparkplugHost, mqtt_tables

GROUP, NODE = "demo-site", "demo-line"
LINK = {"keepalive_s": 2.0, "connect_timeout_s": 2.0, "backoff_initial_s": 0.2, "backoff_cap_s": 0.5}
SHADOW_PREFIX = f"linesentry/{GROUP}/{NODE}/shadow"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def summary(ms: list[float]) -> str:
    if not ms:
        return "no samples"
    return (f"p50 {pct(ms, 50):.1f} ms  p99 {pct(ms, 99):.1f} ms  min {min(ms):.1f}  max {max(ms):.1f} "
            f"(n={len(ms)})")


def write_config(tmp: Path, rig: Rig, port: int, *, shadow: bool = False, **sparkplug) -> Path:
    path = config_for_rig(rig, tmp / "state", tmp / "none.npz", tmp / "line.toml")
    text = without_model(path.read_text()) + mqtt_tables(f"mqtt://127.0.0.1:{port}", mqtt_keys=LINK,
                                                         sparkplug=sparkplug)
    path.write_text(text + ("\n[mqtt.shadow]\n" if shadow else ""))
    return path


class LoopLag:
    """How late a 5 ms sleep on this event loop wakes, in ms, while it runs (context for the figures)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            self.lags.append((loop.time() - t - 0.005) * 1000)

    def start(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class JournalWatch:
    """When each event entered the journal: time.time() at the wake-up of EventLog.wait_newer."""

    def __init__(self, events) -> None:
        self.events, self.seen = events, {}
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        last = self.events.last_id
        while True:
            for e in await self.events.wait_newer(last, 1.0):
                self.seen[e["id"]] = time.time()
                last = e["id"]

    def start(self) -> JournalWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def paho_baseline(broker: Mosquitto, n: int) -> list[float]:
    """QoS 1 publish -> arrival at a subscriber on the same broker, ms (one at a time)."""
    arrived: dict[bytes, float] = {}
    got = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(client, userdata, message):
        arrived[message.payload] = time.time()
        got.set()

    sub.on_message = on_message
    sub.on_connect = lambda c, *a: c.subscribe("bench/rtt", qos=1)
    for c in (sub, pub):
        c.connect(broker.host, broker.port)
        c.loop_start()
    subscribed.wait(5)
    out = []
    for i in range(n):
        got.clear()
        key = str(i).encode()
        sent = time.time()
        pub.publish("bench/rtt", key, qos=1)
        if got.wait(2):
            out.append((arrived[key] - sent) * 1000)
        time.sleep(0.02)
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()
    return out


async def alarm_latency(tmp: Path, transitions: int) -> dict:
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        with Mosquitto(tmp) as broker, SparkplugHost(broker.host, broker.port, GROUP) as host:
            controller = Controller(load_config(write_config(tmp, rig, broker.port, tag_interval_s=1.0)),
                                    api_port=0)
            task = await start_controller(controller)
            try:
                await wait_for(lambda: host.of("NBIRTH") and len(host.of("DBIRTH")) >= 2, 15, what="births")
                lag, watch = LoopLag().start(), JournalWatch(controller.events).start()
                first = controller.events.since()[-1]["id"]
                while True:
                    events = [e for e in controller.events.since() if e["id"] > first
                              and e["source"] == "bearing_temp_bad" and e["kind"] == "alarm"]
                    if len(events) >= transitions:
                        break
                    rig.injector.faults.append(FaultSpec(type="dropout", tag="bearing_temp",
                                                         onset_s=rig.plant.t, duration_s=1.0))
                    await asyncio.sleep(2.5)
                await asyncio.sleep(1.0)
                lag.stop()
                watch.stop()
            finally:
                await stop_controller(controller, task)
            name = "Alarms/bearing_temp_bad/State"
            ndata = [(r.arrived, r.timestamp / 1000, r.metric(name).value) for r in host.of("NDATA")
                     if r.metric(name)]
            latencies, journaled, node, delivery, missing = [], [], [], [], 0
            for e in events[:transitions]:
                match = next((x for x in ndata if x[2] == e["state"] and x[0] >= e["time"] - 0.001), None)
                if match is None:
                    missing += 1
                    continue
                latencies.append((match[0] - e["time"]) * 1000)
                journaled.append((watch.seen[e["id"]] - e["time"]) * 1000)
                node.append((match[1] - watch.seen[e["id"]]) * 1000)
                delivery.append((match[0] - match[1]) * 1000)
                ndata = [x for x in ndata if x[0] > match[0]]
            baseline = await asyncio.to_thread(paho_baseline, broker, 200)
    return {"alarm_ms": latencies, "journaled_ms": journaled, "node_ms": node, "delivery_ms": delivery,
            "missing": missing, "baseline_ms": baseline, "loop_lag_ms": lag.lags,
            "violations": host.violations}


async def replay_rate(tmp: Path, outage_s: float, replay_per_s: int) -> dict:
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        with Mosquitto(tmp) as broker, SparkplugHost(broker.host, broker.port, GROUP) as host:
            gate = await Gate(broker.host, broker.port).start()
            config = load_config(write_config(tmp, rig, gate.port, tag_interval_s=0.05,
                                              replay_per_s=replay_per_s))
            controller = Controller(config, api_port=0)
            task = await start_controller(controller)
            try:
                await wait_for(lambda: host.of("NBIRTH") and len(host.of("DBIRTH")) >= 2, 15, what="births")
                broker.kill()
                await gate.stop_listening()
                await asyncio.sleep(outage_s)
                lag = LoopLag().start()
                mark = host.mark()
                await asyncio.to_thread(broker.start)
                await asyncio.to_thread(host.wait_subscribed, 10.0)
                restored = time.time()
                await gate.start()

                def historical():
                    return [r for r in host.of("NDATA", "DDATA", since=mark) if r.historical]

                # done when no historical message came for 2 s
                last_n, last_change = 0, time.monotonic()
                while time.monotonic() - last_change < 2.0:
                    n = len(historical())
                    if n != last_n:
                        last_n, last_change = n, time.monotonic()
                    await asyncio.sleep(0.05)
                lag.stop()
                replay = historical()
                live = [r for r in host.of("NDATA", "DDATA", since=mark) if not r.historical]
            finally:
                await stop_controller(controller, task)
                await gate.stop()
    span = replay[-1].arrived - replay[0].arrived if len(replay) > 1 else 0.0
    return {"replay_per_s": replay_per_s, "outage_s": outage_s, "backlog": len(replay),
            "replay_s": span, "rate_per_s": (len(replay) - 1) / span if span else None,
            "first_live_after_restore_s": (live[0].arrived - restored) if live else None,
            "live_during_replay": sum(1 for r in live if replay and r.arrived < replay[-1].arrived),
            "loop_lag_ms": lag.lags, "violations": host.violations}


async def shadow_convergence(tmp: Path, runs: int) -> dict:
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        with Mosquitto(tmp) as broker:
            gate = await Gate(broker.host, broker.port).start()
            controller = Controller(load_config(write_config(tmp, rig, gate.port, shadow=True,
                                                             tag_interval_s=1.0)), api_port=0)
            reported: dict = {}
            fleet = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            fleet.on_message = lambda c, u, m: reported.update(json.loads(m.payload))
            fleet.on_connect = lambda c, *a: c.subscribe(f"{SHADOW_PREFIX}/reported", qos=1)
            fleet.connect(broker.host, broker.port)
            fleet.loop_start()
            task = await start_controller(controller)
            times = []
            try:
                await wait_for(lambda: reported.get("state"), 15, what="a first reported document")
                for run in range(runs):
                    version, margin = 100 + run, (1.1, 1.2)[run % 2]
                    await gate.stop_listening()  # partition: the broker stays up
                    await asyncio.sleep(1.0)
                    body = json.dumps({"value": margin, "version": version, "by": "bench"})
                    fleet.publish(f"{SHADOW_PREFIX}/desired/threshold_margin", body, qos=1,
                                  retain=True).wait_for_publish(5)
                    await asyncio.sleep(0.5)
                    restored = time.monotonic()
                    await gate.start()

                    def converged(v=version):
                        d = reported.get("desired", {}).get("threshold_margin", {})
                        return d.get("version") == v and "threshold_margin" not in reported.get("delta", {})

                    await wait_for(converged, 30, 0.005, what="the reported state to converge")
                    times.append((time.monotonic() - restored) * 1000)
            finally:
                await stop_controller(controller, task)
                fleet.loop_stop()
                await gate.stop()
    return {"converge_ms": times}


async def main_async(args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = {"load": os.getloadavg()}
        out["latency"] = await alarm_latency(tmp / "latency", args.transitions)
        out["replay"] = [await replay_rate(tmp / f"replay-{r}", args.outage_s, r) for r in (500, 100_000)]
        try:
            import controller.shadow  # noqa: F401  (helper W's module: measured when it exists)
        except ImportError:
            out["shadow"] = None
        else:
            out["shadow"] = await shadow_convergence(tmp / "shadow", args.shadow_runs)
        out["load_after"] = os.getloadavg()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transitions", type=int, default=20)
    ap.add_argument("--outage-s", type=float, default=10.0)
    ap.add_argument("--shadow-runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    r = asyncio.run(main_async(args))
    lat = r["latency"]
    print(f"load average {r['load'][0]:.1f} at start, {r['load_after'][0]:.1f} at the end (2 cores)")
    print("alarm transition (journal) -> NDATA at an independent subscriber, mosquitto on loopback:")
    print(f"  total:    {summary(lat['alarm_ms'])}, transitions without an NDATA: {lat['missing']}")
    print(f"   = transition -> journaled: {summary(lat['journaled_ms'])}")
    print(f"   + journaled -> encoded:   {summary(lat['node_ms'])}")
    print(f"   + encoded -> arrival:     {summary(lat['delivery_ms'])}")
    print(f"  event loop lag meanwhile: {summary(lat['loop_lag_ms'])}")
    print(f"  baseline: {summary(lat['baseline_ms'])}  (bare paho QoS 1 publish -> subscriber)")
    if lat["alarm_ms"] and lat["baseline_ms"]:
        ratio = statistics.median(lat["alarm_ms"]) / statistics.median(lat["baseline_ms"])
        print(f"  ratio p50 node / p50 baseline: {ratio:.1f}")
    for rp in r["replay"]:
        rate = "n/a" if rp["rate_per_s"] is None else f"{rp['rate_per_s']:.0f} msg/s"
        live = rp["first_live_after_restore_s"]
        print(f"replay after a {rp['outage_s']:.0f} s broker outage, replay_per_s={rp['replay_per_s']}: "
              f"{rp['backlog']} messages in {rp['replay_s']:.2f} s = {rate}; first live message "
              f"{'n/a' if live is None else f'{live:.2f} s'} after the broker was back, "
              f"{rp['live_during_replay']} live messages during the replay")
        print(f"  event loop lag during the replay: {summary(rp['loop_lag_ms'])}")
    if r["shadow"] is None:
        print("shadow convergence: controller.shadow not available")
    else:
        print(f"shadow convergence after a partition (path restored -> reported desired applied): "
              f"{summary(r['shadow']['converge_ms'])}")
    bad = lat["violations"] + [v for rp in r["replay"] for v in rp["violations"]]
    print(f"Sparkplug rule violations seen by the host: {len(bad)}" + (f" e.g. {bad[:3]}" if bad else ""))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1, default=str))


if __name__ == "__main__":
    main()
