"""Fixtures for the cloud-sync tests: a VictoriaMetrics server and a fault proxy per test."""

from __future__ import annotations

import pytest

from hil_tests.rig.fault_proxy import FaultProxy
from hil_tests.rig.victoria import running_victoria


@pytest.fixture
def victoria(tmp_path):
    """A fresh VictoriaMetrics on a free port; FAILS (never skips) if the binary is missing."""
    with running_victoria(tmp_path / "vm-data") as vm:
        yield vm


@pytest.fixture
async def proxy(victoria):
    async with FaultProxy(victoria.url) as p:
        yield p


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("LINESENTRY_TEST_TOKEN", "test-token")
    return "LINESENTRY_TEST_TOKEN"
