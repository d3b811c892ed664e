"""Load and reconnect figures for the Modbus TCP driver (a measurement, not a pass/fail test).

    .venv/bin/python -m benchmarks.modbus_load [--devices 10] [--tags 100] [--seconds 20] [--outage 30]
                                               [--freeze 10]

A subprocess runs the pymodbus servers (so their CPU is not billed to the driver process);
this process runs one ModbusDriver per server under its own DriverSupervisor (default Backoff
and SessionRateLimiter) polling every 100 ms. Phase 1 polls everything for --seconds; phase 2
stops one server for --outage seconds, then restarts it on the same port; phase 3 (--freeze)
SIGSTOPs the whole server process (every device goes silent with its TCP connection open), then
SIGCONTs it.
Printed: cycle rate per device, read latency p50/p99, missed ticks, driver-process CPU seconds
per wall second, server stopped -> loss reported, time from server restart to first good value,
sessions created per minute while the server was down; frozen -> loss reported per device (half-open
detection: max_consecutive_timeouts x timeout_s) and thawed -> first good value.
"""

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from drivers.base import ConnectionState, Quality, ReadingBatch
from drivers.modbus import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver
from drivers.supervisor import DriverSupervisor

POLL_S = 0.1


def layout(n_tags: int) -> list[dict]:
    """Half float32 (2 registers each), half int16, adjacent holding registers from 0."""
    n_float = n_tags // 2
    tags = [{"name": f"f{i}", "table": "holding_register", "address": 2 * i, "dtype": "float32"}
            for i in range(n_float)]
    tags += [{"name": f"i{i}", "table": "holding_register", "address": 2 * n_float + i, "dtype": "int16",
              "scale": 0.1} for i in range(n_tags - n_float)]
    return tags


# ---------------------------------------------------------------- server subprocess

async def serve(ports: list[int], n_tags: int) -> None:
    """Run one pymodbus server per port; obey 'stop i' / 'start i' lines on stdin."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    n_float = n_tags // 2

    def make() -> SimDevice:
        return SimDevice(id=1, simdata=[
            SimData(0, values=[float(i) + 0.5 for i in range(n_float)], datatype=DataType.FLOAT32),
            SimData(2 * n_float, values=list(range(n_tags - n_float)), datatype=DataType.INT16)])

    async def start(i: int) -> ModbusTcpServer:
        s = ModbusTcpServer(make(), address=("127.0.0.1", ports[i]))
        await s.serve_forever(background=True)
        return s

    servers = {i: await start(i) for i in range(len(ports))}
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd, i = line.split()
        if cmd == "stop":
            await servers.pop(int(i)).shutdown()
        else:
            servers[int(i)] = await start(int(i))
        print("ok", flush=True)


# ---------------------------------------------------------------- driver side

def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Device:
    """One supervised driver and what it delivered."""

    def __init__(self, i: int, port: int, n_tags: int) -> None:
        cfg = ModbusDeviceConfig(name=f"plc{i}", host="127.0.0.1", port=port, timeout_s=1.0,
                                 poll_interval_s=POLL_S, tags=layout(n_tags))
        self.driver = ModbusDriver(cfg)
        self.good = 0
        self.last_good_at = 0.0
        self.lost_at = 0.0  # monotonic time of the latest loss the supervisor reported (-> COMM_LOST)
        self.supervisor = DriverSupervisor(self.driver, self.on_batch, on_state=self.on_state)

    def on_batch(self, b: ReadingBatch) -> None:
        if len(b) and (b.quality == Quality.GOOD).all():
            self.good += 1
            self.last_good_at = time.monotonic()

    def on_state(self, state: ConnectionState, _detail: str) -> None:
        if state is ConnectionState.BACKOFF:
            self.lost_at = time.monotonic()


async def wait_until(predicate, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def send(proc: subprocess.Popen, line: str) -> None:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    reply = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    if reply.strip() != "ok":
        raise RuntimeError(f"server subprocess answered {reply!r} to {line!r}")


async def measure(args: argparse.Namespace) -> None:
    ports = free_ports(args.devices)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.modbus_load", "--serve",
                             ",".join(map(str, ports)), "--tags", str(args.tags)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("server subprocess did not start")
        devices = [Device(i, p, args.tags) for i, p in enumerate(ports)]
        for d in devices:
            d.supervisor.start()
        # warm-up: every device connected and delivering
        deadline = time.monotonic() + 10
        while any(d.good == 0 for d in devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        base_good = [d.good for d in devices]
        base_missed = [d.driver.missed_ticks for d in devices]
        for d in devices:
            d.driver.stats.read_latency_s.clear()
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(args.seconds)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        lat = np.concatenate([np.array(d.driver.stats.read_latency_s[-1024:]) for d in devices]) * 1e3
        print(f"phase 1: {args.devices} devices x {args.tags} tags (half float32, half int16), "
              f"{POLL_S * 1e3:.0f} ms cycle, {wall:.1f} s")
        print(f"  requests per poll per device: {len(devices[0].driver.read_plan)}")
        for i, d in enumerate(devices):
            print(f"  plc{i}: {(d.good - base_good[i]) / wall:6.2f} good cycles/s  "
                  f"missed ticks {d.driver.missed_ticks - base_missed[i]}  "
                  f"read errors {d.driver.stats.read_errors}")
        print(f"  read latency (per request, all devices, last <=1024 each): "
              f"p50 {np.percentile(lat, 50):.2f} ms  p99 {np.percentile(lat, 99):.2f} ms  "
              f"max {lat.max():.2f} ms  (n={lat.size})")
        print(f"  driver process CPU: {cpu / wall:.3f} CPU-s per wall-s")

        # phase 2: one server down for --outage seconds, then restarted on the same port
        victim = devices[0]
        await send(proc, "stop 0")
        t_down = time.monotonic()
        await wait_until(lambda: victim.lost_at >= t_down, 10)
        detected = victim.lost_at - t_down if victim.lost_at >= t_down else float("nan")
        sessions0 = victim.driver.stats.sessions_created
        others0 = [d.good for d in devices[1:]]
        await asyncio.sleep(args.outage)
        sessions = victim.driver.stats.sessions_created - sessions0
        down_s = time.monotonic() - t_down
        others_rate = [(d.good - g) / down_s for d, g in zip(devices[1:], others0, strict=True)]
        good_before, attempt = victim.good, victim.supervisor.backoff.attempt
        await send(proc, "start 0")
        t_up = time.monotonic()
        while victim.good == good_before and time.monotonic() - t_up < 120:
            await asyncio.sleep(0.01)
        recovered = victim.last_good_at - t_up if victim.good > good_before else float("nan")
        print(f"phase 2: plc0's server down for {down_s:.1f} s (default Backoff, SessionRateLimiter)")
        print(f"  server stopped -> loss reported: {detected * 1e3:.0f} ms")
        print(f"  sessions created while down: {sessions} = {sessions * 60 / down_s:.1f} per minute")
        if others_rate:
            print(f"  other devices meanwhile: min {min(others_rate):.2f}, "
                  f"max {max(others_rate):.2f} good cycles/s")
        print(f"  server restart -> first good value: {recovered:.2f} s "
              f"(after backoff attempt {attempt}; bound: cap {victim.supervisor.backoff.cap:g} s "
              f"+ one attempt + one poll)")
        if args.freeze:
            await freeze(proc, devices, args.freeze)
        for d in devices:
            await d.supervisor.stop()
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=10)


async def freeze(proc: subprocess.Popen, devices: list[Device], seconds: float) -> None:
    """Every server silent with its connection open (SIGSTOP), then back (SIGCONT)."""
    await wait_until(lambda: all(time.monotonic() - d.last_good_at < 1.0 for d in devices), 30)
    os.kill(proc.pid, signal.SIGSTOP)
    t_freeze = time.monotonic()
    await asyncio.sleep(seconds)
    lost = [d.lost_at - t_freeze if d.lost_at >= t_freeze else float("nan") for d in devices]
    good_before = [d.good for d in devices]
    os.kill(proc.pid, signal.SIGCONT)
    t_thaw = time.monotonic()
    await wait_until(lambda: all(d.good > g for d, g in zip(devices, good_before, strict=True)), 60)
    back = [d.last_good_at - t_thaw if d.good > g else float("nan")
            for d, g in zip(devices, good_before, strict=True)]
    cfg = devices[0].driver.config
    print(f"phase 3: all servers frozen (SIGSTOP) for {seconds:g} s, timeout_s {cfg.timeout_s:g}, "
          f"max_consecutive_timeouts {cfg.max_consecutive_timeouts}")
    print(f"  frozen -> loss reported: min {np.nanmin(lost):.2f} s, max {np.nanmax(lost):.2f} s "
          f"(devices detected: {int(np.isfinite(lost).sum())} of {len(devices)})")
    print(f"  thawed -> first good value: min {np.nanmin(back):.2f} s, max {np.nanmax(back):.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--tags", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--outage", type=float, default=30.0)
    p.add_argument("--freeze", type=float, default=0.0, help="phase 3: freeze the servers this long")
    p.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run the servers on these ports
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.serve:
        asyncio.run(serve([int(x) for x in args.serve.split(",")], args.tags))
    else:
        asyncio.run(measure(args))


if __name__ == "__main__":
    main()
