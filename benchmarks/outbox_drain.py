"""Outbox and sync figures (a measurement, not a pass/fail test).

    .venv/bin/python -m benchmarks.outbox_drain [--tags 1000] [--windows 200] [--batch 5000]

Starts Debian's victoria-metrics on 127.0.0.1 (a free port, temp storage), then prints:

1. outbox append cost per window of `--tags` tag records (µs; JSON encoding plus one SQLite
   transaction, WAL, synchronous=FULL, i.e. including the fsync), the cost of building those
   records, and of rendering them as line protocol with `Point` (what the InfluxDB sink does at
   send time), each as the median over the windows;
2. outbox bytes per record: stored JSON payload, and the SQLite file (db + WAL) after the fill;
3. drain rate against the local server (records/s: one record is one InfluxDB point), one request
   in flight, `--batch` records each;
4. the time to drain a 24 h outage backlog at `--tags` tags and 10 s windows at that rate.

Figures depend on the disk (fsync) and the machine, and the local server is far faster than a
WAN link to InfluxDB Cloud: read the drain rate as the controller-side ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.outbox import Outbox
from controller.points import Identity, TagInfo, window_points
from controller.records import Record
from controller.sinks.influxdb import line_protocol
from controller.summaries import WindowSummarizer
from controller.sync import SyncConfig, SyncWorker
from hil_tests.rig.victoria import VictoriaMetrics

WINDOW_S = 10


def windows(n_tags: int, count: int, base_s: int) -> list[list[Record]]:
    """`count` closed windows of realistic records (every statistic set) and the time to build each."""
    rng = np.random.default_rng(1)
    s = WindowSummarizer(n_tags, WINDOW_S)
    ident = Identity("site-1", "line-1", "ctl-1")
    infos = [TagInfo(f"tag_{j:04d}", "bar") for j in range(n_tags)]
    fresh, good = np.ones(n_tags, np.uint8), np.zeros(n_tags, np.uint8)
    out, build_us = [], []
    for i in range(count):
        for k in range(4):
            t = base_s + i * WINDOW_S + k * 2.5
            w = s.update(t, rng.normal(50, 5, n_tags), fresh, good, 0.3, False, rng.random(n_tags))
            if w is not None:
                t0 = time.perf_counter_ns()
                out.append(window_points(w, ident, infos))
                build_us.append((time.perf_counter_ns() - t0) / 1e3)
    windows.build_us = build_us  # type: ignore[attr-defined]
    return out


async def drain(ob: Outbox, url: str, batch: int) -> tuple[int, float]:
    os.environ.setdefault("LINESENTRY_BENCH_TOKEN", "bench")
    cfg = SyncConfig(url=url, org="o", bucket="b", token_env="LINESENTRY_BENCH_TOKEN", batch_size=batch)
    points = ob.backlog()[1]
    worker = SyncWorker(cfg, ob)  # imports the client library: start-up, not drain time
    t0 = time.perf_counter()
    async with worker as w:
        w.wake()
        while ob.backlog()[0]:
            await asyncio.sleep(0.005)
    return points, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vm = VictoriaMetrics(Path(tmp) / "vm").start()
        try:
            box = Path(tmp) / "outbox"
            box.mkdir()
            base_s = (int(time.time()) // WINDOW_S - args.windows - 2) * WINDOW_S
            data = windows(args.tags, args.windows, base_s)
            render_us = []
            for records in data[:20]:
                t0 = time.perf_counter_ns()
                line_protocol(records)
                render_us.append((time.perf_counter_ns() - t0) / 1e3)
            with Outbox(box, max_bytes=1 << 40) as ob:
                append_us = []
                for records in data:
                    t0 = time.perf_counter_ns()
                    assert ob.append(records).ok
                    append_us.append((time.perf_counter_ns() - t0) / 1e3)
                rows, points, payload = ob.backlog()
                file_bytes = ob.file_bytes()
                sent, seconds = asyncio.run(drain(ob, vm.url, args.batch))
        finally:
            vm.stop()
    rate = sent / seconds
    per_window = args.tags + 1  # tag points + the line point
    backlog_points = per_window * (24 * 3600 // WINDOW_S)
    print(f"victoria-metrics: {vm.url}, {args.windows} windows x {args.tags} tags ({points} records)")
    print(f"outbox append per window ({args.tags} tags, JSON + 1 txn, fsync): "
          f"median {statistics.median(append_us):.0f} us, max {max(append_us):.0f} us")
    build_us = windows.build_us  # type: ignore[attr-defined]
    print(f"building the window's records:            median {statistics.median(build_us):.0f} us")
    print(f"rendering them as line protocol (Point):  median {statistics.median(render_us):.0f} us")
    print(f"outbox bytes per record: {payload / points:.1f} payload, "
          f"{file_bytes / points:.1f} on disk (db+wal)")
    print(f"drain rate to local server (batch {args.batch}): {rate:,.0f} records/s "
          f"({sent} records in {seconds:.2f} s)")
    print(f"24 h outage backlog at {args.tags} tags / {WINDOW_S} s windows: {backlog_points:,} records, "
          f"{backlog_points * payload / points / 1e6:,.0f} MB payload, "
          f"{backlog_points * file_bytes / points / 1e6:,.0f} MB on disk, "
          f"drains in {backlog_points / rate:,.0f} s ({backlog_points / rate / 60:.1f} min) at this rate")


if __name__ == "__main__":
    main()
