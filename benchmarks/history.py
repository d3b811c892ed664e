"""What the history recorder costs (a measurement, printed).

    .venv/bin/python -m benchmarks.history [--seconds 30] [--rows 200000] [--dir DIR]

1. The hot path: `HistoryRecorder.append` alone (median of many calls), and a whole
   `Controller.handle_batch` on the demo line with the recorder on and off (median and p99 of
   10 000 synthetic batches each, the same batches both times): what the recorder adds per frame.
2. The writer thread: format + compress + write of --rows frames of the demo line's 8 tags
   (rows/s and MB/s of gzip written), and reading them back with controller.history_read.
3. Disk per day at the demo line's real rate: the simulated plant (OPC UA 10 ms, Modbus 50 ms:
   real servers on 127.0.0.1) and a real controller for --seconds; rows/s and gzip bytes/row
   measured on what it recorded, scaled to a day and to [history] keep_days / max_mb.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.config import load_config
from controller.history_read import read_history
from controller.runtime import Controller
from drivers.base import Quality, ReadingBatch
from hil_tests.rig.service_process import closed_ports_config

REPEATS = 10_000


def synthetic_controller(tmp: Path, enabled: bool) -> Controller:
    path = closed_ports_config(tmp)
    path.write_text(path.read_text() + f"\n[history]\nenabled = {'true' if enabled else 'false'}\n")
    c = Controller(load_config(path), api_port=0)
    c.pipeline.detector = c.models.initial()
    c.pipeline.detector.warm_up()
    return c


def batches(c: Controller, n: int) -> list[tuple]:
    plc = next(p for p in c.plcs if p.name == "conveyor")
    names = [t.name for t in plc.config.driver.tags]
    idx = np.array([names.index(t) for t in ("motor_current", "motor_speed", "vibration_rms",
                                             "bearing_temp")], dtype=np.int32)
    rng = np.random.default_rng(0)
    base = np.array([12.0, 1450.0, 2.0, 45.0])
    out = []
    for _ in range(n):
        now = time.time()
        out.append((plc, ReadingBatch(index=idx, values=base + rng.standard_normal(4) * 0.1,
                                      quality=np.full(4, int(Quality.GOOD), dtype=np.uint8),
                                      source_ts=np.full(4, now), receive_ts=np.full(4, now))))
    return out


def hot_path(tmp: Path) -> None:
    on = synthetic_controller(tmp / "on", True)
    samples = []
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(REPEATS):
            on.history.append(1.0)
        samples.append((time.perf_counter() - t0) / REPEATS)
        on.history.take()
    print(f"append alone: {statistics.median(samples) * 1e6:.2f} µs per frame (median of 20 x {REPEATS})")
    off = synthetic_controller(tmp / "off", False)
    work = batches(on, REPEATS)
    for name, c in (("on", on), ("off", off), ("on", on), ("off", off)):
        times = []
        for plc, batch in work:
            t0 = time.perf_counter()
            c.handle_batch(plc, batch)
            times.append(time.perf_counter() - t0)
        c.history.take()
        times.sort()
        print(f"handle_batch, history {name:>3}: p50 {times[len(times) // 2] * 1e6:6.1f} µs, "
              f"p99 {times[int(len(times) * 0.99)] * 1e6:6.1f} µs")


def writer(tmp: Path, rows: int) -> float:
    c = synthetic_controller(tmp / "writer", True)
    t = time.time()
    rng = np.random.default_rng(1)
    m = len(c.detector_tags)
    base = 50.0 + np.arange(m)
    for k in range(rows):
        c.line.frame_values[:] = base + rng.standard_normal(m)
        c.line.frame_good[:] = 1
        c.history.append(t + k * 0.01)
    taken = c.history.take()
    t0 = time.perf_counter()
    c.history.write(taken)
    dt = write_s = time.perf_counter() - t0
    s = c.history.stats
    print(f"write {rows} rows (format + gzip + write, one thread): {dt:.2f} s = {rows / dt:,.0f} rows/s, "
          f"{s.bytes_written / dt / 1e6:.1f} MB/s written, {s.bytes_written / rows:.1f} bytes/row "
          f"(random normal values: the worst case)")
    t0 = time.perf_counter()
    h = read_history(c.history.directory, c.detector_tags, since=0)
    dt = time.perf_counter() - t0
    print(f"read back {len(h.times)} rows: {dt:.2f} s = {len(h.times) / dt:,.0f} rows/s")
    return rows / write_s


def share(rows_per_s: float, write_rows_per_s: float) -> str:
    return f"the writer thread at that rate: {rows_per_s / write_rows_per_s:.2%} of one core"


async def plant(tmp: Path, seconds: float) -> float:
    from hil_tests.rig.controller_run import without_model
    from hil_tests.rig.demo_config import demo_text
    from hil_tests.rig.net import free_port, wait_for
    from hil_tests.rig.servers import Rig

    async with Rig(opcua_port=0, modbus_port=0) as rig:
        text = demo_text(tmp / "plant", tmp / "none.npz", opcua_endpoint=rig.opcua_endpoint,
                         modbus_port=rig.modbus_port, api_port=free_port())
        path = tmp / "plant.toml"
        path.write_text(without_model(text) + "\n[history]\nflush_s = 10.0\n")
        c = Controller(load_config(path), api_port=0)
        run = asyncio.create_task(c.run())
        await wait_for(lambda: c.history.stats.rows_written > 0 or run.done(), timeout=60,
                       what="the first flush")
        r0, b0, t0 = c.history.stats.rows_written, c.history.stats.bytes_written, time.monotonic()
        await asyncio.sleep(seconds)  # a measurement window, not a synchronisation
        await c.history.flush()
        rows, nbytes = c.history.stats.rows_written - r0, c.history.stats.bytes_written - b0
        dt = time.monotonic() - t0
        c.stop()
        await run
    per_day = nbytes / dt * 86_400
    cfg = load_config(path).history
    print(f"demo line on the simulated plant: {rows / dt:.0f} rows/s, {nbytes / rows:.1f} gzip bytes/row "
          f"-> {per_day / 1e6:,.0f} MB/day; keep_days {cfg.keep_days:g} would be "
          f"{per_day * cfg.keep_days / 1e9:.1f} GB, max_mb {cfg.max_mb:g} holds "
          f"{cfg.max_mb * 1e6 / per_day:.1f} days")
    return rows / dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the demo line records")
    parser.add_argument("--rows", type=int, default=200_000, help="rows for the writer figure")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a tmp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for sub in ("on", "off", "writer"):
            (Path(tmp) / sub).mkdir()
        hot_path(Path(tmp))
        speed = writer(Path(tmp), args.rows)
        print(share(asyncio.run(plant(Path(tmp), args.seconds)), speed))


if __name__ == "__main__":
    main()
