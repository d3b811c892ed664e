"""The demo line, until the controller service exists: a synthetic line replayed through the live step.

Fits the detector on half an hour of normal operation, then feeds a second
recording with one fault of each kind frame by frame through
`StreamingDetector.step` (the live path) and reports when each fault was flagged.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models import DetectorSpec, StreamingDetector
from models.kernels import FLAG_NAMES
from models.synthetic import TAGS, UNITS, generate

TRAIN_SECONDS = 1800
FAULT_GAP = 240  # seconds of normal operation between faults
FAULT_PLAN = [("jam", 20), ("bearing_wear", 180), ("leak", 90), ("sensor_stuck", 120),
              ("sensor_spike", 3), ("dropout", 60)]
# Demo tuning: a 2-of-3 debounce and a short clear delay, so one noisy sample never stops the line.
DEMO_SPEC = DetectorSpec(debounce_k=2, debounce_n=3, clear_n=5)


@dataclass
class FaultOutcome:
    kind: str
    onset: int
    end: int
    alarm_delay: float | None  # seconds from onset to the line alarm, None if never raised
    flag_delay: float | None  # seconds from onset to the first per-tag flag
    flags: dict[str, set[str]]  # per-tag flags seen during the fault: tag -> flag names


def fault_schedule() -> list[tuple[str, int, int]]:
    faults, t = [], FAULT_GAP
    for kind, duration in FAULT_PLAN:
        faults.append((kind, t, t + duration))
        t += duration + FAULT_GAP
    return faults


def run_demo(seed: int = 7, rate: float = 0.0,
             on_event: Callable[[float, str], None] | None = None) -> tuple[list[FaultOutcome], dict]:
    """Replay the demo line; `rate` > 0 paces it at that many samples per second of wall time."""
    emit = on_event or (lambda t, msg: None)
    train = generate(TRAIN_SECONDS, seed=seed)
    det = StreamingDetector(TAGS, DEMO_SPEC, UNITS).fit(train.values, train.times)
    det.warm_up()
    emit(0.0, f"fitted on {TRAIN_SECONDS} s of normal data; threshold {det.threshold:.3f}")

    faults = fault_schedule()
    rows = faults[-1][2] + FAULT_GAP
    live = generate(rows, seed=seed + 1, faults=faults)
    fresh = np.ones(len(TAGS), dtype=np.uint8)
    alarm = np.zeros(rows, dtype=bool)
    flagged = np.zeros(rows, dtype=bool)
    seen_flags: list[dict[str, set[str]]] = [{} for _ in range(rows)]
    step_ns = np.empty(rows)
    was_alarming = False
    started = time.monotonic()
    for r in range(rows):
        if rate > 0:
            time.sleep(max(0.0, started + r / rate - time.monotonic()))
        t0 = time.perf_counter_ns()
        alarming = det.step(live.times[r], live.values[r], fresh, live.good[r])
        step_ns[r] = time.perf_counter_ns() - t0
        alarm[r] = alarming
        for i in np.flatnonzero(det.tag_flags):
            flagged[r] = True
            seen_flags[r][TAGS[i]] = {n for b, n in FLAG_NAMES.items() if det.tag_flags[i] & b}
        if alarming != was_alarming:
            what = describe(seen_flags[r]) or "multivariate score"
            emit(live.times[r], f"LINE ALARM {'RAISED' if alarming else 'cleared'} "
                 f"(score {det.score:.3f}; {what})")
            was_alarming = alarming

    outcomes = []
    for kind, onset, end in faults:
        window = slice(onset, end + 30)
        hits, flag_hits = np.flatnonzero(alarm[window]), np.flatnonzero(flagged[window])
        flags: dict[str, set[str]] = {}
        for row in seen_flags[window]:
            for tag, names in row.items():
                flags.setdefault(tag, set()).update(names)
        outcomes.append(FaultOutcome(kind, onset, end, float(hits[0]) if hits.size else None,
                                     float(flag_hits[0]) if flag_hits.size else None, flags))
    fault_rows = live.label
    stats = {
        "rows": rows,
        "false_alarm_rows": int(np.sum(alarm & ~_with_tail(fault_rows, 60))),
        "normal_rows": int(np.sum(~_with_tail(fault_rows, 60))),
        "step_p50_us": float(np.percentile(step_ns, 50) / 1e3),
        "step_p99_us": float(np.percentile(step_ns, 99) / 1e3),
    }
    return outcomes, stats


def describe(flags: dict[str, set[str]]) -> str:
    """'tag(flag, flag); tag(flag)' for a map of per-tag flags."""
    return "; ".join(f"{tag}({', '.join(sorted(names))})" for tag, names in sorted(flags.items()))


def _with_tail(mask: np.ndarray, tail: int) -> np.ndarray:
    """Extend each fault by `tail` rows: the process takes a while to settle after a fault ends."""
    out = mask.copy()
    for r in np.flatnonzero(mask):
        out[r:r + tail + 1] = True
    return out
