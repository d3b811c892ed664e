"""What the durable event journal costs (a measurement, printed).

    .venv/bin/python -m benchmarks.journal [--rows 1000000] [--dir DIR]

controller.events over controller.eventstore on a real file: the housekeeping flush of a batch of
N events (one transaction; median and max over repeats, in the event loop's thread, which is
what it blocks), the disk per event, `since` reading a page of 1000 older events back, and
opening a journal of --rows events at start (quick_check reads the whole file), and the
id reservation a flush makes every RESERVE_IDS / 2 events. `add` does no I/O, so the hot path's
cost is unchanged; its cost (a dict and two appends) is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from controller.events import RESERVE_IDS, EventLog
from controller.eventstore import EventStore

FIELDS = {"state": "UNACK", "user": "", "priority": "high"}  # an alarm transition's fields


def timed(fn, repeats: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="journal size for the open figure")
    parser.add_argument("--dir", type=Path, default=None, help="where the journal file goes (a tmp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "journal.sqlite"
        log = EventLog()
        log.open(EventStore(path, max_age_s=1e9, max_rows=10 ** 9))
        n = 0

        def add() -> None:
            nonlocal n
            n += 1
            log.add("alarm", "press_comm_loss", f"NORMAL -> UNACK (condition) {n}", **FIELDS)

        median, _ = timed(add, 10_000)
        log.flush()
        print(f"add (no I/O): {median * 1e6:.2f} µs median")
        for batch in (1, 10, 100, 1000):
            def flush(batch: int = batch) -> None:
                for _ in range(batch):
                    add()
                log.flush()
            median, worst = timed(flush, 200 if batch < 1000 else 30)
            print(f"flush of {batch:4d} events (incl. their add): {median * 1e3:.3f} ms median, "
                  f"{worst * 1e3:.3f} ms max")
        store = EventStore(Path(tmp) / "reserve.sqlite", max_age_s=1e9, max_rows=10 ** 9)
        store.open()
        median, worst = timed(lambda: store.reserve(n), 50)
        store.close()
        print(f"id reservation (once per {RESERVE_IDS // 2} events, in a flush): "
              f"{median * 1e3:.3f} ms median, {worst * 1e3:.3f} ms max")
        while n < args.rows:
            for _ in range(min(10_000, args.rows - n)):
                add()
            log.flush()
        log.close()
        size = path.stat().st_size
        print(f"{n} events: {size / 2**20:.1f} MiB, {size / n:.0f} bytes per event")
        t0 = time.perf_counter()
        log = EventLog()
        log.open(EventStore(path, max_age_s=1e9, max_rows=10 ** 9))
        print(f"open at start ({n} events, quick_check, last 10000 into memory): "
              f"{time.perf_counter() - t0:.2f} s")
        median, worst = timed(lambda: log.since(n // 2, limit=1000), 20)
        print(f"since(): a page of 1000 events from the journal: {median * 1e3:.1f} ms median, "
              f"{worst * 1e3:.1f} ms max")
        log.close()
        print(f"load average {os.getloadavg()[0]:.2f} (2 cores, shared)")


if __name__ == "__main__":
    main()
