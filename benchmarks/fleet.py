"""Cost per line of a fleet on one machine, and how it grows with N.

    python -m benchmarks.fleet [--sizes 1,2,4,8,12,16,24,32] [--window 20] [--poll 0.5]

For each N: one mosquitto, one VictoriaMetrics, N light simulated lines (hil_tests/rig/fleet.py:
one Modbus PLC of 3 values polled every --poll s, a small model, Sparkplug + shadow + cloud sync
with the product's 10 s summary windows), each its own `linesentry run` process, started in
parallel. After a 10 s settle, over --window s: CPU of every process from /proc/<pid>/stat
(utime + stime), RSS from /proc/<pid>/status, and whether every line kept up: its PLC reads over
the window, normalised by N=1's reads per poll period (they include the watchdog's); a line
below 90 % missed poll deadlines. Every /readyz must still be 200 at the end. Stops at the first
N where a line did not keep up or did not become ready within 120 s. The PLC simulators run in
this process (their cost is printed as "sims").
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from hil_tests.rig import fleet
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.victoria import VictoriaMetrics

SETTLE_S = 10.0
READY_TIMEOUT_S = 120.0


async def one_size(n: int, root: Path, model: Path, window_s: float, poll_s: float) -> dict:
    import os
    import shutil

    root.mkdir(parents=True)
    plcs = [await fleet.LinePlc(seed=i).start() for i in range(n)]
    lines: list[fleet.FleetLine] = []
    with Mosquitto(root) as broker, VictoriaMetrics(root / "vm") as vm:
        try:
            for i in range(n):
                d = root / fleet.line_name(i + 1)
                (d / "state/models").mkdir(parents=True)
                shutil.copy(model, d / "state/models/m1.npz")
                cfg = fleet.line_config(d, i + 1, plc_port=plcs[i].port, broker_port=broker.port,
                                        sync_url=vm.url, model=d / "state/models/m1.npz", poll_s=poll_s)
                lines.append(fleet.FleetLine(cfg, i + 1, window_s=10.0))
            try:
                ready_s = await asyncio.to_thread(fleet.start_all, lines, READY_TIMEOUT_S)
            except AssertionError as exc:
                return {"n": n, "failed": f"not ready: {str(exc).splitlines()[0]}"}
            await asyncio.sleep(SETTLE_S)
            pids = {"lines": [x.proc.pid for x in lines], "mosquitto": [broker.proc.pid],
                    "vm": [vm.proc.pid], "sims": [os.getpid()]}
            reads0 = [x.status()["plcs"][0]["reads"] for x in lines]
            t0 = time.monotonic()
            ticks0 = {k: [fleet.proc_ticks(p) for p in v] for k, v in pids.items()}
            await asyncio.sleep(window_s)  # the measurement window itself
            ticks1 = {k: [fleet.proc_ticks(p) for p in v] for k, v in pids.items()}
            elapsed = time.monotonic() - t0
            reads1 = [x.status()["plcs"][0]["reads"] for x in lines]
            ready = [await asyncio.to_thread(x.ready) for x in lines]
            cpu = {k: [(b - a) / fleet.TICK / elapsed for a, b in zip(ticks0[k], ticks1[k], strict=True)]
                   for k in pids}
            rss = {k: [fleet.proc_rss_kib(p) / 1024 for p in v] for k, v in pids.items()}
            kept = [(b - a) / (elapsed / poll_s) for a, b in zip(reads0, reads1, strict=True)]
            out = {"n": n, "ready_s": ready_s, "cpu": cpu, "rss": rss, "kept": min(kept),
                   "not_ready": sum(not r for r in ready), "load": os.getloadavg()[0]}
            return out
        finally:
            fleet.stop_all(lines)
            for p in plcs:
                await p.stop()


async def main(sizes: list[int], window_s: float, poll_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        tmp = Path(tmp)
        probe = fleet.line_config(tmp / "probe", 1, plc_port=1, broker_port=1, sync_url="http://127.0.0.1:1",
                                  model=tmp / "m1.npz", poll_s=poll_s)
        model = fleet.fit_model(probe, tmp / "m1.npz", 1)
        print(f"{'N':>3} {'ready s':>8} {'lines CPU':>10} {'per line':>9} {'RSS/line':>9} {'RSS all':>8} "
              f"{'mosq CPU':>9} {'mosq MiB':>9} {'VM CPU':>7} {'VM MiB':>7} {'sims CPU':>9} {'kept':>5} "
              f"{'load1':>6}")
        base = rate = None
        for n in sizes:
            r = await one_size(n, tmp / f"n{n}", model, window_s, poll_s)
            if "cpu" in r:
                rate = rate or r["kept"]  # reads per poll period of a line alone (a poll + watchdog reads)
                r["kept"] /= rate
                if r["not_ready"] or r["kept"] < 0.9:
                    r["failed"] = (f"{r['not_ready']} not ready, slowest line at {r['kept']:.0%} "
                                   f"of N=1's read rate")
                total = sum(r["cpu"]["lines"])
                rss_all = sum(r["rss"]["lines"])
                print(f"{n:>3} {r['ready_s']:>8.1f} {total:>10.3f} {total / n:>9.4f} {rss_all / n:>8.0f}M "
                      f"{rss_all:>7.0f}M {r['cpu']['mosquitto'][0]:>9.4f} {r['rss']['mosquitto'][0]:>9.1f} "
                      f"{r['cpu']['vm'][0]:>7.4f} {r['rss']['vm'][0]:>7.0f} {r['cpu']['sims'][0]:>9.4f} "
                      f"{r['kept']:>5.0%} {r['load']:>6.2f}", flush=True)
                base = base or (n, total / n)
            if "failed" in r:
                print(f"N={n}: stop: {r['failed']}")
                break
        if base:
            print(f"CPU-s/s per line at N={base[0]}: {base[1]:.4f} (growth: compare the per-line column)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,4,8,12,16,24")
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--poll", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main([int(x) for x in args.sizes.split(",")], args.window, args.poll))
