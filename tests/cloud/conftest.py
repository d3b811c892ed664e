"""Fixtures for the cloud-sync tests: a VictoriaMetrics server and a fault proxy per test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cloud.fault_proxy import FaultProxy
from tests.cloud.victoria import running_victoria


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
                   what: str = "condition") -> Any:
    """Poll `predicate` until true or fail after `timeout` seconds (tests never sleep blindly)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


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
