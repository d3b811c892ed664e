"""The simulated line: conveyor motor, hydraulic press and pump, advanced in fixed ticks.

Pure numpy physics, deterministic for a seed, with no clock of its own: the servers' loop
steps it in real time, unit tests step it as fast as they like. Faults reach the physics
through `Disturbance` (process faults) and the served values through `Snapshot` (sensor faults),
so the plant itself never knows a scenario exists.

`linesentry sim` serves it on 127.0.0.1 (OPC UA :4840, Modbus :5020) and prints the address map
(hil_tests/rig/simulator.py; the plant imports nothing of the rig).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Served sensor tags, in Snapshot order. (name, unit)
SENSORS: tuple[tuple[str, str], ...] = (
    ("motor_current", "A"),
    ("motor_speed", "rpm"),
    ("vibration_rms", "mm/s"),
    ("bearing_temp", "degC"),
    ("hydraulic_pressure", "bar"),
    ("oil_temp", "degC"),
    ("cycle_count", "1"),
    ("pump_flow", "m3/h"),
    ("discharge_pressure", "bar"),
)
SENSOR_NAMES: tuple[str, ...] = tuple(n for n, _ in SENSORS)
INDEX: dict[str, int] = {n: i for i, n in enumerate(SENSOR_NAMES)}
ACTUATORS: tuple[str, ...] = ("line_stop", "reject_gate")
WATCHDOG_EXPIRED = "controller watchdog expired"
WATCHDOG_RESTORED = "controller watchdog restored"


@dataclass(frozen=True)
class PlantParams:
    """Nominal operating point; the defaults are a mid-size conveyor, a 200 bar press, a 50 m3/h pump."""

    tick_s: float = 0.01
    ambient_c: float = 25.0
    # conveyor
    nominal_rpm: float = 1480.0
    droop_per_load: float = 0.10  # fractional speed loss per unit load
    mech_tau_s: float = 0.4  # speed time constant (rotor + belt inertia)
    elec_tau_s: float = 0.05  # current time constant
    magnetizing_a: float = 5.0
    amps_per_load: float = 20.0
    rated_a: float = 17.0  # reference for the copper losses in the bearing heat balance
    idle_a: float = 0.2  # control electronics with the motor stopped
    load_mean: float = 0.6
    load_theta: float = 0.5  # OU mean reversion of the belt load (1/s)
    load_sigma: float = 0.15
    item_period_s: float = 1.5  # an item passes the reject gate this often while running
    vib_floor: float = 0.3
    vib_per_speed2: float = 2.0
    bearing_tau_s: float = 300.0
    # press
    press_period_s: float = 3.0
    press_rest_bar: float = 20.0
    press_peak_bar: float = 180.0
    press_standby_bar: float = 5.0
    press_tau_s: float = 0.05
    oil_tau_s: float = 900.0
    # pump: p = p0 - k Q^2 against a system curve p = R Q^2
    pump_p0_bar: float = 8.0
    pump_k: float = 0.001
    pump_r0: float = 0.0022
    pump_tau_s: float = 0.5  # pump run-up / run-down time constant
    pump_static_bar: float = 0.5
    # watchdog
    watchdog_timeout_s: float = 1.0
    watchdog_safe_stop: bool = False  # stop the line when the controller's heartbeat dies


@dataclass
class Disturbance:
    """Process-fault inputs for one tick; all zero means a healthy line."""

    jam: float = 0.0  # 0..1+: extra belt load, speed collapses
    wear: float = 0.0  # 0..1: bearing wear (vibration, friction heat)
    leak: float = 0.0  # 0..1: parallel leak path on the pump discharge
    cavitation: float = 0.0  # 0..1: vapour bubbles at the pump inlet (noisy flow)


@dataclass
class Snapshot:
    """What the PLCs serve after a tick: sensor values in SENSORS order and a per-value Bad flag."""

    t: float
    values: np.ndarray
    bad: np.ndarray
    line_stop: bool
    reject_gate: bool

    def value(self, name: str) -> float:
        return float(self.values[INDEX[name]])

    def copy(self) -> Snapshot:
        return Snapshot(self.t, self.values.copy(), self.bad.copy(), self.line_stop, self.reject_gate)


@dataclass
class PlantEvent:
    t: float  # plant seconds
    kind: str
    detail: str = ""


@dataclass
class _Heartbeat:
    value: int = -1
    changed_at: float = -math.inf


@dataclass
class Plant:
    """The line's state and its physics; `step()` advances one or more ticks."""

    seed: int = 0
    params: PlantParams = field(default_factory=PlantParams)

    def __post_init__(self) -> None:
        p = self.params
        self.rng = np.random.default_rng(self.seed)
        self.t = 0.0
        self.ticks = 0
        self.disturbance = Disturbance()
        self.line_stop = False
        self.reject_gate = False
        self.items = 0
        self.diverted = 0
        self.events: list[PlantEvent] = []
        self.heartbeats: dict[str, _Heartbeat] = {}
        self.watchdog_expired = False
        self._item_phase = 0.0
        # state, started at the nominal operating point (a line that has been running a while)
        self.load = p.load_mean
        self.speed = p.nominal_rpm * (1 - p.droop_per_load * p.load_mean)
        self.current = p.magnetizing_a + p.amps_per_load * p.load_mean
        self.bearing_temp = self._bearing_equilibrium(self.current, self.speed, 0.0)
        self.press_phase = 0.0
        self.cycle_count = 0
        self.pressure = p.press_rest_bar
        self.oil_temp = p.ambient_c + self._oil_heat(running=True)
        self.valve = 0.0  # OU deviation of the system resistance (demand changes)
        self.pump_speed = 1.0  # relative to nominal
        self.flow = math.sqrt(p.pump_p0_bar / (p.pump_k + p.pump_r0))
        # AR(1) sensor noise state per served tag: correlated over ~10 ticks, as real filtered sensors are
        self._noise = np.zeros(len(SENSORS))
        self._noise_sigma = np.array([0.15, 1.5, 0.04, 0.05, 0.6, 0.05, 0.0, 0.3, 0.02])
        self._noise_phi = 0.9
        self._values = np.zeros(len(SENSORS))
        self._measure(np.zeros(len(SENSORS)), running=True)

    # ---- actuators and heartbeats (called by the servers when a client writes) ----

    def set_actuator(self, name: str, value: bool) -> None:
        if name not in ACTUATORS:
            raise ValueError(f"unknown actuator {name!r}; known: {', '.join(ACTUATORS)}")
        setattr(self, name, bool(value))

    def write_heartbeat(self, source: str, value: int) -> None:
        """A controller wrote its watchdog counter through `source`; only a change counts as alive."""
        hb = self.heartbeats.setdefault(source, _Heartbeat())
        if int(value) != hb.value:
            hb.value, hb.changed_at = int(value), self.t
            if self.watchdog_expired:
                self.watchdog_expired = False
                self.events.append(PlantEvent(self.t, WATCHDOG_RESTORED, source))

    @property
    def running(self) -> bool:
        return not self.line_stop and not (self.watchdog_expired and self.params.watchdog_safe_stop)

    # ---- physics ----

    def _bearing_equilibrium(self, current: float, speed: float, wear: float) -> float:
        p = self.params
        i_rel = current / p.rated_a
        n_rel = speed / p.nominal_rpm
        return p.ambient_c + 18.0 * i_rel**2 + 12.0 * n_rel * (1.0 + 3.0 * wear)

    def _oil_heat(self, running: bool) -> float:
        return 20.0 if running else 2.0

    def step(self, n: int = 1) -> Snapshot:
        """Advance n ticks; returns the snapshot after the last one."""
        for _ in range(n):
            self._tick()
        return self.snapshot()

    def _tick(self) -> None:
        p, d, dt = self.params, self.disturbance, self.params.tick_s
        z = self.rng.standard_normal(4 + len(SENSORS))
        running = self.running
        # conveyor: belt load is an OU process; a jam adds load and brakes the belt
        self.load += (
            p.load_theta * (p.load_mean - self.load) * dt
            + p.load_sigma * math.sqrt(2 * p.load_theta * dt) * z[0]
        )
        self.load = min(max(self.load, 0.05), 1.5)
        load_eff = (self.load + 2.0 * d.jam) if running else 0.0
        speed_target = (
            p.nominal_rpm * max(0.0, 1 - p.droop_per_load * load_eff - 0.25 * d.jam) if running else 0.0
        )
        accel = (speed_target - self.speed) / p.mech_tau_s
        self.speed += accel * dt
        i_target = (
            (p.magnetizing_a + p.amps_per_load * load_eff + 0.004 * max(accel, 0.0)) if running else p.idle_a
        )
        self.current += (i_target - self.current) * dt / p.elec_tau_s
        eq = self._bearing_equilibrium(self.current, self.speed, d.wear)
        self.bearing_temp += (eq - self.bearing_temp) * dt / p.bearing_tau_s
        if running:
            self._item_phase += dt / p.item_period_s
            if self._item_phase >= 1.0:
                self._item_phase -= 1.0
                self.items += 1
                if self.reject_gate:
                    self.diverted += 1
        # press: stroke profile (rest, half-sine pressing between 30% and 70% of the cycle)
        if running:
            self.press_phase += dt / p.press_period_s
            if self.press_phase >= 1.0:
                self.press_phase -= 1.0
                self.cycle_count += 1
            ph = self.press_phase
            stroke = math.sin(math.pi * (ph - 0.3) / 0.4) if 0.3 <= ph < 0.7 else 0.0
            p_target = p.press_rest_bar + (p.press_peak_bar - p.press_rest_bar) * stroke
        else:
            p_target = p.press_standby_bar
        self.pressure += (p_target - self.pressure) * dt / p.press_tau_s
        oil_eq = p.ambient_c + self._oil_heat(running)
        self.oil_temp += (oil_eq - self.oil_temp) * dt / p.oil_tau_s
        # pump: operating point where the pump curve meets the system curve; a leak lowers the
        # system resistance (flow up, pressure down), cavitation makes the delivered flow erratic
        self.valve += -0.3 * self.valve * dt + 0.08 * math.sqrt(dt) * z[1]
        self.pump_speed += (float(running) - self.pump_speed) * dt / p.pump_tau_s
        r = p.pump_r0 * max(0.2, 1.0 + self.valve) / (1.0 + 3.0 * d.leak)
        q_target = self.pump_speed * math.sqrt(p.pump_p0_bar / (p.pump_k + r))  # affinity law: Q ~ n
        if d.cavitation > 0:
            q_target *= max(0.0, 1.0 - d.cavitation * (0.1 + 0.25 * abs(z[2])))
        self.flow += (q_target - self.flow) * dt / 0.1
        self.ticks += 1
        self.t = self.ticks * dt  # no accumulated rounding: tick k is exactly k * dt
        self._check_watchdog()
        self._measure(z[4:], running)

    def _check_watchdog(self) -> None:
        if not self.heartbeats or self.watchdog_expired:
            return
        last = max(hb.changed_at for hb in self.heartbeats.values())
        if self.t - last > self.params.watchdog_timeout_s:
            self.watchdog_expired = True
            self.events.append(
                PlantEvent(self.t, WATCHDOG_EXPIRED, f"no heartbeat change for {self.t - last:.3f} s")
            )

    def _measure(self, z: np.ndarray, running: bool) -> None:
        p, d = self.params, self.disturbance
        phi = self._noise_phi
        self._noise = phi * self._noise + math.sqrt(1 - phi * phi) * self._noise_sigma * z
        n_rel = self.speed / p.nominal_rpm
        vib = (
            p.vib_floor
            + p.vib_per_speed2 * n_rel**2 * (1.0 + 4.0 * d.wear)
            + 0.3 * self.load * n_rel * running
        )
        if d.jam > 0 and running:
            vib += 1.5 * d.jam
        flow_noise = d.cavitation * 0.08 * self.flow * z[7] if d.cavitation > 0 else 0.0
        flow = max(0.0, self.flow + flow_noise)
        # on the pump curve (head ~ n^2), never below the static head of the discharge line
        pump_p = self.pump_speed**2 * p.pump_p0_bar - p.pump_k * flow**2 - 0.4 * d.cavitation
        v = self._values
        v[0] = self.current
        v[1] = self.speed
        v[2] = vib
        v[3] = self.bearing_temp
        v[4] = self.pressure
        v[5] = self.oil_temp
        v[6] = self.cycle_count
        v[7] = flow
        v[8] = max(pump_p, p.pump_static_bar)
        v += self._noise
        v[0] = max(v[0], 0.0)
        v[1] = max(v[1], 0.0)
        v[2] = max(v[2], 0.0)
        v[7] = max(v[7], 0.0)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.t, self._values.copy(), np.zeros(len(SENSORS), dtype=bool), self.line_stop, self.reject_gate
        )
