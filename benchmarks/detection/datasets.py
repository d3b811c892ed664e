"""The evaluation sets: seeded generators for the failure modes of issue 14, and SKAB read as given.

A set is a list of Groups: the normal rows a detector is fitted on, then one or more
Runs it is replayed over from a fresh state, each with the rows that are scored and
the faults injected at known rows. Labels (the faults) are never part of what is fitted.

- `univariate_set`: single streams sampled every 5 min with level drift, variance drift,
  daily/weekly seasonality, noise of several kinds, quantisation, dropped samples, one
  stream with duplicate timestamps in its training rows and a flat artificial stream;
  anomalies: spike, level shift, trend change, variance change, stuck value, contextual.
  Fitted on the first 15 % of each stream, the rest is scored (the NAB layout).
- `process_set`: a chemical-like process of 43 variables driven by six latent
  disturbances through first-order dynamics, sampled every 3 min, stored at limited
  precision, with sample-and-hold analysers; one normal training run, one normal test
  run and one run per fault, the fault starting at a known row (the Tennessee Eastman layout).
- `skab_set`: SKAB under its own protocol (fit on the first 400 rows of each file).
"""

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from benchmarks import skab

DAY_S = 86400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class Fault:
    kind: str  # the failure mode, e.g. "spike", "step", "sticking"
    start: int  # first faulty row of the run
    end: int  # one past the last faulty row


@dataclass
class Run:
    """Rows replayed through a fitted detector from a fresh state; rows before `scored_from` unscored."""

    name: str
    x: np.ndarray  # (rows, tags)
    t: np.ndarray  # (rows,) seconds
    scored_from: int
    faults: list[Fault] = field(default_factory=list)

    @property
    def label(self) -> np.ndarray:
        """True on faulty rows."""
        label = np.zeros(self.x.shape[0], dtype=bool)
        for f in self.faults:
            label[f.start:f.end] = True
        return label


@dataclass
class Group:
    """Normal rows to fit on and the runs scored with that one fit."""

    set: str
    name: str
    tags: list[str]
    fit_x: np.ndarray
    fit_t: np.ndarray
    runs: list[Run]
    interval_s: float  # nominal sampling interval


# ------------------------------------------------------------------ univariate streams
UNIVARIATE_KINDS = ("spike", "level_shift", "trend_change", "variance_change", "stuck", "contextual")
UNIVARIATE_INTERVAL_S = 300.0
FIT_SHARE = 0.15  # fit on the first 15 % of each stream, as the NAB-style benchmark does
DROPPED_SHARE = 0.01  # occasional missing samples: gaps in the time axis
DUPLICATE_TIMES = 11  # rows of the duplicate-timestamp stream's training part that repeat a timestamp


@dataclass(frozen=True)
class StreamStyle:
    """How a normal stream behaves: level, drift, seasonality, noise and storage precision."""

    level: float
    level_drift: float  # total linear drift over the stream, noise sigmas
    walk: float  # random-walk step of the level, noise sigmas
    daily: float  # daily amplitude, noise sigmas
    weekend: float  # daily amplitude multiplier on Saturday/Sunday (1 = no weekly pattern)
    noise: str  # "gauss", "ar" (AR(1), phi 0.7) or "t" (Student t, 4 dof)
    sigma_growth: float  # noise sigma at the end of the stream / at the start
    resolution: float  # values are stored rounded to this
    sigma: float  # noise sigma at the start, in value units


STYLES = {
    "daily": StreamStyle(100.0, 4.0, 0.0, 3.0, 1.0, "gauss", 1.0, 0.01, 1.0),
    "weekly": StreamStyle(20.0, 0.0, 0.03, 3.0, 0.4, "ar", 1.0, 0.1, 0.5),
    "variance_drift": StreamStyle(50.0, -2.0, 0.0, 2.0, 1.0, "ar", 2.5, 0.01, 2.0),
    "counts": StreamStyle(40.0, 3.0, 0.0, 2.5, 0.6, "t", 1.5, 1.0, 4.0),
}
# Anomaly length in rows (5-min samples) and size in noise sigmas.
ANOMALY_ROWS = {"spike": 1, "level_shift": 36, "trend_change": 72, "variance_change": 72,
                "stuck": 48, "contextual": 72}
ANOMALY_SIGMAS = {"spike": 8.0, "level_shift": 4.0, "trend_change": 6.0, "variance_change": 4.0}


def _noise(kind: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise of the given kind."""
    if kind == "gauss":
        return rng.normal(size=rows)
    if kind == "t":
        return rng.standard_t(4, size=rows) / np.sqrt(2.0)
    phi, e = 0.7, rng.normal(size=rows) * np.sqrt(1 - 0.7**2)
    out = np.empty(rows)
    out[0] = rng.normal()
    for i in range(1, rows):
        out[i] = phi * out[i - 1] + e[i]
    return out


def _season(style: StreamStyle, t: np.ndarray, phase_s: float = 0.0) -> np.ndarray:
    """Daily sine (peak at 06:00) with a weekend damping, in noise sigmas before the amplitude."""
    tt = t + phase_s
    daily = np.sin(2 * np.pi * tt / DAY_S)
    weekend = ((tt % WEEK_S) // DAY_S) >= 5
    return style.daily * daily * np.where(weekend, style.weekend, 1.0)


def make_stream(style_name: str, rows: int, kinds: tuple[str, ...], seed: int,
                duplicates: int = 0) -> tuple[np.ndarray, np.ndarray, list[Fault]]:
    """One stream (times, values, faults) with one anomaly per entry of `kinds`, in order along the
    scored rows; no kinds make a normal stream, style 'flat' a constant one."""
    rng = np.random.default_rng(seed)
    n_fit = int(rows * FIT_SHARE)
    grid = np.arange(rows + int(rows * DROPPED_SHARE) + 1) * UNIVARIATE_INTERVAL_S
    if style_name == "flat":
        return grid[:rows].copy(), np.full(rows, 42.0), []
    style = STYLES[style_name]
    dropped = rng.choice(grid.size, size=grid.size - rows, replace=False)
    t = np.delete(grid, dropped)[:rows]
    frac = np.arange(rows) / rows
    sigma = style.sigma * (1.0 + (style.sigma_growth - 1.0) * frac)
    level = style.level + style.sigma * (style.level_drift * frac
                                         + style.walk * np.cumsum(rng.normal(size=rows)))
    season = _season(style, t)
    noise = _noise(style.noise, rows, rng)

    faults = []
    bands = np.linspace(0.3, 0.92, len(kinds) + 1)
    for a, kind in enumerate(kinds):
        start = int(rows * rng.uniform(bands[a], bands[a + 1] - 0.06))
        if kind == "contextual":  # start 03:00 so the flipped window covers the 06:00 peak
            start += int(((3 * 3600 - t[start]) % DAY_S) // UNIVARIATE_INTERVAL_S)
        faults.append(Fault(kind, start, min(start + ANOMALY_ROWS[kind], rows)))
    sign = rng.choice([-1.0, 1.0], size=len(faults))
    for f, s in zip(faults, sign, strict=True):
        span = slice(f.start, f.end)
        if f.kind == "level_shift" or f.kind == "spike":
            level[span] += s * ANOMALY_SIGMAS[f.kind] * sigma[span]
        elif f.kind == "trend_change":
            level[span] += s * ANOMALY_SIGMAS[f.kind] * sigma[span] * np.linspace(0, 1, f.end - f.start)
        elif f.kind == "variance_change":
            noise[span] *= ANOMALY_SIGMAS[f.kind]
        elif f.kind == "contextual":  # the daily pattern runs half a day out of phase
            season[span] = _season(style, t[span], DAY_S / 2)
    values = level + sigma * (season + noise)
    values = np.round(values / style.resolution) * style.resolution
    for f in faults:
        if f.kind == "stuck":
            values[f.start:f.end] = values[f.start]
    if duplicates:
        for i in np.sort(rng.choice(np.arange(1, n_fit), size=duplicates, replace=False)):
            t[i] = t[i - 1]
    return t, values, faults


def univariate_set(quick: bool = False, seed: int = 0) -> list[Group]:
    """Two anomalies of each kind on every style, normal streams, a flat one and one with duplicate
    timestamps; quick: three streams holding two kinds each, the flat and the duplicate-time one."""
    rows = 1152 if quick else 4032  # 4 or 14 days of 5-min samples
    styles = list(STYLES)
    plan = []  # (name, style, kinds, duplicates)
    if quick:
        for k in range(0, len(UNIVARIATE_KINDS), 2):
            kinds = UNIVARIATE_KINDS[k:k + 2]
            plan.append((f"{'+'.join(kinds)}/{styles[k // 2]}", styles[k // 2], kinds, 0))
    else:
        plan += [(f"{kind}/{style}", style, (kind, kind), 0) for kind in UNIVARIATE_KINDS for style in styles]
        plan += [("normal/weekly", "weekly", (), 0), ("normal/variance_drift", "variance_drift", (), 0)]
    plan.append(("normal/flat", "flat", (), 0))
    plan.append(("level_shift/duplicate_times", "daily", ("level_shift", "level_shift"), DUPLICATE_TIMES))
    groups = []
    for i, (name, style, kinds, duplicates) in enumerate(plan):
        t, v, faults = make_stream(style, rows, kinds, seed * 1000 + i, duplicates)
        n_fit = int(rows * FIT_SHARE)
        x = v[:, None]
        groups.append(Group("univariate", name, ["value"], x[:n_fit], t[:n_fit],
                            [Run(name, x, t, n_fit, faults)], UNIVARIATE_INTERVAL_S))
    return groups


# ------------------------------------------------------------------ multivariate process
PROCESS_INTERVAL_S = 180.0
PLANTS = 3  # independent draws of the plant layout in the full set
N_LATENT = 6
N_PROCESS, N_VALVES, N_ANALYSERS = 30, 5, 3
ANALYSER_HOLD = 5  # analysers report every 5 samples (15 min) and hold the value in between
# Variables by index: 0-29 process measurements, 30-34 valve positions, 35-39 the flows behind
# those valves, 40-42 analysers.
MEASUREMENT_NOISE = 0.1  # of the process measurements, in units of the latent disturbances
RESOLUTION_OF_NOISE = MEASUREMENT_NOISE * np.array([0.01, 0.03, 0.1, 0.3, 1.0])
SLOW_GROUP = (0, 1, 2, 3)  # a heat-exchanger group with time constant 8 samples (the dynamics fault)
# Two redundant sensors on one fast temperature; the first's thermowell fouls (the sensor_lag
# fault): its reading then lags the process by 15 samples while its twin keeps up.
FOULED, TWIN = 4, 5
FOULED_TAU = 15.0
# Rows simulated before a run's first row: ten times the longest time constant (FOULED_TAU), so
# the start state weighs e^-10 when the run begins.
BURN_IN = int(10 * FOULED_TAU)
PROCESS_FAULTS = {  # name -> kind
    "feed_step": "step", "sensor_bias": "step",
    "kinetics_drift": "ramp", "sensor_drift": "ramp",
    "disturbance_variation": "random_variation", "sensor_noise": "random_variation",
    "sensor_stuck": "sticking", "valve_sticking": "sticking",
    "time_constant": "dynamics", "sensor_lag": "dynamics", "valve_oscillation": "dynamics",
    "correlation_break": "correlation",
}


@dataclass(frozen=True)
class ProcessLayout:
    """The fixed plant: how variables load on the latent disturbances, their dynamics and units."""

    phi: np.ndarray  # (N_LATENT,) AR(1) coefficient of each disturbance
    loadings: np.ndarray  # (N_PROCESS + N_VALVES + N_ANALYSERS, N_LATENT)
    tau: np.ndarray  # (N_PROCESS,) time constants in samples
    offset: np.ndarray  # (43,) engineering offset
    scale: np.ndarray  # (43,) engineering scale
    resolution: np.ndarray  # (43,) storage precision

    @property
    def tags(self) -> list[str]:
        names = ([f"pv{i:02d}" for i in range(N_PROCESS)] + [f"valve{i}" for i in range(N_VALVES)]
                 + [f"flow{i}" for i in range(N_VALVES)] + [f"analyser{i}" for i in range(N_ANALYSERS)])
        return names


def process_layout(seed: int = 0) -> ProcessLayout:
    rng = np.random.default_rng(seed + 7)
    n_loaded = N_PROCESS + N_VALVES + N_ANALYSERS
    loadings = np.zeros((n_loaded, N_LATENT))
    for j in range(n_loaded):
        picks = rng.choice(N_LATENT, size=2, replace=False)
        loadings[j, picks] = rng.normal(size=2) + np.sign(rng.normal(size=2)) * 0.5
    loadings[list(SLOW_GROUP), 1] = 1.0 + rng.uniform(size=len(SLOW_GROUP))  # the group shares disturbance 1
    loadings[[FOULED, TWIN]] = 0.0
    loadings[[FOULED, TWIN], 3], loadings[[FOULED, TWIN], 0] = 2.0, 1.0  # the fastest disturbance
    tau = rng.choice([1.0, 2.0, 4.0], size=N_PROCESS)
    tau[list(SLOW_GROUP)] = 8.0
    tau[[FOULED, TWIN]] = 1.0
    n = n_loaded + N_VALVES
    scale = 10 ** rng.uniform(-0.5, 1.3, size=n)
    offset = rng.uniform(10, 500, size=n)
    # Storage precision: a power of ten near 1 % to 100 % of a variable's measurement noise
    # (in turn), so some variables repeat an exact value rarely, some now and then and some
    # often, as logged plant data does.
    of_noise = RESOLUTION_OF_NOISE[np.arange(n) % len(RESOLUTION_OF_NOISE)]
    resolution = 10 ** np.round(np.log10(scale * of_noise))
    phi = np.array([0.9, 0.8, 0.88, 0.7, 0.85, 0.9])
    return ProcessLayout(phi, loadings, tau, offset, scale, resolution)


def simulate_process(layout: ProcessLayout, rows: int, seed: int, fault: str | None = None,
                     start: int = 0) -> np.ndarray:
    """Rows of the process in engineering units, with `fault` active from row `start`.

    The plant runs BURN_IN rows before the first returned one, so every run starts in steady
    state: started from the bare drive, the lags lack their own disturbances for a few time
    constants, and those start-up rows scored as false alarms of the detector (27 % of the
    process set's false alarms were in the first 50 rows of a run without it).
    """
    rng = np.random.default_rng(seed)
    nl = N_PROCESS + N_VALVES + N_ANALYSERS
    kept, rows, start = rows, rows + BURN_IN, start + BURN_IN
    after = np.arange(rows) >= start if fault else np.zeros(rows, dtype=bool)
    innov = rng.normal(size=(rows, N_LATENT)) * np.sqrt(1 - layout.phi**2)
    if fault == "disturbance_variation":
        innov[after, 3] *= 3.0
    f = np.zeros((rows, N_LATENT))
    f[0] = rng.normal(size=N_LATENT)
    for i in range(1, rows):
        f[i] = layout.phi * f[i - 1] + innov[i]
    if fault == "feed_step":
        f[after, 0] += 2.5
    if fault == "kinetics_drift":
        f[after, 2] += np.arange(after.sum()) * (4.0 / 300.0)
    drive = f @ layout.loadings.T  # (rows, nl)
    # Each variable's own fast disturbance, smoothed by its time constant; the slow group's is
    # larger, so that a faster response (the dynamics fault) shows as a changed rate of change.
    own = rng.normal(size=(rows, N_PROCESS)) * 0.3
    own[:, list(SLOW_GROUP)] *= 3.0
    a = np.exp(-1.0 / layout.tau)
    a_fault = a.copy()
    if fault == "time_constant":
        a_fault[list(SLOW_GROUP)] = np.exp(-1.0)
    y = np.zeros((rows, N_PROCESS))
    y[0] = drive[0, :N_PROCESS]
    for i in range(1, rows):
        ai = a_fault if after[i] else a
        y[i] = ai * y[i - 1] + (1 - ai) * (drive[i, :N_PROCESS] + own[i])
    y[:, TWIN] = y[:, FOULED]  # redundant sensors: one process value, two measurement noises
    meas = np.empty((rows, nl + N_VALVES))
    meas[:, :N_PROCESS] = y + rng.normal(size=y.shape) * MEASUREMENT_NOISE
    # Valves follow their command; the flow behind each valve lags its position by two samples.
    command = drive[:, N_PROCESS:N_PROCESS + N_VALVES].copy()
    if fault == "valve_oscillation":
        command[after, 3] += 3.0 * np.sin(2 * np.pi * np.arange(after.sum()) / 8.0)
    position = command.copy()
    if fault == "valve_sticking":  # stick-slip: the valve moves only when the command is 0.6 away
        for i in np.flatnonzero(after):
            prev = position[i - 1, 1] if i else command[i, 1]
            position[i, 1] = command[i, 1] if abs(command[i, 1] - prev) > 0.6 else prev
    meas[:, N_PROCESS:N_PROCESS + N_VALVES] = position + rng.normal(size=position.shape) * 0.05
    flow = np.zeros_like(position)
    flow[0] = 1.5 * position[0]
    for i in range(1, rows):
        flow[i] = np.exp(-0.5) * flow[i - 1] + (1 - np.exp(-0.5)) * 1.5 * position[i]
    meas[:, nl:] = flow + rng.normal(size=flow.shape) * 0.1
    # Analysers: a slow lag of their drive, sampled every ANALYSER_HOLD rows and held.
    slow = np.zeros((rows, N_ANALYSERS))
    slow[0] = drive[0, N_PROCESS + N_VALVES:nl]
    for i in range(1, rows):
        slow[i] = np.exp(-1 / 8.0) * slow[i - 1] + (1 - np.exp(-1 / 8.0)) * drive[i, N_PROCESS + N_VALVES:nl]
    sampled = slow + rng.normal(size=slow.shape) * 0.05
    held = (np.arange(rows) // ANALYSER_HOLD) * ANALYSER_HOLD
    meas[:, N_PROCESS + N_VALVES:nl] = sampled[held]

    pre = slice(BURN_IN, max(start, BURN_IN + 2))
    if fault == "sensor_bias":
        meas[after, 7] += 4.0 * meas[pre, 7].std()
    if fault == "sensor_drift":
        meas[after, 12] += np.arange(after.sum()) * 0.01 * meas[pre, 12].std()
    if fault == "sensor_lag":
        lag = np.exp(-1.0 / FOULED_TAU)
        for i in np.flatnonzero(after)[1:]:
            meas[i, FOULED] = lag * meas[i - 1, FOULED] + (1 - lag) * meas[i, FOULED]
    if fault == "sensor_noise":
        meas[after, 18] += rng.normal(size=after.sum()) * 4.0 * MEASUREMENT_NOISE
    if fault == "correlation_break":  # same mean and spread, no longer tied to the process
        m, s = meas[pre, 25].mean(), meas[pre, 25].std()
        e = np.zeros(after.sum())
        for i in range(1, e.size):
            e[i] = 0.95 * e[i - 1] + rng.normal() * np.sqrt(1 - 0.95**2)
        meas[after, 25] = m + s * e
    values = layout.offset + layout.scale * meas
    values = np.round(values / layout.resolution) * layout.resolution
    if fault == "sensor_stuck":
        values[after, 20] = values[start, 20]
    return values[rows - kept:]


def process_set(quick: bool = False, seed: int = 0) -> list[Group]:
    """One group per plant (PLANTS draws of the layout; quick: one): fitted on a normal training run,
    replayed over a normal test run and every fault run. Several plants keep one lucky draw of
    loadings and storage precisions from deciding the figures."""
    train_rows, run_rows, fault_start = (300, 400, 100) if quick else (500, 960, 160)
    times = np.arange(run_rows) * PROCESS_INTERVAL_S
    groups = []
    for plant in range(1 if quick else PLANTS):
        plant_seed = seed * 100 + plant
        layout = process_layout(plant_seed)
        train = simulate_process(layout, train_rows, plant_seed * 1000)
        runs = [Run("normal", simulate_process(layout, run_rows, plant_seed * 1000 + 1), times, 0)]
        for i, (name, kind) in enumerate(PROCESS_FAULTS.items()):
            x = simulate_process(layout, run_rows, plant_seed * 1000 + 2 + i, name, fault_start)
            runs.append(Run(name, x, times, 0, [Fault(kind, fault_start, run_rows)]))
        groups.append(Group("process", f"plant{plant}", layout.tags, train,
                            np.arange(train_rows) * PROCESS_INTERVAL_S, runs, PROCESS_INTERVAL_S))
    return groups


# ------------------------------------------------------------------ SKAB
def skab_set(root: Path) -> list[Group]:
    """SKAB files as given: fit on the first 400 rows, replay the file, score the rest.

    Times are the files' own timestamps (a new user passes them), faults the labelled
    anomaly segments of the scored rows, their kind the file's folder.
    """
    groups = []
    for rec in skab.load_skab(root):
        t = np.array([datetime.fromisoformat(d).timestamp() for d in rec.datetimes])
        t -= t[0]
        n_fit = skab.FIT_ROWS
        label = rec.anomaly.copy()
        label[:n_fit] = False
        edges = np.flatnonzero(np.diff(np.concatenate([[0], label.astype(int), [0]])))
        faults = [Fault(rec.folder, int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]
        name = f"{rec.folder}/{rec.name}"
        groups.append(Group("skab", name, rec.tags, rec.values[:n_fit], t[:n_fit],
                            [Run(name, rec.values, t, n_fit, faults)], 1.0))
    return groups
