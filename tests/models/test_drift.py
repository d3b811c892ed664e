"""Drift without blindness: the adaptive baselines follow slow normal drift and never learn a fault.

The process: two AR(1) latent factors mixed into six tags plus noise, in engineering
units with different offsets and scales. Normal drift moves the first factor's level
(slowly, with a seasonal swing) and the spread of every tag. The half-life is the
default: kernels.DRIFT_HALF_LIFE_WINDOWS training windows; every length below is in
half-lives.
"""

import math

import numpy as np
import pytest

from models import DetectorSpec, StreamingDetector
from models import kernels as K

TRAIN_ROWS = 2000
HALF_LIFE = int(K.DRIFT_HALF_LIFE_WINDOWS * TRAIN_ROWS)
DESIGNED_FAR = DetectorSpec().target_far
TAGS = [f"t{i}" for i in range(6)]
OFFSET = np.array([50.0, -20.0, 100.0, 3.0, 0.0, 7.0])
SCALE = np.array([1.0, 2.0, 5.0, 0.5, 10.0, 3.0])


def process(rows: int, seed: int, level=None, spread=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(2, len(TAGS)))
    latent = np.zeros((rows, 2))
    shocks = rng.normal(size=(rows, 2)) * math.sqrt(1 - 0.9**2)
    for t in range(1, rows):
        latent[t] = 0.9 * latent[t - 1] + shocks[t]
    if level is not None:
        latent[:, 0] += level
    x = latent @ mix + 0.3 * rng.normal(size=(rows, len(TAGS)))
    if spread is not None:
        x *= spread[:, None]
    return x * SCALE + OFFSET


@pytest.fixture(scope="module")
def train():
    return process(TRAIN_ROWS, seed=1)


@pytest.fixture(scope="module")
def detector(train):
    """The defaults: the half-life is DRIFT_HALF_LIFE_WINDOWS training windows."""
    det = StreamingDetector(TAGS, DetectorSpec()).fit(train)
    rate, _ = K.adaptation_params(HALF_LIFE, DESIGNED_FAR)
    assert det.model["decision_params"][K.D_ADAPT_RATE] == rate
    return det


@pytest.fixture(scope="module")
def fixed(train):
    return StreamingDetector(TAGS, DetectorSpec(drift_half_life=0)).fit(train)


def fresh_run(det: StreamingDetector) -> StreamingDetector:
    det.reset()
    return det


def normal_drift(rows: int, seed: int) -> np.ndarray:
    t = np.arange(rows)
    # 6 sigma of the factor over 20 half-lives, plus a season of 20 half-lives
    level = 6.0 * t / rows + 3.0 * np.sin(2 * np.pi * t / (20 * HALF_LIFE))
    spread = 1.0 + 0.5 * t / rows  # every tag's spread grows by half
    return process(rows, seed, level, spread)


def ramp(rows: int, start: int, duration: int, amplitude: float, end: int | None = None) -> np.ndarray:
    level = np.zeros(rows)
    level[start:start + duration] = np.linspace(0.0, amplitude, duration)
    level[start + duration:end] = amplitude
    return level


def test_half_life_is_one_knob_and_zero_or_inf_disables_it():
    rate, resume = K.adaptation_params(HALF_LIFE, DESIGNED_FAR)
    assert math.isclose((1.0 - rate) ** HALF_LIFE, 0.5, rel_tol=1e-9)
    assert resume == math.ceil(min(K.ADAPT_RESUME_HALF_LIVES * HALF_LIFE,
                                   K.ADAPT_RESUME_ALARM_GAPS / DESIGNED_FAR))
    assert K.adaptation_params(0.0, DESIGNED_FAR) == K.adaptation_params(math.inf, DESIGNED_FAR) == (0, 0)


def test_slow_drift_of_level_spread_and_season_does_not_alarm(detector, fixed):
    x = normal_drift(20 * HALF_LIFE, seed=2)
    assert fixed.model["decision_params"][K.D_ADAPT_RATE] == 0.0
    # The same drift floods fixed baselines with false alarms ...
    assert fresh_run(fixed).run_batch(x).alarm.mean() > 0.1
    # ... and stays within the target (2x the designed rate) with the adaptive ones.
    assert fresh_run(detector).run_batch(x).alarm.mean() <= 2 * DESIGNED_FAR


def test_a_ramp_fault_freezes_learning_is_held_and_leaves_no_trace(detector):
    """A fault ramping in over one half-life is caught; its alarm stops the baselines learning it."""
    rows, start, duration, end = 10 * HALF_LIFE, 2 * HALF_LIFE, HALF_LIFE, 6 * HALF_LIFE
    x = process(rows, seed=3, level=ramp(rows, start, duration, 8.0, end))
    det = fresh_run(detector)
    det.run_batch(x[:start + duration])
    held = det.state["tag_state"][:, K.TS_BASE_MEAN].copy()
    plateau = det.run_batch(x[start + duration:end])
    moved = det.state["tag_state"][:, K.TS_BASE_MEAN] - held
    after = det.run_batch(x[end:])
    fault_size = np.abs(8.0 * np.random.default_rng(99).normal(size=(2, 6))[0] * SCALE)
    assert plateau.alarm.mean() >= 0.95
    assert np.all(np.abs(moved) <= 0.01 * fault_size)  # nothing of the plateau was learnt
    assert after.alarm[-HALF_LIFE:].mean() <= 2 * DESIGNED_FAR  # back to normal: the alarm clears


def test_the_same_ramp_ten_times_slower_is_drift_and_does_not_alarm(detector):
    rows, start = 15 * HALF_LIFE, HALF_LIFE
    x = process(rows, seed=3, level=ramp(rows, start, 10 * HALF_LIFE, 8.0))
    assert fresh_run(detector).run_batch(x).alarm.mean() <= 2 * DESIGNED_FAR


def test_an_unusable_sample_freezes_every_tag_and_a_stale_tag_keeps_its_baseline(detector):
    det = fresh_run(detector)
    x = process(3 * HALF_LIFE, seed=4)
    det.run_batch(x[:HALF_LIFE])  # well past the resume wait of the start
    ds, ts = det.state["decision_state"], det.state["tag_state"]
    ones = np.ones(len(TAGS), np.uint8)
    frame = x[HALF_LIFE].copy()
    frame[2] = math.nan
    before, frozen = ts[:, K.TS_BASE_MEAN].copy(), ds[K.DS_ADAPT_FROZEN]
    det.step(HALF_LIFE, frame, ones, ones)
    assert det.tag_flags[2] & K.FLAG_INVALID
    np.testing.assert_array_equal(ts[:, K.TS_BASE_MEAN], before)
    assert ds[K.DS_ADAPT_FROZEN] == frozen + 1
    # Tag 0 stops reporting (its held value goes stale); the others go on learning.
    fresh = ones.copy()
    fresh[0] = 0
    learnt, start = ds[K.DS_ADAPT_STEPS], ts[:, K.TS_BASE_MEAN].copy()
    for r in range(HALF_LIFE + 1, HALF_LIFE + 50):
        det.step(r, x[r], fresh, ones)
    assert ds[K.DS_ADAPT_STEPS] > learnt
    assert ts[0, K.TS_BASE_MEAN] == start[0]
    assert np.all(ts[1:, K.TS_BASE_MEAN] != start[1:])


def test_live_equals_replay_bit_for_bit_through_drift_faults_and_freezes(train):
    rows = 6_000
    x = process(rows, seed=5, level=ramp(rows, 2_000, 600, 8.0, 3_500),
                spread=np.linspace(1.0, 1.3, rows))
    x[4_000, 3] = math.nan  # an invalid sample: a freeze from a flag
    fresh = np.ones((rows, len(TAGS)), np.uint8)
    fresh[4_500:4_700, 1] = 0  # a stale tag
    good = np.ones_like(fresh)
    times = np.arange(rows, dtype=np.float64)
    det = StreamingDetector(TAGS, DetectorSpec(drift_half_life=500)).fit(train)
    batch = det.run_batch(x, times, fresh, good)
    replayed = det.checkpoint()
    det.reset()
    alarm = np.zeros(rows, bool)
    score = np.zeros(rows)
    for r in range(rows):
        alarm[r] = det.step(times[r], x[r], fresh[r], good[r])
        score[r] = det.score
    assert 0 < batch.alarm.sum() < rows and det.state["decision_state"][K.DS_ADAPT_FROZEN] > 0
    np.testing.assert_array_equal(alarm, batch.alarm)
    np.testing.assert_array_equal(score, batch.score)
    for name, arr in det.checkpoint().items():
        np.testing.assert_array_equal(arr, replayed[name], err_msg=name)
