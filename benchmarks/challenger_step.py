"""What a challenger in shadow costs on the hot path (a measurement, printed).

    .venv/bin/python -m benchmarks.challenger_step [--repeats 10000]

The demo line (PLCs on closed ports, synthetic conveyor batches) with a model fitted on one
simulated minute as the active model and a copy of it as the challenger (controller.lifecycle):

1. `Challenger.after` alone (the challenger's detector step + its counters) and the same model's
   `StreamingDetector.step` alone: medians of 20 x --repeats calls; `Watch.observe` alone.
2. A whole `Controller.handle_batch` (the active step, its decisions, then `after_writes`) with no
   challenger and with one: p50 / p99 of --repeats batches, the same batches each time, twice each.
   The challenger runs after the writes are issued, so the part before the actuator write is the same.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.history import batches
from controller.config import load_config
from controller.lifecycle.counters import Challenger, Watch
from controller.runtime import Controller
from hil_tests.rig.demo_config import DEMO_CONFIG
from hil_tests.rig.service_process import closed_ports_config
from hil_tests.rig.training import simulated_normal
from models import StreamingDetector, load_model


def fitted(tmp: Path) -> Path:
    config = load_config(DEMO_CONFIG)
    times, rows = simulated_normal(config.detector_tags(), seconds=60.0)
    path = tmp / "model.npz"
    StreamingDetector(config.detector_tags(), config.detector_spec()).fit(rows, times).save(path)
    return path


def controller(tmp: Path, model: Path) -> Controller:
    tmp.mkdir()
    c = Controller(load_config(closed_ports_config(tmp, model)), api_port=0)
    c.pipeline.detector = c.models.initial()
    c.pipeline.detector.warm_up()
    return c


def median_call(fn, repeats: int) -> float:
    samples = []
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        samples.append((time.perf_counter() - t0) / repeats)
    return statistics.median(samples)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = fitted(tmp)
        c = controller(tmp / "line", model)
        line = c.line
        det = load_model(model, c.detector_tags)
        det.warm_up()
        ch = Challenger(det, line)
        t = [0.0]

        def challenger_row() -> None:
            t[0] += 0.01
            ch.after(t[0], t[0], False)

        def detector_row() -> None:
            t[0] += 0.01
            det.step(t[0], line.frame_values, line.frame_fresh, line.frame_good)

        watch = Watch()
        print(f"Challenger.after alone: {median_call(challenger_row, args.repeats) * 1e6:.2f} µs per row; "
              f"its detector's step alone: {median_call(detector_row, args.repeats) * 1e6:.2f} µs; "
              f"Watch.observe: {median_call(lambda: watch.observe(False), args.repeats) * 1e6:.3f} µs "
              f"(median of 20 x {args.repeats})")
        work = batches(c, args.repeats)
        for name, challenger in (("none", None), ("one", ch), ("none", None), ("one", ch)):
            c.pipeline.challenger = challenger
            times = []
            for plc, batch in work:
                t0 = time.perf_counter()
                c.handle_batch(plc, batch)
                times.append(time.perf_counter() - t0)
                await asyncio.sleep(0)  # a write's task and a challenger step queued behind it run
            c.history.take()
            times.sort()
            print(f"handle_batch, challenger {name:>4}: p50 {times[len(times) // 2] * 1e6:6.1f} µs, "
                  f"p99 {times[int(len(times) * 0.99)] * 1e6:6.1f} µs")
        print(f"challenger rows {ch.rows}, agreement {ch.agreement:.4f}, failed {ch.failed or 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
