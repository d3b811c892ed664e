"""Shared fixtures for the models/ tests: detectors fitted once per session on synthetic data."""

import pytest

from models import DetectorSpec, StreamingDetector
from models.synthetic import TAGS, UNITS, generate

TRAIN_ROWS = 3600


@pytest.fixture(scope="session")
def train_line():
    return generate(TRAIN_ROWS, seed=1)


@pytest.fixture(scope="session")
def fitted(train_line):
    """Default spec, fitted on one hour of normal synthetic data."""
    return StreamingDetector(TAGS, DetectorSpec(), UNITS).fit(train_line.values, train_line.times)


@pytest.fixture(scope="session")
def fitted_stateful(train_line):
    """A spec that exercises every piece of running state: input smoothing, score smoothing,
    k-of-n debounce, hysteresis with clear_n > 1, hard limits, theoretical PCA limits."""
    spec = DetectorSpec(input_alpha=0.3, smooth_alpha=0.5, debounce_k=2, debounce_n=4, clear_n=3,
                        hysteresis=0.7, iforest_trees=30, pca_limits="theoretical",
                        calibration="quantile", target_far=0.01,
                        limits={"oil_temp": _limits(40.0, 58.0)})
    return StreamingDetector(TAGS, spec).fit(train_line.values[:2000], train_line.times[:2000])


def _limits(lo, hi):
    from models import TagLimits

    return TagLimits(lo, hi)
