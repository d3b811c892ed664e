"""Every fault class changes what it should (and only that), stepped without real time."""

import numpy as np
import pytest
from pydantic import ValidationError

from hil_tests.rig.faults import FaultInjector, FaultSpec
from hil_tests.rig.plant import INDEX, Plant


def trace(faults: list[dict], seconds: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray, FaultInjector]:
    """Served values and Bad flags per tick under a schedule."""
    plant, inj = Plant(seed), FaultInjector([FaultSpec(**f) for f in faults], seed=seed)
    vals, bad = [], []
    for _ in range(round(seconds / plant.params.tick_s)):
        s = inj.step(plant)
        vals.append(s.values.copy())
        bad.append(s.bad.copy())
    return np.array(vals), np.array(bad), inj


def window(rows: np.ndarray, name: str, start_s: float, end_s: float) -> np.ndarray:
    return rows[round(start_s * 100) : round(end_s * 100), INDEX[name]]


def test_jam_spikes_current_and_drops_speed_then_recovers():
    rows, _, _ = trace([{"type": "jam", "onset_s": 5, "duration_s": 2, "magnitude": 1.0}], 12)
    assert window(rows, "motor_current", 6, 7).mean() > 1.8 * window(rows, "motor_current", 0, 5).mean()
    assert window(rows, "motor_speed", 6, 7).mean() < 0.75 * window(rows, "motor_speed", 0, 5).mean()
    assert window(rows, "motor_speed", 10, 12).mean() > 0.95 * window(rows, "motor_speed", 0, 5).mean()


def test_bearing_wear_drifts_vibration_and_temperature_slowly():
    rows, _, _ = trace([{"type": "bearing_wear", "onset_s": 2, "ramp_s": 60, "magnitude": 1.0}], 122)
    vib, temp = rows[:, INDEX["vibration_rms"]], rows[:, INDEX["bearing_temp"]]
    assert abs(window(rows, "vibration_rms", 2, 3).mean() - vib[:200].mean()) < 0.2  # slow, not a step
    assert window(rows, "vibration_rms", 110, 122).mean() > 3 * vib[:200].mean()
    assert temp[-1] > temp[:200].mean() + 5


def test_leak_drops_pressure_and_raises_flow():
    rows, _, _ = trace([{"type": "leak", "onset_s": 5, "magnitude": 0.3}], 15)
    assert window(rows, "pump_flow", 10, 15).mean() > 1.1 * window(rows, "pump_flow", 0, 5).mean()
    assert (
        window(rows, "discharge_pressure", 10, 15).mean()
        < window(rows, "discharge_pressure", 0, 5).mean() - 0.7
    )


def test_cavitation_makes_flow_noisy():
    rows, _, _ = trace([{"type": "cavitation", "onset_s": 5, "magnitude": 0.6}], 15)
    assert window(rows, "pump_flow", 8, 15).std() > 3 * window(rows, "pump_flow", 0, 5).std()


def test_sensor_faults_change_the_served_value_not_the_physics():
    spike = {"type": "spike", "tag": "motor_current", "onset_s": 2, "duration_s": 0.05, "magnitude": 40}
    healthy, _, _ = trace([], 4)
    rows, _, _ = trace([spike], 4)
    diff = rows[:, INDEX["motor_current"]] - healthy[:, INDEX["motor_current"]]
    assert np.count_nonzero(np.isclose(diff, 40)) == 5 and np.count_nonzero(diff) == 5
    others = [i for i in range(rows.shape[1]) if i != INDEX["motor_current"]]
    np.testing.assert_array_equal(rows[:, others], healthy[:, others])


def test_stuck_holds_the_last_value_and_drift_grows_linearly():
    rows, _, _ = trace(
        [
            {"type": "stuck", "tag": "vibration_rms", "onset_s": 2, "duration_s": 3},
            {"type": "drift", "tag": "oil_temp", "onset_s": 2, "magnitude": 0.5},
        ],
        8,
    )
    healthy, _, _ = trace([], 8)
    stuck = window(rows, "vibration_rms", 2, 5)
    assert np.all(stuck == rows[199, INDEX["vibration_rms"]])
    assert window(rows, "vibration_rms", 5.01, 8).std() > 0
    drift = window(rows, "oil_temp", 2, 8) - window(healthy, "oil_temp", 2, 8)
    assert drift[-1] == pytest.approx(0.5 * 5.99, abs=0.02)


def test_dropout_flags_bad_quality_and_noise_burst_adds_noise():
    rows, bad, _ = trace(
        [
            {"type": "dropout", "tag": "pump_flow", "onset_s": 1, "duration_s": 1},
            {
                "type": "noise_burst",
                "tag": "hydraulic_pressure",
                "onset_s": 1,
                "duration_s": 1,
                "magnitude": 15,
            },
        ],
        3,
    )
    assert bad[100:200, INDEX["pump_flow"]].all() and not bad[:100].any() and not bad[200:].any()
    assert bad.sum() == 100
    healthy, _, _ = trace([], 3)
    noise = window(rows, "hydraulic_pressure", 1, 2) - window(healthy, "hydraulic_pressure", 1, 2)
    assert 10 < noise.std() < 20


def test_transitions_reach_listeners_with_plant_time():
    plant = Plant(1)
    inj = FaultInjector(
        [
            FaultSpec(type="plc_restart", target="press", onset_s=0.5, down_s=0.3),
            FaultSpec(type="connection_drop", target="conveyor", onset_s=0.2),
        ]
    )
    seen: list[tuple[int, str, float]] = []
    inj.listeners.append(lambda i, f, phase, t: seen.append((i, phase, round(t, 2))))
    inj.step(plant, 100)
    assert seen == [(1, "onset", 0.2), (1, "end", 0.2), (0, "onset", 0.5), (0, "end", 0.8)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "stuck", "onset_s": 1}, "needs tag"),
        ({"type": "stuck", "onset_s": 1, "tag": "nope"}, "needs tag"),
        ({"type": "jam", "onset_s": 1, "tag": "motor_current"}, "does not take a tag"),
        ({"type": "plc_restart", "onset_s": 1}, "needs target"),
        ({"type": "leak", "onset_s": 1, "target": "press"}, "does not take a target"),
        ({"type": "meltdown", "onset_s": 1}, "Input should be"),
        ({"type": "jam", "onset_s": -1}, "greater than or equal"),
    ],
)
def test_bad_fault_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(ValidationError, match=message):
        FaultSpec(**spec)
