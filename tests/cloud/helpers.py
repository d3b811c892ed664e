"""Known windows of records for the end-to-end tests, and the exactly-once check against VictoriaMetrics."""

from __future__ import annotations

import time

from controller.records import Record
from hil_tests.rig.victoria import VictoriaMetrics

NS = 1_000_000_000


def base_end_ns(windows: int, window_s: int = 10) -> int:
    """A window end so that `windows` windows end in the recent past."""
    now = int(time.time()) // window_s * window_s
    return (now - window_s * windows) * NS


def window_records(base_ns: int, i: int, n_tags: int, window_s: int = 10) -> list[Record]:
    """Window i: one `linesentry_tag` record per tag with a value that encodes (window, tag)."""
    t = base_ns + i * window_s * NS
    return [Record("linesentry_tag", {"site": "s", "line": "l", "controller": "c", "tag": f"t{j}"},
                   {"mean": float(i * 1000 + j), "count": i}, t, "window")
            for j in range(n_tags)]


def expected(base_ns: int, windows: range | list[int], n_tags: int, window_s: int = 10) -> dict:
    return {(f"t{j}", (base_ns + i * window_s * NS) // 1_000_000): float(i * 1000 + j)
            for i in windows for j in range(n_tags)}


def assert_exactly_once(vm: VictoriaMetrics, want: dict) -> None:
    """Every expected (tag, timestamp) is in VictoriaMetrics once, with its value, and nothing else."""
    got: dict = {}
    for s in vm.export('{__name__="linesentry_tag_mean"}'):
        tag = s["metric"]["tag"]
        for ts, v in zip(s["timestamps"], s["values"], strict=True):
            key = (tag, ts)
            assert key not in got, f"duplicate sample {key}"
            got[key] = v
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing, f"{len(missing)} points lost, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} unexpected points, e.g. {extra[:3]}"
    wrong = [k for k in want if got[k] != want[k]]
    assert not wrong, f"{len(wrong)} points with wrong values, e.g. {wrong[:3]}"
