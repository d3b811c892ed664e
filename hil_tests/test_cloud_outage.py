"""Cloud outage end to end: simulated plant + the real controller + fault proxy + VictoriaMetrics.

The controller runs on the demo config with a `[sync]` section pointing at a fault-injecting
proxy in front of VictoriaMetrics (hil_tests/rig/victoria.py: dedup on, so a resend overwrites
like in InfluxDB). The summary window is shortened to 1 s so a dozen windows fit in seconds.

What is compared: every line of protocol the controller COMMITTED to its outbox (a spy on
`Outbox.append` records it after a successful commit) against what VictoriaMetrics exports,
counted by series and timestamp: nothing lost, nothing extra, one sample per (series, ms).
Independently of the spy, each tag's `linesentry_tag_*` series must have exactly one sample per
window end, contiguous over the whole run including the outage.
"""


from __future__ import annotations

import asyncio
import math
import time

import pytest

import controller.runtime as runtime
from controller.config import load_config
from controller.outbox import Outbox
from controller.runtime import Controller
from controller.sinks.influxdb import line_protocol
from hil_tests.cloud_support import (
    TOKEN_ENV,
    WINDOW_MS,
    WINDOW_S,
    assert_exactly_once,
    assert_window_coverage,
    cloud_config,
    drain_leftovers,
    expected_samples,
    exported_samples,
    line_ends,
    tag_series,
)
from hil_tests.rig.controller_run import start_controller as start
from hil_tests.rig.controller_run import stop_controller as stop
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.lineproto import parse
from hil_tests.rig.net import wait_for


# ---------------------------------------------------------------------------- the outage test
class CommitSpy:
    """Records the line protocol of every successful `Outbox.append`, with its wall-clock time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commits: list[tuple[float, list[str]]] = []
        original = Outbox.append

        def append(outbox: Outbox, records):
            result = original(outbox, records)
            if result.ok:  # runs in a worker thread; list.append is atomic
                self.commits.append((time.time(), line_protocol(records)))
            return result

        monkeypatch.setattr(Outbox, "append", append)

    def lines(self, since: float = 0.0, until: float = math.inf) -> list[str]:
        return [x for t, lines in list(self.commits) if since <= t < until for x in lines]


async def test_cloud_outage_every_window_and_event_arrives_exactly_once(
        tmp_path, rig, model, proxy, victoria, monkeypatch):
    monkeypatch.setattr(runtime, "SUMMARY_WINDOW_S", WINDOW_S)  # read in Controller.__init__
    monkeypatch.setenv(TOKEN_ENV, "test-token")
    spy = CommitSpy(monkeypatch)
    config = load_config(cloud_config(tmp_path, rig, model, proxy.url))
    controller = Controller(config, api_port=0)
    assert controller.summarizer.window_s == WINDOW_S
    task = await start(controller)
    try:
        sync, outbox = controller.sync, controller.outbox
        assert sync is not None and outbox is not None

        # 1. cloud up: a few windows committed and confirmed
        await wait_for(lambda: len(line_ends(spy.lines())) >= 3 and sync.stats.sent_batches >= 3
                       and outbox.backlog()[0] == 0, 15, what="three windows synced while the cloud is up")

        # 2. cloud down: connections refused, then 503 without Retry-After (backoff), ~12 windows
        await proxy.set("refuse")
        t_cut, failed_at_cut = time.time(), sync.stats.failed_sends
        rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=5.0))
        await wait_for(lambda: len(line_ends(spy.lines(t_cut))) >= 6, 15, what="6 windows during the outage")
        refused = sync.stats.failed_sends - failed_at_cut
        await proxy.set("status", status=503, message="service unavailable")

        def outage_events() -> list[tuple[str, str, str]]:
            return [(p[1]["kind"], p[1]["source"], str(p[2].get("result", p[2].get("state", ""))))
                    for p in map(parse, spy.lines(t_cut)) if p[0] == "linesentry_event"]

        await wait_for(lambda: len(line_ends(spy.lines(t_cut))) >= 12
                       and ("action", "stop_line", "confirmed") in outage_events()
                       and any(k == "alarm" and s == "line_anomaly" for k, s, _ in outage_events()),
                       20, what="12 windows and the jam's alarm + confirmed line stop during the outage")
        backlog_rows, backlog_points, _ = outbox.backlog()
        t_restore = time.time()
        outage_lines = spy.lines(t_cut, t_restore)
        outage_windows = line_ends(outage_lines)
        assert rig.plant.line_stop  # the controller acted on the plant while the cloud was away
        assert refused >= 2 and sync.stats.last_status == 503 and proxy.stats.by_mode.get("status", 0) >= 2
        # everything committed since the cut is still waiting (nothing was confirmed during the outage)
        assert backlog_points >= len(outage_lines) and backlog_rows >= len(outage_windows) >= 12

        # 3. cloud back: the controller's own worker drains the backlog
        await proxy.set("pass")
        await wait_for(lambda: outbox.backlog()[0] == 0 and sync.stats.last_status == 204, 20,
                       what="the backlog to drain after the outage")
        # and one window closed after the outage (shutdown commits none: the open one is saved)
        await wait_for(lambda: line_ends(spy.lines(t_restore)), 5 * WINDOW_S,
                       what="a window after the outage")
        drain_s = time.time() - t_restore
    finally:
        await stop(controller, task)
    left = await drain_leftovers(tmp_path / "state" / "outbox", config.sync)  # the shutdown flush

    # 4. read back and compare with what the controller committed
    committed = spy.lines()
    want = expected_samples(committed)
    got = await asyncio.to_thread(exported_samples, victoria)
    assert_exactly_once(want, got)

    ends = line_ends(committed)
    assert ends == sorted(ends) and len(ends) == len(set(ends)), "a window committed twice or out of order"
    assert all(b - a == WINDOW_MS for a, b in zip(ends, ends[1:], strict=False)), "a gap in the windows"
    assert ends[0] < min(outage_windows) and ends[-1] > max(outage_windows)  # covers the whole run
    assert_window_coverage(got, controller.tag_names, ends)

    events = [x for x in outage_lines if x.startswith("linesentry_event,")]
    event_keys = expected_samples(events)
    assert {k for k in event_keys if k[0] == "linesentry_event_seq"} <= got.keys()
    seqs = sorted(int(parse(x)[2]["seq"]) for x in events)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "events missing from the outbox"
    kinds = {parse(x)[1]["kind"] for x in events}
    assert {"alarm", "action"} <= kinds

    series = tag_series(got)
    full = sum(stamps == ends for stamps in series.values())
    merged = sum(len(v) > 1 for v in want.values())  # events of one series within one ms
    print(f"\nlinesentry_tag_* series: {len(series)}, {full} with a sample at every one of the {len(ends)} "
          f"window ends, the rest (fields without usable samples in some windows) a subset; "
          f"{merged} (series, ms) keys committed more than once")
    print(f"outage: {len(outage_windows)} windows, {len(events)} events ({sorted(kinds)}), "
          f"{len(outage_lines)} points committed while down; backlog {backlog_rows} rows at restore, "
          f"drained in {drain_s:.2f} s; run total {len(ends)} windows x {len(controller.tag_names)} tags, "
          f"{len(committed)} points, {len(want)} (series, ms) samples exported once; "
          f"{left} row(s) left by the shutdown flush sent afterwards")
