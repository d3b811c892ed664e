"""Fixtures shared by the controller tests that run a real controller on the demo config."""

from pathlib import Path

import pytest

from hil_tests.rig.demo_config import DEMO_CONFIG


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    """A demo-line model fitted on one simulated minute: the operator paths need a model, not a good
    one (tests of detection quality fit their own on ten minutes, as hil_tests/conftest.py does)."""
    from controller.config import load_config
    from hil_tests.rig.training import simulated_normal
    from models import StreamingDetector

    config = load_config(DEMO_CONFIG)
    times, rows = simulated_normal(config.detector_tags(), seconds=60.0)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    StreamingDetector(config.detector_tags(), config.detector_spec()).fit(rows, times).save(path)
    return path
