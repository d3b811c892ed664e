"""Sinks: one registry, a toy sink in one module, independent draining, upgrading an old outbox file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import tomllib
from pathlib import Path

import pytest
from influxdb_client import Point, WritePrecision
from pydantic import ValidationError

from controller.outbox import DB_NAME, SCHEMA_VERSION, Outbox
from controller.records import decode
from controller.sinks import UnknownSink, plugin, register, unregister
from controller.sinks.config import SyncConfig
from controller.sync import SyncWorker
from hil_tests.rig.net import wait_for
from tests.cloud import jsonl_sink
from tests.cloud.helpers import NS, assert_exactly_once, base_end_ns, expected, window_records

WINDOWS, TAGS = 8, 5

# The outbox schema before records (linesentry up to this change), verbatim: rows of line protocol.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns INTEGER NOT NULL,
    n_points INTEGER NOT NULL,
    n_bytes INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_ids TEXT NOT NULL,
    moved_ns INTEGER NOT NULL,
    status INTEGER NOT NULL,
    message TEXT NOT NULL,
    n_points INTEGER NOT NULL,
    body TEXT NOT NULL
);
"""


def old_window_lines(base_ns: int, i: int, n_tags: int) -> list[str]:
    """Window i as the old code committed it: line protocol from `Point`."""
    t = base_ns + i * 10 * NS
    return [Point("linesentry_tag").tag("site", "s").tag("line", "l").tag("controller", "c")
            .tag("tag", f"t{j}").field("mean", float(i * 1000 + j)).field("count", i)
            .time(t, WritePrecision.NS).to_line_protocol() for j in range(n_tags)]


def write_old_outbox(directory: Path, base_ns: int, windows: range) -> list[str]:
    """An outbox file as the previous version left it (with one dead letter); its bodies."""
    bodies = ["\n".join(old_window_lines(base_ns, i, TAGS)) for i in windows]
    with contextlib.closing(sqlite3.connect(directory / DB_NAME)) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
        for body in bodies:
            db.execute("INSERT INTO outbox (created_ns, n_points, n_bytes, body) VALUES (?, ?, ?, ?)",
                       (1, TAGS, len(body.encode()), body))
        db.execute("INSERT INTO dead_letter (outbox_ids, moved_ns, status, message, n_points, body) "
                   "VALUES ('0', 1, 400, 'old', 1, 'bad line')")
        db.commit()
    return bodies


def config(url: str, token_env: str, **kw) -> SyncConfig:
    base = dict(url=url, org="o", bucket="b", token_env=token_env, batch_size=10, timeout_s=2.0,
                backoff_initial_s=0.01, backoff_cap_s=0.05)
    return SyncConfig(**(base | kw))


@pytest.fixture
def jsonl():
    register(jsonl_sink.PLUGIN)
    yield jsonl_sink.PLUGIN
    unregister("jsonl")


def jsonl_config(path: Path) -> SyncConfig:
    return SyncConfig(sink="jsonl", path=path, batch_size=7, backoff_initial_s=0.01, backoff_cap_s=0.05)


def read_jsonl(path: Path) -> list:
    return decode(path.read_text()) if path.exists() else []


def test_the_config_picks_the_sink_by_name_and_validates_its_own_keys(jsonl, tmp_path):
    cfg = SyncConfig.model_validate(tomllib.loads(f'sink = "jsonl"\npath = "{tmp_path}/x.jsonl"\n'))
    assert isinstance(cfg.options, jsonl_sink.JsonlConfig) and cfg.options.path == tmp_path / "x.jsonl"
    assert isinstance(SyncWorker(cfg, None).sink, jsonl_sink.JsonlSink)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="sync.url: unknown key; expected one of: .*path"):
        SyncConfig(sink="jsonl", path="x", url="http://x")  # InfluxDB keys mean nothing to this sink
    names = "available sinks: influxdb, jsonl"
    with pytest.raises(ValidationError, match=f"no sink named 'nope' .sync.sink.; {names}"):
        SyncConfig(sink="nope")
    with pytest.raises(ValueError, match="already registered"):
        register(jsonl)
    # an existing [sync] section without `sink` still means InfluxDB
    old = SyncConfig.model_validate(tomllib.loads('url = "http://h:8086"\norg = "o"\nbucket = "b"\n'))
    assert old.sink == "influxdb" and old.options.url == "http://h:8086"
    assert plugin("influxdb").name == "influxdb"


def test_an_installed_package_adds_a_sink_with_an_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "toy_sinks-1.0.dist-info"  # what `pip install` of a sink package leaves behind
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-sinks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[linesentry.sinks]\njsonl = tests.cloud.jsonl_sink:PLUGIN\n"
                                           "broken = tests.cloud.jsonl_sink:JsonlConfig\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = SyncConfig(sink="jsonl", path=tmp_path / "x.jsonl")  # no register() call
    assert plugin("jsonl") is jsonl_sink.PLUGIN and isinstance(cfg.options, jsonl_sink.JsonlConfig)
    with pytest.raises(UnknownSink, match="'tests.cloud.jsonl_sink:JsonlConfig' .* is not a SinkPlugin"):
        plugin("broken")
    with pytest.raises(ValueError, match="already registered"):
        register(jsonl_sink.PLUGIN)


def test_validating_influxdb_config_imports_no_influxdb_client():
    import subprocess

    code = ("import sys; from controller.sinks.config import SyncConfig; "
            "SyncConfig(url='http://x', org='o', bucket='b'); "
            "assert 'influxdb_client' not in sys.modules, 'influxdb_client imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


async def test_two_sinks_drain_one_outbox_independently(jsonl, tmp_path, proxy, victoria, token_env):
    base = base_end_ns(WINDOWS)
    target = tmp_path / "not-mounted-yet" / "out.jsonl"
    (tmp_path / "ob").mkdir()
    with Outbox(tmp_path / "ob") as ob:
        sent = [window_records(base, i, TAGS) for i in range(WINDOWS)]
        for records in sent:
            assert ob.append(records).ok
        async with SyncWorker(config(proxy.url, token_env), ob) as influx, \
                SyncWorker(jsonl_config(target), ob) as files:
            influx.wake()
            await wait_for(lambda: ob.backlog("influxdb")[0] == 0, 10, what="InfluxDB to drain")
            await wait_for(lambda: files.stats.failed_sends >= 3, 10, what="the file sink to fail")
            # InfluxDB has everything; the file sink still has all of it pending, so the rows stay
            assert ob.backlog("jsonl")[:2] == (WINDOWS, WINDOWS * TAGS) == ob.backlog()[:2]
            assert files.metrics()["backlog_points"] == WINDOWS * TAGS
            assert influx.metrics()["backlog_points"] == 0
            assert files.stats.last_error.startswith("jsonl: ") and files.schedule[-1].reason == "backoff"
            target.parent.mkdir()  # the disk is back
            await wait_for(lambda: ob.backlog()[0] == 0, 10, what="the file sink to catch up")
            late = window_records(base, WINDOWS, TAGS)  # new data reaches both
            assert ob.append(late).ok
            influx.wake()
            files.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 10, what="both sinks to send the new window")
    assert read_jsonl(target) == [r for records in [*sent, late] for r in records]  # in order, once
    assert_exactly_once(victoria, expected(base, range(WINDOWS + 1), TAGS))
    assert sorted(Outbox(tmp_path / "ob").sinks()) == ["influxdb", "jsonl"]  # subscriptions are durable


async def test_an_outbox_from_the_previous_version_loses_nothing(jsonl, tmp_path, proxy, victoria, token_env):
    base = base_end_ns(2 * WINDOWS)
    bodies = write_old_outbox(tmp_path, base, range(WINDOWS))
    with Outbox(tmp_path) as ob:  # upgraded in place
        assert ob.backlog()[:2] == (WINDOWS, WINDOWS * TAGS) == ob.backlog("influxdb")[:2]
        for i in range(WINDOWS, 2 * WINDOWS):  # the new version appends records behind the old rows
            assert ob.append(window_records(base, i, TAGS)).ok
        first = ob.fetch_batch("influxdb", 10**6)  # the old rows come first, as they were written
        assert first.line_protocol == tuple(bodies) and not first.records
        ob.subscribe("jsonl")  # a sink added later gets the records rows, not the line protocol
        assert ob.backlog("jsonl")[:2] == (WINDOWS, WINDOWS * TAGS)
        (old_dl,) = ob.dead_letters()
        assert (old_dl.sink, old_dl.encoding, old_dl.body) == ("influxdb", "lineproto", "bad line")
        async with SyncWorker(config(proxy.url, token_env), ob) as w, \
                SyncWorker(jsonl_config(tmp_path / "out.jsonl"), ob):
            w.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 10, what="old and new rows to drain")
    assert_exactly_once(victoria, expected(base, range(2 * WINDOWS), TAGS))
    assert len(read_jsonl(tmp_path / "out.jsonl")) == WINDOWS * TAGS
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_old_line_protocol_rows_are_sent_as_stored(tmp_path):
    """Point leaves a newline in a string field raw, and U+2028 too: a row is never split into lines."""
    odd = (Point("linesentry_event").tag("source", "a\u2028b").field("message", "x\u2028y\u0085z\nw")
           .time(5, WritePrecision.NS).to_line_protocol())
    write_old_outbox(tmp_path, 0, range(1))
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        db.execute("INSERT INTO outbox (created_ns, n_points, n_bytes, body) VALUES (1, 1, 1, ?)", (odd,))
        db.commit()
    with Outbox(tmp_path) as ob:
        stored = ob.fetch_batch("influxdb", 10**6).line_protocol
    assert stored == ("\n".join(old_window_lines(0, 0, TAGS)), odd)


def test_an_upgrade_interrupted_by_a_crash_leaves_the_old_file_intact(tmp_path):
    bodies = write_old_outbox(tmp_path, 0, range(3))
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        db.execute("CREATE TABLE sinks (x)")  # the migration's CREATE TABLE sinks fails half way
        db.commit()
    with pytest.raises(sqlite3.OperationalError, match="sinks already exists"):
        Outbox(tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        assert [b for (b,) in db.execute("SELECT body FROM outbox ORDER BY id")] == bodies
        assert "encoding" not in [c[1] for c in db.execute("PRAGMA table_info(outbox)")]


def test_a_newer_outbox_schema_is_refused_with_a_clear_message(tmp_path):
    Outbox(tmp_path).close()
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this linesentry"):
        Outbox(tmp_path)


async def test_a_sink_that_raises_something_untyped_is_retried_not_fatal(tmp_path, caplog):
    class Broken:
        name = "broken"
        calls = 0

        async def send(self, records):
            Broken.calls += 1
            if Broken.calls < 3:
                raise KeyError("bug")

        async def close(self):
            pass

    with Outbox(tmp_path) as ob:
        ob.append(window_records(0, 0, 2))
        cfg = SyncConfig(url="http://x", org="o", bucket="b", backoff_initial_s=0.01, backoff_cap_s=0.02)
        async with SyncWorker(cfg, ob, sink=Broken()) as w:
            w.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 5, what="the third attempt to deliver")
        assert Broken.calls == 3 and w.stats.failed_sends == 2 and w.stats.sent_points == 2
        assert "sink broken failed unexpectedly" in caplog.text


async def test_a_send_that_never_answers_times_out_and_is_retried(tmp_path):
    class Hangs:
        name = "hangs"
        calls = 0

        async def send(self, records):
            Hangs.calls += 1
            if Hangs.calls == 1:
                await asyncio.Event().wait()

        async def close(self):
            pass

    with Outbox(tmp_path) as ob:
        ob.append(window_records(0, 0, 2))
        cfg = SyncConfig(url="http://x", org="o", bucket="b", timeout_s=0.1, backoff_initial_s=0.01,
                         backoff_cap_s=0.02)
        async with SyncWorker(cfg, ob, sink=Hangs()) as w:
            w.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 5, what="the retry after the timeout")
        assert w.schedule[0].reason == "backoff" and "no answer within 0.1 s" in w.stats.last_error


async def test_an_outbox_error_at_start_delays_the_subscription_but_loses_nothing(jsonl, tmp_path):
    with Outbox(tmp_path) as ob:
        sent = [window_records(0, i, 3) for i in range(3)]
        for records in sent:
            ob.append(records)
        with contextlib.closing(sqlite3.connect(ob.path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the database (5 s busy timeout)
            w = SyncWorker(jsonl_config(tmp_path / "out.jsonl"), ob)
            await w.start()  # does not raise
            assert ob.sinks() == []
            other.execute("ROLLBACK")
        try:
            await wait_for(lambda: ob.sinks() == ["jsonl"] and ob.backlog()[0] == 0, 10,
                           what="the subscription to be retried and the rows sent")
        finally:
            await w.stop()
    assert read_jsonl(tmp_path / "out.jsonl") == [r for records in sent for r in records]
