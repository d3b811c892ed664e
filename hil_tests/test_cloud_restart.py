"""SIGTERM and restart inside one summary window: the window is committed once, with the samples of
both processes, and nothing in VictoriaMetrics is overwritten (docs/cloud-sync.md, "Restarts").

Before: shutdown committed the open window as a partial one and the next process committed the
same window end again; the cloud kept only the second (the issue: 244 then 626 steps, the 244
lost). Now shutdown saves the open window's accumulators in the state file; the next start
continues the window if it is still open, or commits it whole if it closed meanwhile.

Real controller (in-process, `stop()` is what SIGTERM calls), simulated plant, VictoriaMetrics;
6 s windows so that a restart fits inside one.
"""

from __future__ import annotations

import asyncio
import json
import time

import controller.runtime as runtime
from controller.config import load_config
from controller.outbox import Outbox
from controller.runtime import Controller
from controller.sinks.influxdb import line_protocol
from controller.statedir import STATE_FILE
from hil_tests.cloud_support import TOKEN_ENV, cloud_config, exported_samples
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.lineproto import parse
from hil_tests.rig.net import wait_for

WINDOW_S = 6.0
MS = 1_000_000


class LineCommits:
    """Committed to the outbox: window end (ms) -> [steps, ...] of every `linesentry_line` point,
    and (window end, tag) -> [count, ...] of every `linesentry_tag` point."""

    def __init__(self, monkeypatch) -> None:
        self.steps: dict[int, list[int]] = {}
        self.counts: dict[tuple[int, str], list[int]] = {}
        original = Outbox.append

        def append(outbox, records):
            result = original(outbox, records)
            if result.ok:
                for line in line_protocol(records):
                    name, tags, fields, ts = parse(line)
                    if name == "linesentry_line":
                        self.steps.setdefault(ts // MS, []).append(int(fields["steps"]))
                    elif name == "linesentry_tag":
                        self.counts.setdefault((ts // MS, tags["tag"]), []).append(int(fields["count"]))
            return result

        monkeypatch.setattr(Outbox, "append", append)


async def into_window(lo: float, hi: float) -> int:
    """Wait until the wall clock is lo..hi s into a window; that window's end (ms)."""
    while not lo <= time.time() % WINDOW_S <= hi:
        await asyncio.sleep(0.01)
    return int((time.time() // WINDOW_S + 1) * WINDOW_S * 1000)


def saved_window(state_dir) -> dict:
    return json.loads((state_dir / STATE_FILE).read_text())["summary"]


async def test_a_restart_inside_a_window_commits_it_once_with_both_parts(
        tmp_path, rig, model, victoria, monkeypatch):
    monkeypatch.setattr(runtime, "SUMMARY_WINDOW_S", WINDOW_S)
    monkeypatch.setenv(TOKEN_ENV, "test-token")
    commits = LineCommits(monkeypatch)
    config = load_config(cloud_config(tmp_path, rig, model, victoria.url))
    state = tmp_path / "state"

    first = Controller(config, api_port=0)
    task = await start_controller(first)
    await wait_for(lambda: len(commits.steps) >= 1, 15, what="a first window committed")
    resumed = await into_window(0.5, 1.5)
    await stop_controller(first, task)
    part1 = saved_window(state)
    assert (part1["window"] + 1) * WINDOW_S * 1000 == resumed and part1["_steps"] > 0
    assert resumed not in commits.steps, "the open window was committed at shutdown"

    # restart inside the same window: it continues
    second = Controller(load_config(cloud_config(tmp_path, rig, model, victoria.url)), api_port=0)
    task = await start_controller(second)  # the saved window is taken at start (the constructor does no I/O)
    assert "summary" not in json.loads((state / STATE_FILE).read_text()), "kept for a second resume"
    assert time.time() * 1000 < resumed, "the restart took longer than the rest of the window"
    await wait_for(lambda: resumed in commits.steps, 2 * WINDOW_S, what="the resumed window committed")
    # stop again inside a window, restart only after it has closed: committed whole at start
    closed = await into_window(0.5, 1.5)
    await stop_controller(second, task)
    part2 = saved_window(state)
    while time.time() * 1000 < closed + 200:
        await asyncio.sleep(0.05)
    third = Controller(load_config(cloud_config(tmp_path, rig, model, victoria.url)), api_port=0)
    task = await start_controller(third)
    await wait_for(lambda: closed in commits.steps, 5, what="the saved window committed at start")
    await wait_for(lambda: third.outbox.backlog()[0] == 0, 10, what="the outbox sent")
    await stop_controller(third, task)

    assert commits.steps[resumed] == [commits.steps[resumed][0]], "the resumed window committed twice"
    assert commits.steps[resumed][0] > part1["_steps"], "the second process's steps are missing"
    assert commits.steps[closed] == [part2["_steps"]], "the closed-meanwhile window is not the saved one"
    # per tag too: the resumed window's sample count holds the first process's samples and more
    tags = first.tag_names
    resumed_counts = {t: commits.counts[(resumed, t)] for t in tags}
    assert all(len(c) == 1 and c[0] >= part1["_n"][i] for i, (t, c) in enumerate(resumed_counts.items()))
    assert resumed_counts["motor_current"][0] > part1["_n"][tags.index("motor_current")]
    ends = sorted(commits.steps)
    assert all(len(v) == 1 for v in commits.steps.values()), f"windows committed twice: {commits.steps}"

    got = await asyncio.to_thread(exported_samples, victoria)
    cloud = {ts: v for (name, _, ts), v in got.items() if name == "linesentry_line_steps"}
    assert cloud[resumed] == [float(commits.steps[resumed][0])]  # one sample, both parts: nothing overwritten
    assert cloud[closed] == [float(part2["_steps"])]
    total = commits.steps[resumed][0]
    print(f"\nrestart inside window {resumed}: {part1['_steps']} steps before + "
          f"{total - part1['_steps']} after = {total} committed once; "
          f"window {closed} closed during the downtime: {part2['_steps']} steps committed at the next start; "
          f"{len(ends)} windows, each once")
