"""Physics of the simulated line, stepped without real time: correlations, dynamics, determinism."""

import numpy as np

from hil_tests.rig.plant import INDEX, WATCHDOG_EXPIRED, WATCHDOG_RESTORED, Plant, PlantParams


def run(plant: Plant, seconds: float, probe=lambda p: None) -> tuple[np.ndarray, list]:
    n = round(seconds / plant.params.tick_s)
    rows, probes = [], []
    for _ in range(n):
        rows.append(plant.step().values.copy())
        probes.append(probe(plant))
    return np.array(rows), probes


def col(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, INDEX[name]]


def test_current_follows_load_and_speed_droops_with_it():
    rows, load = run(Plant(seed=3), 60, lambda p: p.load)
    assert np.corrcoef(col(rows, "motor_current"), load)[0, 1] > 0.9
    assert np.corrcoef(col(rows, "motor_speed"), load)[0, 1] < -0.8


def test_pump_pressure_falls_with_flow_on_the_pump_curve():
    rows, _ = run(Plant(seed=4), 60)
    flow, pressure = col(rows, "pump_flow"), col(rows, "discharge_pressure")
    assert np.corrcoef(flow, pressure)[0, 1] < -0.9
    p = PlantParams()
    np.testing.assert_allclose(pressure, p.pump_p0_bar - p.pump_k * flow**2, atol=0.15)


def test_press_pressure_cycles_with_the_stroke_and_counts_cycles():
    rows, _ = run(Plant(seed=5), 30)
    pressure, cycles = col(rows, "hydraulic_pressure"), col(rows, "cycle_count")
    assert pressure.max() > 150 and pressure.min() < 30
    assert cycles[-1] in (9, 10)  # 30 s / 3 s stroke (the 10th completes on the last tick)
    assert np.all(np.diff(cycles) >= 0)


def test_same_seed_same_trajectory_other_seed_differs():
    a, _ = run(Plant(seed=9), 5)
    b, _ = run(Plant(seed=9), 5)
    c, _ = run(Plant(seed=10), 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_line_stop_brings_conveyor_press_and_pump_to_idle_with_inertia():
    plant = Plant(seed=1)
    plant.step(100)
    speed0 = plant.speed
    plant.set_actuator("line_stop", True)
    first = plant.step(10)  # 100 ms later the belt is still turning
    assert first.value("motor_speed") > 0.5 * speed0
    after, _ = run(plant, 4)
    last = after[-1]
    assert last[INDEX["motor_speed"]] < 0.02 * speed0
    assert last[INDEX["motor_current"]] < 1.0
    assert last[INDEX["pump_flow"]] < 1.0
    assert abs(last[INDEX["hydraulic_pressure"]] - plant.params.press_standby_bar) < 3
    cycles = plant.cycle_count
    plant.step(500)
    assert plant.cycle_count == cycles  # the press no longer strokes
    plant.set_actuator("line_stop", False)
    plant.step(400)
    assert plant.speed > 0.9 * speed0


def test_vibration_grows_with_speed_and_bearing_temperature_integrates_slowly():
    plant = Plant(seed=2)
    running, _ = run(plant, 5)
    plant.set_actuator("line_stop", True)
    stopped, _ = run(plant, 5)
    assert col(running, "vibration_rms").mean() > 3 * col(stopped, "vibration_rms")[-100:].mean()
    t0 = plant.bearing_temp
    plant.set_actuator("line_stop", False)
    plant.params = PlantParams(load_mean=1.0)  # heavier product: more copper losses
    plant.step(100)
    assert abs(plant.bearing_temp - t0) < 1.0  # 1 s is nothing against a 300 s time constant
    plant.step(30000)
    assert plant.bearing_temp > t0 + 5


def test_reject_gate_diverts_items_only_while_open():
    plant = Plant(seed=1)
    plant.step(300)
    assert plant.items == 2 and plant.diverted == 0
    plant.set_actuator("reject_gate", True)
    plant.step(300)
    assert plant.diverted == 2
    plant.set_actuator("reject_gate", False)
    plant.step(300)
    assert plant.diverted == 2 and plant.items == 6


def test_watchdog_expires_only_when_both_heartbeats_stop_changing():
    plant = Plant(seed=1, params=PlantParams(watchdog_timeout_s=0.5))
    plant.step(200)
    assert plant.events == []  # not armed before the first heartbeat
    for i in range(100):  # OPC UA heartbeat alive, Modbus one frozen: still alive
        plant.write_heartbeat("conveyor", i)
        plant.write_heartbeat("press", 0)
        plant.step(1)
    assert plant.events == []
    plant.step(45)
    assert plant.events == []
    plant.step(10)
    assert [e.kind for e in plant.events] == [WATCHDOG_EXPIRED]
    assert abs(plant.events[0].t - (plant.t - 0.04)) < 0.02
    plant.write_heartbeat("press", 1)
    assert [e.kind for e in plant.events] == [WATCHDOG_EXPIRED, WATCHDOG_RESTORED]


def test_watchdog_safe_stop_stops_the_line():
    plant = Plant(seed=1, params=PlantParams(watchdog_timeout_s=0.2, watchdog_safe_stop=True))
    plant.write_heartbeat("conveyor", 1)
    plant.step(300)
    assert plant.watchdog_expired and not plant.running and plant.speed < 100
