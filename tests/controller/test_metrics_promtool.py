"""`/metrics` of a real controller on the simulated plant, scraped over HTTP, passes
`promtool check metrics` (Debian's prometheus) with no lint output, and its alarm series are
stable: every alarm has one series per ISA-18.2 state before and after a transition.

promtool used to say `linesentry_plc_read_latency_seconds non-summary metrics should not have
"quantile" label`, and `linesentry_alarms{state}` only had the states some alarm was in.
"""

from __future__ import annotations

import shutil
import subprocess

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.alarms import AlarmState
from controller.runtime import Controller
from hil_tests.rig.controller_run import (
    live,
    make_controller,
    start_controller,
    stop_controller,
    without_model,
)
from hil_tests.rig.servers import Rig

STATES = {str(s) for s in AlarmState}


@pytest.fixture
async def running(tmp_path):
    """The commissioning demo config (no model) on the simulated plant, every PLC delivering."""
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        controller = make_controller(tmp_path, rig, None, without_model)
        task = await start_controller(controller)
        try:
            await live(controller)
            yield controller
        finally:
            await stop_controller(controller, task)


async def scrape(controller: Controller) -> str:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{controller.api_port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def promtool(text: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (make test installs it)"
    return subprocess.run([binary, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=30)


def samples(text: str, name: str) -> dict[tuple, float]:
    """{label values sorted by label name: value} of one family's samples."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def alarm_states(text: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for labels, value in samples(text, "linesentry_alarm_state").items():
        d = dict(labels)
        out.setdefault(d["alarm"], {})[d["state"]] = value
    return out


async def test_a_live_scrape_passes_promtool_without_lint_output(running):
    text = await scrape(running)
    assert 'linesentry_plc_read_latency_p99_seconds{plc="press"}' in text  # the polled PLC has read
    done = promtool(text)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


async def test_the_conventional_families_are_there(running):
    text = await scrape(running)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    build = families["linesentry_build_info"].samples
    assert len(build) == 1 and build[0].value == 1.0
    assert {"version", "python", "numpy", "numba"} <= set(build[0].labels)
    threshold = samples(text, "linesentry_line_threshold")
    assert threshold == {(): running.detector.threshold}
    assert samples(text, "process_resident_memory_bytes")[()] > 0
    assert samples(text, "process_cpu_seconds_total")[()] > 0
    assert "python_info" in families
    assert families["linesentry_plc_reads"].type == "counter"
    assert samples(text, "linesentry_plc_reads_total")[(("plc", "press"),)] > 0


async def test_every_alarm_state_series_exists_before_and_after_a_transition(running):
    names = {a["name"] for a in running.alarm_list()}
    before = await scrape(running)
    per_alarm = alarm_states(before)
    assert set(per_alarm) == names and all(set(s) == STATES for s in per_alarm.values())
    assert all(sum(s.values()) == 1 for s in per_alarm.values())  # each alarm in exactly one state
    counts = {dict(k)["state"]: v for k, v in samples(before, "linesentry_alarms").items()}
    assert set(counts) == STATES and counts["SHELVED"] == 0 and sum(counts.values()) == len(names)

    shelve = f"http://127.0.0.1:{running.api_port}/api/v1/alarms/oil_temp_high/shelve"
    async with aiohttp.ClientSession() as http, \
            http.post(shelve, json={"user": "ann", "seconds": 600, "reason": "sensor swap"},
                      headers={"Authorization": f"Bearer {running.token}"}) as r:
        assert r.status == 200, await r.text()

    after = await scrape(running)
    per_alarm = alarm_states(after)
    assert set(per_alarm) == names and all(set(s) == STATES for s in per_alarm.values())
    assert per_alarm["oil_temp_high"]["SHELVED"] == 1 and per_alarm["oil_temp_high"]["NORMAL"] == 0
    counts = {dict(k)["state"]: v for k, v in samples(after, "linesentry_alarms").items()}
    assert set(counts) == STATES and counts["SHELVED"] == 1
    assert promtool(after).returncode == 0


def test_build_info_without_package_metadata_says_unknown(monkeypatch):
    """A source checkout run without `pip install`: every scrape raised PackageNotFoundError (500)."""
    from importlib.metadata import PackageNotFoundError

    from controller import metrics

    def missing(name):
        if name == "linesentry":
            raise PackageNotFoundError(name)
        return "1.0"

    monkeypatch.setattr(metrics, "dist_version", missing)
    metrics.build_labels.cache_clear()
    try:
        (sample,) = metrics.build_info().samples
        assert sample.labels["version"] == "unknown" and sample.labels["numpy"] == "1.0"
    finally:
        metrics.build_labels.cache_clear()
