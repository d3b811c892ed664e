"""A fleet on one machine: ten `linesentry run` processes on light simulated lines (hil_tests/rig/fleet.py)
against one mosquitto and one VictoriaMetrics.

1. all ten start in parallel and are ready (/readyz), every node born at the independent host;
2. outage of both at once: the broker is killed (SIGKILL, behind a TCP gate so the host is
   subscribed again before any node reconnects) and the cloud refuses connections (fault proxy);
   each line stores windows and Sparkplug messages meanwhile; both come back;
3. a fleet-wide model rollout: `linesentry model push` to a registry dir, `linesentry model
   promote ID --line fleet/lineNN ... --broker --wait` (where that command is missing: the same
   desired model_version published here); every line's retained reported shadow shows the new
   model.id (the rollout time is printed). Only the first model is in each line's models_dir:
   every edge fetches the new one from the registry ([models] registry, the shadow's fetch);
4. per line, against what the line itself committed (its outbox file, archived by triggers added
   before the first start): every cloud window and event in VictoriaMetrics exactly once
   (no duplicate, none missing, no extra, windows contiguous across the outage), every stored
   Sparkplug message replayed once in commit order, the Sparkplug rules hold, no (timestamp,
   metric) twice at the host, and the host saw as many live messages as the node counted.

Exactly-once is checked for this outage (the controllers are not killed; docs/sparkplug.md: a
kill -9 between PUBACK and the row's ack resends). The CPU and memory per line are printed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from controller.config import load_config
from hil_tests.cloud_support import (
    assert_exactly_once,
    drain_leftovers,
    expected_samples,
    exported_samples,
    line_ends,
)
from hil_tests.rig import fleet
from hil_tests.rig.gate import Gate
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.rig.sparkplug_host import SparkplugHost

N = 10
WINDOW_S = 2.0
WINDOW_MS = int(WINDOW_S * 1000)


class ShadowWatcher:
    """The fleet side of the shadow: paho (its own thread), every line's retained reported document."""

    def __init__(self, host: str, port: int) -> None:
        self.reports: dict[str, dict] = {}
        self.arrived: dict[str, float] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-rollout")
        self.client.on_connect = lambda c, *_: c.subscribe(f"linesentry/{fleet.SITE}/+/shadow/reported", 1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_: self._subscribed.clear()
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("shadow watcher not subscribed")

    def _on_message(self, client, userdata, message) -> None:
        line = message.topic.split("/")[2]
        with self._lock:
            self.reports[line] = json.loads(message.payload)
            self.arrived[line] = time.time()

    def model_id(self, line: str) -> str | None:
        with self._lock:
            return ((self.reports.get(line) or {}).get("state") or {}).get("model", {}).get("id")

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"shadow watcher not subscribed again after {timeout} s")

    def desire(self, line: str, field: str, value: str, version: int) -> None:
        info = self.client.publish(f"{fleet.shadow_prefix(line)}/desired/{field}",
                                   fleet.desired_payload(value, version), qos=1, retain=True)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def as_message(r) -> tuple:
    return r.kind, r.device, r.timestamp, tuple((m.alias, m.value) for m in r.metrics)


def windows(box: fleet.ArchivedOutbox) -> int:
    """Summary windows the line committed for the cloud so far."""
    return len(line_ends(box.cloud_lines()))


def live_count(host: SparkplugHost, node: str) -> int:
    """Live (not replayed) messages the node counts as `published`: DBIRTH, NDATA, DDATA, DDEATH."""
    return sum(1 for r in host.of("DBIRTH", "NDATA", "DDATA", "DDEATH", edge_node=node) if not r.historical)


async def test_ten_lines_exactly_once_across_broker_and_cloud_outage_and_a_fleet_rollout(
        tmp_path, victoria, proxy, monkeypatch):
    monkeypatch.setenv(fleet.TOKEN_ENV, "fleet-token")
    t_test = time.monotonic()
    plcs = [await fleet.LinePlc(seed=i).start() for i in range(N)]
    lines: list[fleet.FleetLine] = []
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, fleet.SITE) as host:
        gate = await Gate(broker.host, broker.port).start()
        watcher = ShadowWatcher(broker.host, broker.port)
        try:
            registry = tmp_path / "registry"
            configs = [fleet.line_config(tmp_path / fleet.line_name(i + 1), i + 1, plc_port=plcs[i].port,
                                         broker_port=gate.port, sync_url=proxy.url,
                                         model=tmp_path / fleet.line_name(i + 1) / "state/models/m1.npz",
                                         registry=registry)
                       for i in range(N)]
            m1 = await asyncio.to_thread(fleet.fit_model, configs[0], tmp_path / "models/m1.npz", 1)
            m2 = await asyncio.to_thread(fleet.fit_model, configs[0], tmp_path / "models/m2.npz", 2)
            new_id = _model_id(m2)
            boxes = []
            for cfg in configs:
                models = cfg.parent / "state/models"
                models.mkdir(parents=True, exist_ok=True)
                shutil.copy(m1, models / "m1.npz")
                boxes.append(fleet.ArchivedOutbox(cfg.parent / "state"))
            lines = [fleet.FleetLine(cfg, i + 1, WINDOW_S) for i, cfg in enumerate(configs)]
            names = [x.name for x in lines]

            # 1. parallel start, all ready and born, a few windows in the cloud
            ready_s = await asyncio.to_thread(fleet.start_all, lines, 120)
            await wait_for(lambda: all(host.last_birth(n) and host.last_birth(n, "plc") for n in names), 30,
                           interval=0.2, what="an NBIRTH and DBIRTH of every line")
            await wait_for(lambda: all(b.cloud_count() >= 2 and b.pending() == 0 for b in boxes), 30,
                           interval=0.2, what="two windows of every line synced")
            t0, ticks0 = time.monotonic(), sum(x.cpu_ticks() for x in lines)

            # 2. broker killed and cloud refused, at once
            await gate.stop_listening()
            broker.kill()
            await proxy.set("refuse")
            at_cut = [windows(b) for b in boxes]
            await wait_for(lambda: all(windows(b) >= c + 4 and b.sparkplug_count() >= 5
                                       for b, c in zip(boxes, at_cut, strict=True)), 40, interval=0.2,
                           what="4 windows and 5 Sparkplug messages stored by every line in the outage")
            stored = [b.sparkplug_count() for b in boxes]
            mark = host.mark()
            await asyncio.to_thread(broker.start)
            await asyncio.to_thread(host.wait_subscribed, 10.0)
            await asyncio.to_thread(watcher.wait_subscribed, 10.0)
            await gate.start()
            await proxy.set("pass")
            t_back = time.monotonic()
            await wait_for(lambda: all(host.of("NBIRTH", edge_node=n, since=mark) for n in names), 30,
                           interval=0.2, what="every node born again after the broker restart")
            await wait_for(lambda: all(b.pending() == 0 for b in boxes), 60, interval=0.2,
                           what="every line's cloud and Sparkplug backlog acked")
            recovered_s = time.monotonic() - t_back

            # 3. fleet-wide rollout of m2: `linesentry model push` + `promote --wait` (issue 17), or
            # where that command is missing, the same desired model_version published here
            t_roll = time.time()
            if importlib.util.find_spec("controller.cli_models") is not None:
                pushed = await asyncio.to_thread(cli, "model", "push", str(m2), "--registry", str(registry))
                assert pushed.stdout.split()[-1] == new_id, pushed.stdout
                t_roll = time.time()
                targets = [a for n in names for a in ("--line", f"{fleet.SITE}/{n}")]
                promoted = await asyncio.to_thread(
                    cli, "model", "promote", new_id[:16], *targets, "--broker",
                    f"{broker.host}:{broker.port}", "--wait", "60", "--registry", str(registry))
                print(promoted.stdout[-2000:])
            else:
                from controller import registry as model_registry

                await asyncio.to_thread(model_registry.push, registry, m2)
                version = int(t_roll * 1000)
                for n in names:
                    watcher.desire(n, "model_version", new_id, version)
            await wait_for(lambda: all(watcher.model_id(n) == new_id for n in names), 60, interval=0.1,
                           what="every line's reported shadow showing the new model")
            rollout_s = max(watcher.arrived[n] for n in names) - t_roll
            assert all(x.status()["detector"]["model_id"] == new_id for x in lines)
            for cfg in configs:  # fetched by the edge from the registry, nothing else left there
                assert sorted(p.name for p in (cfg.parent / "state/models").iterdir()) == \
                    sorted(["m1.npz", f"{new_id}.npz"]), cfg

            # node's own count against the host, while connected (read between two host counts)
            for x in lines:
                before = live_count(host, x.name)
                published = x.status()["mqtt"]["sparkplug"]["published"]
                assert before <= published, (x.name, before, published)
                await wait_for(lambda x=x, p=published: live_count(host, x.name) >= p, 10,
                               what=f"{x.name}: the host seeing every message the node counted published")
            replay = {n: [r for r in host.of("NDATA", "DDATA", "DDEATH", since=mark, edge_node=n)
                          if r.historical] for n in names}
            committed_sp = [b.sparkplug_messages() for b in boxes]
            window_s = time.monotonic() - t0
            cpu = (sum(x.cpu_ticks() for x in lines) - ticks0) / fleet.TICK
            rss = [x.rss_kib() for x in lines]
        finally:
            fleet.stop_all(lines)
            watcher.close()
            await gate.stop()
            for p in plcs:
                await p.stop()
        left = 0
        for cfg in configs:
            left += await drain_leftovers(cfg.parent / "state/outbox", load_config(cfg).sync)
        violations = host.violations
        every = host.messages
    assert violations == []

    # 4. per line: the cloud exactly once, Sparkplug replayed once
    got = await asyncio.to_thread(exported_samples, victoria)
    for i, name in enumerate(names):
        committed = boxes[i].cloud_lines()
        want = expected_samples(committed)
        mine = {k: v for k, v in got.items() if dict(k[1]).get("line") == name}
        assert_exactly_once(want, mine)
        ends = line_ends(committed)
        assert len(ends) >= at_cut[i] + 4
        assert all(b - a == WINDOW_MS for a, b in zip(ends, ends[1:], strict=False)), f"{name}: a window gap"
        assert [as_message(r) for r in replay[name]] == committed_sp[i], f"{name}: replay != stored"
        assert len(committed_sp[i]) >= stored[i] >= 5
        keys = [(r.timestamp, m.alias, m.name) for r in every if r.edge_node == name
                and r.kind in ("NDATA", "DDATA") for m in r.metrics]
        assert len(keys) == len(set(keys)), f"{name}: a (timestamp, metric) received twice"

    print(f"\nfleet of {N}: ready in {ready_s:.1f} s (parallel start); outage stored "
          f"{sum(stored)} Sparkplug messages and >= 4 windows per line; backlogs acked "
          f"{recovered_s:.1f} s after restore; rollout to {N} lines "
          f"{rollout_s:.2f} s (first publish -> last reported); {left} rows of the shutdown drained")
    print(f"cost: {cpu / window_s / N:.3f} CPU-s/s per line over {window_s:.0f} s (incl. outage+rollout), "
          f"RSS per line {sum(rss) / N / 1024:.0f} MiB (min {min(rss) / 1024:.0f}, max {max(rss) / 1024:.0f})"
          f"; test {time.monotonic() - t_test:.0f} s")


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real `linesentry` command line; a non-zero exit fails with its output."""
    launch = [sys.executable, "-c", "from controller.cli import app; app(prog_name='linesentry')"]
    done = subprocess.run([*launch, *args], cwd=fleet.ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (f"linesentry {' '.join(args)}: exit {done.returncode}\n"
                                  f"{done.stdout}{done.stderr}")
    return done


def _model_id(path) -> str:
    """The model's id: its artifact checksum (the contract of issue 17)."""
    from models.artifact import read

    return read(path, ())[1]["checksum"]
