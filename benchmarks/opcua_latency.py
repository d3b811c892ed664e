"""OPC UA notification latency and reconnect figures (a measurement, not a pass/fail test).

    .venv/bin/python -m benchmarks.opcua_latency [--vars 50] [--changes 1000] [--down-s 20] [--freezes 5]
    .venv/bin/python -m benchmarks.opcua_latency --server node-opcua   # frozen + restart phases only

An asyncua server runs in a SUBPROCESS (its CPU separate from the client's) with `--vars`
Double variables. The client (OpcUaDriver, one subscription group, 10 ms sampling and
publishing intervals) subscribes to all of them; the server then changes one variable
every `--gap-ms`, writing time.time() as the value (and as SourceTimestamp), so the
callback's receive time minus the value is the change -> callback latency on one clock.

Then a frozen server, `--freezes` times: the server process is stopped with SIGSTOP (its
sockets stay open, nothing answers) and the time until the supervisor reports the loss (and its reason) are
printed; after SIGCONT, the time to the first GOOD value.

Then the reconnect path under a DriverSupervisor with the DEFAULT Backoff and
SessionRateLimiter: the server process is killed, kept down for `--down-s` seconds
(connect attempts counted), restarted on the same port, and the time from the restarted
server listening to the first GOOD value is printed. Figures depend on this machine.
"""

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version

import numpy as np

NS = "urn:linesentry:bench"


# ----------------------------------------------------------------------------- server side
async def serve(port: int, nvars: int, changes: int, gap_ms: float) -> None:
    """Subprocess entry: serve `nvars` doubles; on "go" from stdin, make `changes` timestamped changes."""
    import logging

    from asyncua import Server, ua

    logging.disable(logging.WARNING)
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    ns = await server.register_namespace(NS)
    obj = await server.nodes.objects.add_object(ua.NodeId("Bench", ns), ua.QualifiedName("Bench", ns))
    ids = []
    for i in range(nvars):
        node = await obj.add_variable(ua.NodeId(f"V{i}", ns), ua.QualifiedName(f"V{i}", ns),
                                      ua.Variant(0.0, ua.VariantType.Double))
        ids.append(node.nodeid)
    await server.start()
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                return
            for k in range(changes):
                now = time.time()
                stamp = datetime.fromtimestamp(now, UTC)
                await server.write_attribute_value(ids[k % nvars], ua.DataValue(
                    ua.Variant(now, ua.VariantType.Double), SourceTimestamp=stamp, ServerTimestamp=stamp))
                await asyncio.sleep(gap_ms / 1000)
            print("DONE", flush=True)
    finally:
        await server.stop()


# ----------------------------------------------------------------------------- client side
class ServerProcess:
    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.cmd = [sys.executable, "-m", "benchmarks.opcua_latency", "--serve", str(port), "--vars",
                    str(args.vars), "--changes", str(args.changes), "--gap-ms", str(args.gap_ms)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Start and wait until it listens; returns time.monotonic() at READY."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd())
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if line.strip() != b"READY":
            raise RuntimeError(f"server subprocess did not start: {line!r}")
        return time.monotonic()

    async def command(self, text: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def wait_line(self, expected: bytes, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if line.strip() != expected:
            raise RuntimeError(f"server said {line!r}, expected {expected!r}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class NodeServerProcess:
    """The node-opcua test server (hil_tests/rig/node_opcua) behind ServerProcess's interface.

    It has no timestamped change generator: with it, only the frozen and restart phases run.
    """

    def __init__(self, port: int) -> None:
        from hil_tests.rig.node_opcua_server import NodeOpcuaServer

        self.handle = NodeOpcuaServer(port)

    async def start(self) -> float:
        await self.handle.start()
        return time.monotonic()

    def signal(self, sig: int) -> None:
        os.kill(self.handle.proc.pid, sig)

    async def command(self, text: str) -> None:
        pass

    async def kill(self) -> None:
        await self.handle.stop()


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) * 1000


async def run(args: argparse.Namespace) -> None:
    from drivers.base import ConnectionState, Quality, ReadingBatch
    from drivers.opcua import OpcUaConfig
    from drivers.opcua.driver import OpcUaDriver
    from drivers.supervisor import Backoff, DriverSupervisor, SessionRateLimiter
    from hil_tests.rig.net import free_port

    port = free_port()
    node = args.server == "node-opcua"
    server = NodeServerProcess(port) if node else ServerProcess(port, args)
    await server.start()
    if node:
        endpoint, tags = f"opc.tcp://127.0.0.1:{port}/linesentry/", [
            {"name": f"n{i}", "node": f"nsu=urn:linesentry:test;s=Line1.N{i}"} for i in range(12)]
    else:
        endpoint, tags = f"opc.tcp://127.0.0.1:{port}/bench/", [
            {"name": f"v{i}", "node": f"nsu={NS};s=V{i}"} for i in range(args.vars)]
    cfg = OpcUaConfig(
        name="bench", endpoint=endpoint, timeout_s=args.timeout_s,
        groups=[{"name": "default", "sampling_interval_ms": 10, "publishing_interval_ms": 10,
                 "queue_size": 10}], tags=tags)
    driver = OpcUaDriver(cfg)
    latencies: list[float] = []
    src_latencies: list[float] = []
    batch_sizes: list[int] = []
    events: dict[str, float] = {}
    measuring = False

    def on_state(state: ConnectionState, _detail: str) -> None:
        if state is ConnectionState.BACKOFF:  # the loss, as the controller's PLC health sees it
            events.setdefault("comm_lost", time.monotonic())

    def on_batch(b: ReadingBatch) -> None:
        now = time.time()
        good = b.quality == Quality.GOOD
        if "restarted" in events and "first_good" not in events and good.any():
            events["first_good"] = time.monotonic()
        if measuring:
            vals = b.values[good & (b.values > 1e9)]  # initial 0.0 values are not changes
            latencies.extend(now - vals)
            src_latencies.extend(now - b.source_ts[good & (b.values > 1e9)])
            if len(vals):
                batch_sizes.append(len(vals))

    async def measure_latency() -> None:
        nonlocal measuring
        measuring = True
        await server.command("go")
        await server.wait_line(b"DONE", timeout=args.changes * (args.gap_ms / 1000 + 0.05) + 30)
        await asyncio.sleep(0.5)  # the last publish responses
        measuring = False
        lat, src = np.asarray(latencies), np.asarray(src_latencies)
        print(f"OPC UA subscription latency: asyncua {version('asyncua')} server in a subprocess, "
              f"{args.vars} variables, sampling 10 ms, publishing 10 ms, one change every {args.gap_ms:g} ms")
        print(f"  changes made {args.changes}, notifications received {len(lat)}, "
              f"batches {len(batch_sizes)} "
              f"(mean {np.mean(batch_sizes) if batch_sizes else 0:.2f} values/batch)")
        if len(lat):
            print(f"  server value change -> callback (value-carried time): p50 {pct(lat, 50):.2f} ms, "
                  f"p99 {pct(lat, 99):.2f} ms, max {lat.max() * 1000:.2f} ms")
            print(f"  SourceTimestamp -> callback:                         p50 {pct(src, 50):.2f} ms, "
                  f"p99 {pct(src, 99):.2f} ms, max {src.max() * 1000:.2f} ms")

    backoff, limiter = Backoff(), SessionRateLimiter()
    sup = DriverSupervisor(driver, on_batch, backoff=backoff, limiter=limiter, on_state=on_state)
    sup.start()
    try:
        t0 = time.monotonic()
        while driver.stats.batches == 0:
            if time.monotonic() - t0 > 10:
                raise RuntimeError(f"no data from the server: {sup.last_error}")
            await asyncio.sleep(0.01)
        if node:
            print(f"node-opcua server ({len(tags)} variables): frozen and restart phases only")
        else:
            await measure_latency()

        # --------------------------------------------------------------- frozen server
        lost_s, reasons, back_s = [], [], []
        for _ in range(args.freezes):
            for key in ("comm_lost", "restarted", "first_good"):
                events.pop(key, None)
            await asyncio.sleep(args.settle_s)  # past the supervisor's stable_after: backoff reset
            frozen = time.monotonic()
            server.signal(signal.SIGSTOP)
            while "comm_lost" not in events and time.monotonic() - frozen < 60:
                await asyncio.sleep(0.005)
            lost_s.append(events.get("comm_lost", math.nan) - frozen)
            reasons.append(sup.last_error)
            server.signal(signal.SIGCONT)
            events["restarted"] = time.monotonic()
            while "first_good" not in events and time.monotonic() - events["restarted"] < 60:
                await asyncio.sleep(0.005)
            back_s.append(events.get("first_good", math.nan) - events["restarted"])
        if lost_s:
            lost, back = np.asarray(lost_s), np.asarray(back_s)
            print(f"Frozen server (SIGSTOP), {len(lost)} times, timeout_s {args.timeout_s:g}, "
                  f"alive_interval_s {driver.alive_interval_s:g}")
            print(f"  frozen -> loss reported: min {lost.min():.3f} s, median {np.median(lost):.3f} s, "
                  f"max {lost.max():.3f} s")
            print(f"  reason: {reasons[-1]}")
            print(f"  SIGCONT -> first good value: min {back.min():.3f} s, median {np.median(back):.3f} s, "
                  f"max {back.max():.3f} s (includes the backoff delay)")
            for key in ("comm_lost", "restarted", "first_good"):
                events.pop(key, None)

        # --------------------------------------------------------------- reconnect
        attempts0, sessions0 = driver.connect_attempts, driver.stats.sessions_created
        killed = time.monotonic()
        await server.kill()
        await asyncio.sleep(args.down_s)
        attempts = driver.connect_attempts - attempts0
        sessions = driver.stats.sessions_created - sessions0
        lost_after = events.get("comm_lost", math.nan) - killed
        events["restarted"] = await server.start()
        deadline = time.monotonic() + 120
        while "first_good" not in events and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        to_good = events.get("first_good", math.nan) - events["restarted"]
        print(f"Reconnect: default Backoff(initial {backoff.initial:g} s, x{backoff.factor:g}, "
              f"cap {backoff.cap:g} s, jitter {backoff.jitter:g}), "
              f"SessionRateLimiter({limiter.per_minute}/min), timeout_s {args.timeout_s:g}")
        print(f"  server killed -> loss reported: {lost_after:.3f} s")
        print(f"  server down {args.down_s:g} s: {attempts} connect attempts "
              f"({attempts * 60 / args.down_s:.1f}/min), {sessions} sessions created "
              f"({sessions * 60 / args.down_s:.1f}/min)")
        print(f"  server restarted (listening) -> first good value: {to_good:.3f} s "
              f"(includes the backoff delay pending at restart)")
        print(f"  sessions created in total: {driver.stats.sessions_created}, "
              f"connect attempts in total: {driver.connect_attempts}")
    finally:
        await sup.stop()
        with contextlib.suppress(Exception):
            await server.command("quit")
        await server.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vars", type=int, default=50)
    p.add_argument("--changes", type=int, default=1000)
    p.add_argument("--gap-ms", type=float, default=5.0, help="pause between two server-side changes")
    p.add_argument("--down-s", type=float, default=20.0, help="how long the server stays down")
    p.add_argument("--timeout-s", type=float, default=2.0, help="driver request timeout")
    p.add_argument("--freezes", type=int, default=5, help="how many times to SIGSTOP the server")
    p.add_argument("--settle-s", type=float, default=11.0,
                   help="session age before each freeze (> the supervisor's 10 s stable_after)")
    p.add_argument("--server", choices=("asyncua", "node-opcua"), default="asyncua",
                   help="server implementation (node-opcua: frozen and restart phases only)")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # subprocess mode
    args = p.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.vars, args.changes, args.gap_ms))
    else:
        import logging

        logging.basicConfig(level=logging.ERROR)
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # its publish loop logs the planned kill
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
