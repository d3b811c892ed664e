"""Training-window statistics (models.baseline)."""

import numpy as np
import pytest

from models.baseline import longest_flat_run, robust_scale, shifted_tags
from models.fitting import ewma
from models.synthetic import TAGS, generate


def test_shifted_tags_flags_a_level_shift_inside_the_window_and_nothing_on_normal_data():
    leaky = generate(1200, seed=1, faults=[("leak", 700, 1200)])
    assert set(shifted_tags(leaky.values, TAGS)) == {"pump_flow", "discharge_pressure"}
    for seed in (1, 2, 3):
        assert shifted_tags(generate(1200, seed=seed).values, TAGS) == []


def test_ewma_matches_the_recursive_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    expected = np.empty_like(x)
    expected[0] = x[0]
    for t in range(1, 50):
        expected[t] = 0.2 * x[t] + 0.8 * expected[t - 1]
    np.testing.assert_allclose(ewma(x, 0.2), expected, rtol=1e-12)
    assert ewma(x, 1.0) is x


def test_robust_scale_falls_back_for_quantised_and_constant_columns():
    x = np.column_stack([np.r_[np.full(90, 32.0), np.full(10, 31.0)],  # IQR 0, std > 0
                         np.full(100, 5.0)])  # constant
    center, scale = robust_scale(x)
    assert center.tolist() == [32.0, 5.0]
    assert scale[0] == pytest.approx(x[:, 0].std())
    assert scale[1] > 0


def test_longest_flat_run_measures_time_not_samples():
    times = np.array([0.0, 1.0, 5.0, 6.0, 7.0])
    values = np.array([1.0, 1.0, 1.0, 2.0, 2.0])
    assert longest_flat_run(values, times, eps=0.0) == 5.0
