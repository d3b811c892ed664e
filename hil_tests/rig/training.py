"""Normal operation of the simulated plant, sampled the way the controller sees it, for fitting.

Conveyor tags (OPC UA subscription) change every 10 ms tick; press tags (Modbus)
are held between 50 ms polls. The plant's load and temperatures wander on time
scales of seconds to minutes, so a useful training window is minutes long: far
quicker to simulate offline than to record live.
"""

import numpy as np

from hil_tests.rig.plant import INDEX, Plant

MODBUS_TAGS = frozenset({"hydraulic_pressure", "oil_temp", "cycle_count", "pump_flow",
                         "discharge_pressure"})


def simulated_normal(tags: list[str], seconds: float = 600.0, seed: int = 101,
                     modbus_poll_ticks: int = 5, stop_every_s: float = 90.0, stop_s: float = 3.0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(times, rows) of normal operation for `tags`, one row per 10 ms tick.

    Normal includes commanded stops (`stop_s` every `stop_every_s`, 0 for none) and the
    restarts after them: a bearing that cooled during a stop takes minutes to warm up
    again, and a model that never saw that would flag every restart.
    """
    unknown = [t for t in tags if t not in INDEX]
    if unknown:
        raise ValueError(f"the simulated plant has no tag(s) {', '.join(unknown)}")
    plant = Plant(seed=seed)
    ticks = int(seconds / plant.params.tick_s)
    cols = np.array([INDEX[t] for t in tags])
    polled = np.array([t in MODBUS_TAGS for t in tags])
    rows = np.empty((ticks, len(tags)))
    held = plant.snapshot().values[cols]
    stop_every, stop_len = int(stop_every_s / plant.params.tick_s), int(stop_s / plant.params.tick_s)
    for k in range(ticks):
        if stop_every and stop_len:
            plant.set_actuator("line_stop", k % stop_every >= stop_every - stop_len)
        now = plant.step().values[cols]
        held = np.where(polled & (k % modbus_poll_ticks != 0), held, now)
        rows[k] = held
    return np.arange(ticks) * plant.params.tick_s, rows
