"""Shared fixtures for driver tests: every server runs on 127.0.0.1 on a free port."""

import pytest

from hil_tests.rig.net import free_port
from hil_tests.rig.net import wait_for as wait_for  # the one deadline wait, used by the driver tests


@pytest.fixture
def port() -> int:
    return free_port()
