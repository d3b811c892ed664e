"""Shared pieces of the cloud end-to-end tests (outage, kill -9): configs, fixtures, exactly-once checks.

The controller runs on the demo config with a `[sync]` section pointing at a fault-injecting
proxy in front of VictoriaMetrics (hil_tests/rig/victoria.py: dedup on, so a resend overwrites
like in InfluxDB), with 1 s summary windows so a dozen windows fit in seconds.
"""


from __future__ import annotations

import math
from pathlib import Path

from controller.outbox import Outbox
from controller.sync import SyncConfig, SyncWorker
from hil_tests.rig.demo_config import demo_text
from hil_tests.rig.lineproto import parse
from hil_tests.rig.net import wait_for
from hil_tests.rig.servers import Rig
from hil_tests.rig.victoria import VictoriaMetrics

TOKEN_ENV = "LINESENTRY_TEST_TOKEN"
WINDOW_S = 1.0
WINDOW_MS = int(WINDOW_S * 1000)
MS = 1_000_000
# fields every linesentry_tag point carries, whatever the samples (the others need usable samples)
ALWAYS_TAG_FIELDS = ("count", "bad_count", "alarm_seconds")

Key = tuple[str, tuple[tuple[str, str], ...], int]  # (metric name, sorted labels, timestamp ms)


# ---------------------------------------------------------------------------- shared helpers
def cloud_config(tmp_path: Path, rig: Rig, model: Path, sync_url: str, *, batch_size: int = 500,
                 api_port: int | None = None) -> Path:
    """The shipped demo config pointed at this rig, a private state dir, `model`, `api_port` (the
    subprocess test; in-process tests pass api_port=0 to Controller) and a
    `[sync]` section for `sync_url` (token from TOKEN_ENV, short backoff so a restored cloud is used
    within 0.5 s)."""
    text = demo_text(tmp_path / "state", model, opcua_endpoint=rig.opcua_endpoint,
                     modbus_port=rig.modbus_port, api_port=api_port)
    assert "[sync]" not in text
    text += (f'\n[sync]\nurl = "{sync_url}"\norg = "demo"\nbucket = "linesentry"\ntoken_env = "{TOKEN_ENV}"\n'
             f"batch_size = {batch_size}\ntimeout_s = 2.0\nbackoff_initial_s = 0.05\nbackoff_cap_s = 0.5\n")
    path = tmp_path / "line.toml"
    path.write_text(text)
    return path


def expected_samples(lines: list[str]) -> dict[Key, list[float]]:
    """What VictoriaMetrics must hold for committed line protocol: one metric `{measurement}_{field}`
    per field, the tags as labels, the timestamp truncated to ms, strings stored as 0 (as VM does).
    A key committed twice (e.g. two events of one series within one ms) has several values."""
    out: dict[Key, list[float]] = {}
    for line in lines:
        name, tags, fields, ts = parse(line)
        labels = tuple(sorted(tags.items()))
        for field, value in fields.items():
            v = 0.0 if isinstance(value, str) else float(value)
            out.setdefault((f"{name}_{field}", labels, ts // MS), []).append(v)
    return out


def exported_samples(vm: VictoriaMetrics) -> dict[Key, list[float]]:
    """Every raw sample VictoriaMetrics stores, by series and ms (restarts it first: see
    VictoriaMetrics.restart; nothing may be sending meanwhile)."""
    vm.restart()
    out: dict[Key, list[float]] = {}
    for s in vm.export():
        m = dict(s["metric"])
        name = m.pop("__name__")
        labels = tuple(sorted(m.items()))
        for ts, v in zip(s["timestamps"], s["values"], strict=True):
            out.setdefault((name, labels, ts), []).append(float(v))
    return out


def assert_exactly_once(want: dict[Key, list[float]], got: dict[Key, list[float]]) -> None:
    """Every committed (series, timestamp) is exported exactly once with a committed value; nothing else."""
    dups = {k: v for k, v in got.items() if len(v) > 1}
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    assert not dups, f"{len(dups)} duplicated samples, e.g. {list(dups.items())[:3]}"
    assert not missing, f"{len(missing)} committed samples lost, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} samples that were never committed, e.g. {extra[:3]}"
    # VM keeps ~14 significant digits; several committed values for one key: any of them may win
    wrong = [(k, got[k][0], want[k]) for k in want
             if not any(math.isclose(got[k][0], v, rel_tol=1e-11, abs_tol=1e-12) for v in want[k])]
    assert not wrong, f"{len(wrong)} samples with a value that was never committed, e.g. {wrong[:3]}"


def line_ends(lines: list[str]) -> list[int]:
    """Window ends (ms) of the committed `linesentry_line` points, in commit order."""
    return [parse(x)[3] // MS for x in lines if x.startswith("linesentry_line,")]


def tag_series(got: dict[Key, list[float]]) -> dict[tuple[str, str], list[int]]:
    """(tag, metric) -> sorted timestamps of every exported linesentry_tag_* sample (with repeats)."""
    out: dict[tuple[str, str], list[int]] = {}
    for (name, labels, ts), values in got.items():
        if name.startswith("linesentry_tag_"):
            out.setdefault((dict(labels)["tag"], name), []).extend([ts] * len(values))
    return {k: sorted(v) for k, v in out.items()}


def assert_window_coverage(got: dict[Key, list[float]], tags: list[str], ends: list[int]) -> None:
    """Each tag: the always-present linesentry_tag_* series have exactly one sample per window end
    (no gaps, no duplicates); the optional ones at most one, and only at window ends."""
    series = tag_series(got)
    assert {t for t, _ in series} == set(tags)
    for tag in tags:
        for f in ALWAYS_TAG_FIELDS:
            assert series.get((tag, f"linesentry_tag_{f}")) == ends, f"{tag} {f}: windows differ"
    for (tag, name), stamps in series.items():
        assert len(stamps) == len(set(stamps)) and set(stamps) <= set(ends), f"{tag} {name}"


async def drain_leftovers(outbox_dir: Path, config: SyncConfig, timeout: float = 15.0) -> int:
    """Send what a stopped controller left in its outbox (it does not drain on shutdown); rows left."""
    with Outbox(outbox_dir) as ob:
        left = ob.backlog()[0]
        async with SyncWorker(config, ob) as worker:
            worker.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, timeout, what="the leftover rows to be sent")
        assert not ob.dead_letters()
    return left


