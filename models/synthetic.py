"""A small synthetic production line with labelled faults, for the demo, tests and benchmarks.

Eight correlated channels of a conveyor + pump skid sampled at 1 Hz: load drives
motor current and speed droop, losses heat the bearing, the pump curve ties flow
to discharge pressure. Faults are injected at known rows so results can be scored.
(The full plant simulator served over OPC UA / Modbus lives in hil_tests/.)
"""

from dataclasses import dataclass

import numpy as np

TAGS = ["motor_current", "motor_speed", "vibration_rms", "bearing_temp",
        "pump_flow", "discharge_pressure", "oil_temp", "supply_voltage"]
UNITS = {"motor_current": "A", "motor_speed": "rpm", "vibration_rms": "mm/s",
         "bearing_temp": "degC", "pump_flow": "m3/h", "discharge_pressure": "bar",
         "oil_temp": "degC", "supply_voltage": "V"}
FAULTS = ("jam", "bearing_wear", "leak", "sensor_stuck", "sensor_spike", "dropout")


@dataclass
class SyntheticLine:
    times: np.ndarray  # (rows,) seconds
    values: np.ndarray  # (rows, 8)
    good: np.ndarray  # (rows, 8) uint8 quality mask
    label: np.ndarray  # (rows,) bool: a fault is active
    faults: list[tuple[str, int, int]]  # (kind, start row, end row)


def generate(rows: int, seed: int = 0, faults: list[tuple[str, int, int]] | None = None
             ) -> SyntheticLine:
    """Simulate `rows` seconds of the line; `faults` lists (kind, start, end) rows to inject."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    # Production load (0..1): a 15-minute cycle plus a mean-reverting (Ornstein-Uhlenbeck) wander.
    wander = np.zeros(rows)
    kicks = rng.normal(0, 0.006, rows)
    for i in range(1, rows):
        wander[i] = 0.98 * wander[i - 1] + kicks[i]
    load = np.clip(0.6 + 0.15 * np.sin(2 * np.pi * t / 900.0) + wander, 0.2, 1.0)
    wear = np.zeros(rows)
    leak = np.zeros(rows)
    jam = np.zeros(rows)
    faults = list(faults or [])
    for kind, start, end in faults:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULTS}")
        span = slice(start, end)
        if kind == "jam":
            jam[span] = 1.0
        elif kind == "bearing_wear":
            wear[span] = np.linspace(0.0, 1.0, end - start)
        elif kind == "leak":
            leak[span] = 1.0

    current = 12.0 + 18.0 * load + 25.0 * jam + rng.normal(0, 0.35, rows)
    speed = 1480.0 - 40.0 * load - 600.0 * jam + rng.normal(0, 2.0, rows)
    vibration = 1.2 + 0.8 * load + 3.0 * wear + 2.0 * jam + np.abs(rng.normal(0, 0.08, rows))
    losses = 0.5 * current + 20.0 * wear
    # The bearing integrates losses over about a minute (started warm, no cold-start transient).
    warm = np.concatenate([np.full(59, losses[0]), losses])
    bearing = 35.0 + np.convolve(warm, np.ones(60) / 60.0, mode="valid") * 0.9
    bearing += rng.normal(0, 0.15, rows)
    flow = 40.0 * (speed / 1480.0) * (1.0 + 0.35 * leak) + rng.normal(0, 0.4, rows)
    pressure = 6.0 * (speed / 1480.0) ** 2 - 0.0008 * flow**2 - 1.8 * leak
    pressure += rng.normal(0, 0.05, rows)
    oil = 45.0 + 10.0 * load + rng.normal(0, 0.2, rows)
    voltage = 400.0 - 4.0 * load + rng.normal(0, 1.0, rows)
    values = np.column_stack([current, speed, vibration, bearing, flow, pressure, oil, voltage])
    good = np.ones_like(values, dtype=np.uint8)
    label = (jam + wear + leak) > 0

    for kind, start, end in faults:
        col = TAGS.index("vibration_rms") if kind != "dropout" else TAGS.index("pump_flow")
        if kind == "sensor_stuck":
            values[start:end, col] = values[start, col]
        elif kind == "sensor_spike":
            values[start:end, col] += 15.0
        elif kind == "dropout":
            values[start:end, col] = np.nan
            good[start:end, col] = 0
        else:
            continue
        label[start:end] = True
    return SyntheticLine(times=t, values=values, good=good, label=label, faults=faults)
