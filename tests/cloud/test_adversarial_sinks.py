"""A hostile network, server, disk and operator against the outbox and the sinks.

Each test is one way the cloud path was broken (it failed before its fix): a server that says
"Retry-After: 0", a window larger than the server accepts, a row that does not decode, an
acknowledgement that cannot be written, a lone surrogate in an event, a broken sink package,
a `[sync]` key that slipped past the sink's model, a sink that hangs on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from controller.outbox import Outbox
from controller.points import Identity
from controller.records import Record, decode
from controller.sinks import UnknownSink, plugin, register, unregister
from controller.sinks.config import SyncConfig
from controller.sinks.influxdb import InfluxDBConfig, line_protocol
from controller.sync import SyncWorker
from hil_tests.rig.net import free_port, wait_for
from tests.cloud import jsonl_sink
from tests.cloud.helpers import NS, assert_exactly_once, base_end_ns, expected, window_records

REPO = Path(__file__).resolve().parents[2]


def influx(url: str, token_env: str, **kw) -> SyncConfig:
    base = dict(url=url, org="o", bucket="b", token_env=token_env, batch_size=5000, timeout_s=5.0,
                backoff_initial_s=0.01, backoff_cap_s=0.05)
    return SyncConfig(**(base | kw))


@pytest.fixture
async def limited(victoria):
    """A reverse proxy in front of VictoriaMetrics that, like nginx's default client_max_body_size,
    answers 413 to a body over 1 MiB (aiohttp's default client_max_size)."""
    async with aiohttp.ClientSession() as session:
        async def forward(request: web.Request) -> web.Response:
            body = await request.read()  # raises 413 past client_max_size
            async with session.post(victoria.url + request.path_qs, data=body,
                                    headers={"Content-Type": "text/plain"}) as r:
                return web.Response(status=r.status, body=await r.read())

        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/api/v2/write", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


@pytest.fixture
def jsonl():
    register(jsonl_sink.PLUGIN)
    yield jsonl_sink.PLUGIN
    unregister("jsonl")


def jsonl_config(path: Path, **kw) -> SyncConfig:
    return SyncConfig(**({"sink": "jsonl", "path": path, "batch_size": 100, "backoff_initial_s": 0.2,
                          "backoff_cap_s": 0.4} | kw))


async def test_retry_after_zero_is_not_a_licence_to_hammer(tmp_path, proxy, victoria, token_env):
    """A proxy answering 429 with "Retry-After: 0" got the batch rendered and resent in a tight loop
    (hundreds of requests a second, a core burnt on line protocol); now at most one per backoff_initial_s."""
    base = base_end_ns(2)
    with Outbox(tmp_path) as ob:
        ob.append(window_records(base, 0, 3))
        await proxy.set("status", status=429, retry_after="0")
        cfg = influx(proxy.url, token_env, backoff_initial_s=0.25, backoff_cap_s=0.5)
        async with SyncWorker(cfg, ob) as w:
            started = time.monotonic()
            w.wake()
            await wait_for(lambda: len(w.schedule) >= 3, 10, what="three throttled sends")
            elapsed, hammered, waits = time.monotonic() - started, proxy.stats.requests, len(w.schedule)
            await proxy.set("pass")
            await wait_for(lambda: ob.backlog()[0] == 0, 10, what="the batch after the throttling")
    # one send per recorded wait (plus the one in flight), and two waits of >= 0.25 s between the first three
    assert hammered <= waits + 1, f"{hammered} requests for {waits} waits against Retry-After: 0"
    assert elapsed >= 2 * 0.25, f"three sends in {elapsed:.2f} s against Retry-After: 0"
    assert all(x.delay_s >= 0.25 and x.retry_after_s == 0.0 for x in w.schedule)
    assert_exactly_once(victoria, expected(base, [0], 3))


def wide_window(base_ns: int, i: int, n_tags: int) -> list[Record]:
    """One window whose line protocol is > 1 MiB: many tags, each with a long unit."""
    t = base_ns + i * 10 * NS
    tags = {"site": "s", "line": "l", "controller": "c"}
    return [Record("linesentry_tag", tags | {"tag": f"t{j}", "unit": "u" * 300},
                   {"mean": float(i * 1000 + j), "count": i}, t, "window") for j in range(n_tags)]


async def test_a_window_larger_than_the_server_accepts_is_split_not_retried_forever(
        tmp_path, limited, victoria, token_env):
    """A proxy refusing bodies over 1 MiB with 413 (nginx's default). A window of 4,000 tags is
    one outbox row of ~1.4 MiB: the worker halved a budget that could not go below one row and
    retried that row forever, and nothing behind it was ever sent. Now the row is sent in pieces."""
    base = base_end_ns(3)
    wide = wide_window(base, 0, 4000)
    assert len("\n".join(line_protocol(wide)).encode()) > 1 << 20
    with Outbox(tmp_path) as ob:
        ob.append(wide)
        ob.append(window_records(base, 1, 4000)[:5])  # a normal window behind it
        async with SyncWorker(influx(limited, token_env, timeout_s=20.0), ob) as w:
            w.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 60, what="the wide window to go in pieces")
    assert w.stats.failed_sends >= 1 and w.stats.sent_points == 4005
    assert_exactly_once(victoria, expected(base, [0], 4000) | expected(base, [1], 5))


async def test_a_record_too_large_even_alone_is_dead_lettered_not_retried_forever(
        tmp_path, limited, victoria, token_env):
    base = base_end_ns(2)
    huge = Record("linesentry_event", {"site": "s", "kind": "driver", "source": "plc1"},
                  {"message": "x" * (2 << 20), "seq": 1}, base, "event")
    with Outbox(tmp_path) as ob:
        ob.append([huge])
        ob.append(window_records(base, 1, 3))
        async with SyncWorker(influx(limited, token_env), ob) as w:
            w.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 20, what="the huge event to be dead-lettered")
        (dl,) = ob.dead_letters()
    assert (dl.status, dl.n_points, dl.sink) == (413, 1, "influxdb") and dl.message.startswith("too large")
    assert decode(dl.body) == [huge]
    assert_exactly_once(victoria, expected(base, [1], 3))


async def test_a_row_that_does_not_decode_is_dead_lettered_and_the_rows_behind_it_flow(jsonl, tmp_path):
    """A row no `encode` wrote (a newer version's record kind) raised in fetch_batch on every round:
    the sink was stalled for good behind it, logging "sync round failed" forever."""
    out = tmp_path / "out.jsonl"
    sent = [window_records(0, i, 2) for i in range(3)]
    with Outbox(tmp_path) as ob:
        ob.subscribe("jsonl")
        ob.append(sent[0])
        future = '["state","linesentry_shadow",5,{},{"x":1}]'
        with contextlib.closing(sqlite3.connect(ob.path)) as db:
            row = db.execute("INSERT INTO outbox (created_ns, n_points, n_bytes, body, encoding) "
                             "VALUES (1, 1, ?, ?, 'records')", (len(future), future)).lastrowid
            db.execute("INSERT INTO pending (sink, row_id) VALUES ('jsonl', ?)", (row,))
            db.commit()
        ob.append(sent[1])
        ob.append(sent[2])
    with Outbox(tmp_path) as ob:
        async with SyncWorker(jsonl_config(out), ob) as w:
            w.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 10, what="the rows behind the bad one")
        (dl,) = ob.dead_letters()
    assert dl.body == future and dl.sink == "jsonl" and "unreadable row" in dl.message
    assert decode(out.read_text()) == [r for records in sent for r in records]


async def test_an_ack_that_cannot_be_written_backs_off_instead_of_resending_in_a_loop(jsonl, tmp_path):
    """With the outbox unable to record the acknowledgement (a full disk), the worker resent the same
    batch as fast as the sink took it; now it backs off between resends."""
    out = tmp_path / "out.jsonl"
    with Outbox(tmp_path) as ob:
        ob.subscribe("jsonl")
        ob.append(window_records(0, 0, 2))
        with contextlib.closing(sqlite3.connect(ob.path)) as db:  # every delete fails, like a full disk
            db.execute("CREATE TRIGGER full BEFORE DELETE ON pending "
                       "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
            db.commit()
        async with SyncWorker(jsonl_config(out), ob) as w:
            started = time.monotonic()
            w.wake()
            await wait_for(lambda: w.stats.delete_failures >= 3, 10, what="three failed acks")
            elapsed, failures = time.monotonic() - started, w.stats.delete_failures
            resent = len(out.read_text().splitlines()) // 2  # two records per send
            with contextlib.closing(sqlite3.connect(ob.path)) as db:
                db.execute("DROP TRIGGER full")
                db.commit()
            await wait_for(lambda: ob.backlog()[0] == 0, 10, what="the ack once the disk has room")
    # one send per failed ack (plus the one in flight), and the worker really slept its scheduled
    # backoffs (jittered: half to all of 0.2 s, then of 0.4 s) between the first three sends
    assert resent <= failures + 1, f"the same batch sent {resent} times for {failures} failed acks"
    waits = list(w.schedule)[:2]
    assert [x.reason for x in waits] == ["ack", "ack"]
    assert all(x.delay_s >= 0.5 * 0.2 for x in waits), waits
    assert elapsed >= sum(x.delay_s for x in waits), f"three sends in {elapsed:.2f} s, backoffs {waits}"


def test_a_lone_surrogate_in_an_event_does_not_crash_the_append(tmp_path):
    """A str with a lone surrogate (surrogateescape-decoded bytes, broken UTF-16 from a device)
    made `append` raise UnicodeEncodeError into the housekeeping loop."""
    odd = Record("linesentry_event", {"site": "s", "source": "plc\udcff"}, {"message": "bad \ud800 text"},
                 1, "event")
    with Outbox(tmp_path) as ob:
        ob.subscribe("x")
        result = ob.append([odd, *window_records(0, 0, 1)])
        assert result.ok, result.error
        (got, window) = ob.fetch_batch("x", 100).records
    assert got.tags["source"] == "plc\ufffd" and got.fields["message"] == "bad \ufffd text"
    assert window == window_records(0, 0, 1)[0]
    "\n".join(line_protocol([got])).encode()  # and the InfluxDB sink can send it


def broken_package(site: Path) -> None:
    """An installed sink package whose entry point does not import (what a half-upgraded venv leaves)."""
    dist = site / "bad_sinks-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-sinks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[linesentry.sinks]\nbrokenep = no_such_module_xyz:PLUGIN\n"
                                           "jsonl = tests.cloud.jsonl_sink:PLUGIN\n")


def test_a_sink_package_that_fails_to_import_is_one_line_and_spares_the_other_sinks(tmp_path, monkeypatch):
    broken_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(UnknownSink, match=r"sink plugin 'brokenep' \(no_such_module_xyz:PLUGIN.* failed to "
                                          r"load: ModuleNotFoundError"):
        plugin("brokenep")
    with pytest.raises(ValidationError, match="failed to load"):
        SyncConfig(sink="brokenep")
    assert plugin("jsonl") is jsonl_sink.PLUGIN and plugin("influxdb").name == "influxdb"  # unaffected


def test_validate_names_a_broken_sink_package_in_one_line(tmp_path):
    broken_package(tmp_path / "site")
    src = (REPO / "configs" / "secure_opcua.toml").read_text()
    assert "\n[sync]\n" in src
    cfg = tmp_path / "line.toml"
    cfg.write_text(src.replace("\n[sync]\n", '\n[sync]\nsink = "brokenep"\n'))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path / 'site'}:{REPO}", "HOME": str(tmp_path)}
    linesentry = str(Path(sys.executable).with_name("linesentry"))
    run = subprocess.run([linesentry, "validate", str(cfg)], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode != 0
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1 and "failed to load" in lines[0] and "internal error" not in lines[0], lines
    assert "Traceback" not in run.stderr


def test_options_is_no_way_around_the_sink_model_and_a_dump_keeps_the_sink_keys():
    """`[sync] options = {...}` skipped the InfluxDB model entirely (validate passed, the first send
    failed an assert); and model_dump() dropped url/org/bucket (the field was dumped as a bare BaseModel)."""
    with pytest.raises(ValidationError, match="sync.url must start with http"):
        SyncConfig.model_validate({"options": {"url": "ftp://x", "org": "o", "bucket": "b"}})
    with pytest.raises(ValidationError, match="sync.options: not a key"):
        SyncConfig.model_validate({"options": {"url": "http://x"}, "org": "o", "bucket": "b"})
    cfg = SyncConfig(url="http://h:8086", org="o", bucket="b")
    dumped = cfg.model_dump()
    assert dumped["options"] == {"url": "http://h:8086", "org": "o", "bucket": "b",
                                 "token_env": "LINESENTRY_INFLUX_TOKEN"}
    again = SyncConfig.model_validate(dumped)
    assert isinstance(again.options, InfluxDBConfig) and again == cfg


async def test_a_sink_whose_close_hangs_does_not_hang_shutdown(tmp_path):
    class HangsOnClose:
        name = "hangs_on_close"

        async def send(self, records):
            pass

        async def close(self):
            await asyncio.Event().wait()

    with Outbox(tmp_path) as ob:
        cfg = SyncConfig(url="http://x", org="o", bucket="b", timeout_s=0.3)
        w = SyncWorker(cfg, ob, sink=HangsOnClose())
        await w.start()
        t0 = time.monotonic()
        await asyncio.wait_for(w.stop(), 5)  # before: waited forever
    assert time.monotonic() - t0 < 2


def test_at_the_cap_the_drop_event_names_the_sink_that_lost_the_rows(tmp_path):
    """One sink dead for good (or removed from the config) holds every row until the cap drops them;
    the drop event went to the healthy sink's cloud saying "dropped N points", which read as its own
    loss. It now names the sinks that had the rows pending."""
    with Outbox(tmp_path, max_bytes=3000, identity=Identity("s", "l", "c")) as ob:
        ob.subscribe("healthy")
        ob.subscribe("dead")
        events = []
        for i in range(20):
            ob.append(window_records(0, i, 5))
            while (batch := ob.fetch_batch("healthy", 10**6)) is not None:  # healthy keeps up
                events += [r for r in batch.records if r.measurement == "linesentry_event"]
                assert ob.ack(batch)
        assert ob.stats.dropped_points_cap > 0 and ob.backlog("healthy")[0] == 0
    assert events and all(e.fields["lost_for"] == "dead" for e in events)
    assert all(e.fields["message"].endswith("oldest points not yet sent to dead") for e in events)


DISK_FULL = """
import resource, signal, sys, os
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
from controller.outbox import Outbox
from controller.points import Identity
from tests.cloud.helpers import window_records
ob = Outbox(sys.argv[1])
ob.subscribe("a")
for i in range(3):
    assert ob.append(window_records(0, i, 50)).ok
files = [ob.path, ob.path.with_name(ob.path.name + "-wal")]
resource.setrlimit(resource.RLIMIT_FSIZE, (max(os.path.getsize(f) for f in files), resource.RLIM_INFINITY))
print("full", [ob.append(window_records(0, i, 50)).ok for i in range(3, 8)])
batch = ob.fetch_batch("a", 10**6)
print("fetch", len(batch.ids), "ack", ob.ack(batch))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print("room", ob.append(window_records(0, 9, 50)).ok, ob.backlog("a")[:2])
ob.close()
ob = Outbox(sys.argv[1])
print("reopened", ob.backlog("a")[:2], [r.fields["count"] for r in ob.fetch_batch("a", 10**6).records][::50])
"""


def test_a_full_disk_fails_appends_and_acks_without_raising_and_heals_when_room_is_back(tmp_path):
    """A real write limit (RLIMIT_FSIZE, EFBIG on every write past it), in a subprocess."""
    run = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[0] == "full [False, False, False, False, False]"
    assert out[1] == "fetch 3 ack False"  # the rows stay pending: resent later, never lost
    assert out[2] == "room True (4, 200)"
    assert out[3] == "reopened (4, 200) [0, 1, 2, 9]"
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("table, message", [
    ({"url": "http://x", "org": "o", "bucket": "b", "frobnicate": 1},
     "sync.frobnicate: unknown key; expected one of: backoff_cap_s, .*, token_env, url$"),
    ({"url": "http://x"}, 'sync.org: missing; add org = "..." to .sync.; sync.bucket: missing'),
    ({"url": 5, "org": "o", "bucket": "b"},
     'sync.url: expected a string, got 5; write it in quotes: url = "..."'),
])
def test_a_bad_sink_key_is_one_line_with_the_toml_fix(table, message):
    """The sink's keys were reported in pydantic's words ("Extra inputs are not permitted", "Field
    required") while the worker's keys got TOML hints."""
    with pytest.raises(ValidationError) as info:
        SyncConfig.model_validate(table)
    (error,) = info.value.errors()
    assert "\n" not in error["msg"]
    assert re.search(message, error["msg"].removeprefix("Value error, ")), error["msg"]


def test_two_openers_upgrading_one_old_outbox_at_once_both_succeed(tmp_path):
    """Both read schema 0, both wait for the write lock; the second re-ran the first's ALTER TABLE
    and failed with "duplicate column name: encoding" (a controller starting while a tool, or a
    previous instance, still has the file open)."""
    from tests.cloud.test_sinks import write_old_outbox

    bodies = write_old_outbox(tmp_path, 0, range(3))
    results: list = []

    def open_outbox() -> None:
        try:
            with Outbox(tmp_path) as ob:
                results.append(ob.backlog("influxdb")[0])
        except Exception as exc:  # noqa: BLE001 -- the failure is what the test reports
            results.append(repr(exc))

    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")  # both openers read the version, then queue for the lock
        threads = [threading.Thread(target=open_outbox) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        holder.execute("ROLLBACK")
        for t in threads:
            t.join(30)
    assert results == [len(bodies), len(bodies)]


def test_two_packages_registering_one_sink_name_are_refused_not_picked_by_path_order(tmp_path, monkeypatch):
    for pkg, value in (("one", "tests.cloud.jsonl_sink:PLUGIN"), ("two", "elsewhere.jsonl:PLUGIN")):
        dist = tmp_path / f"{pkg}_sinks-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}-sinks\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[linesentry.sinks]\njsonl = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownSink, match="two installed packages register the sink 'jsonl' .*uninstall one"):
        plugin("jsonl")
    assert plugin("influxdb").name == "influxdb"


async def test_a_send_cut_short_by_stop_leaves_its_rows_pending(tmp_path):
    """Acknowledged only after send returned: a stop (or a kill) during the send keeps every row."""
    started = asyncio.Event()

    class Slow:
        name = "slow"

        async def send(self, records):
            started.set()
            await asyncio.get_running_loop().create_future()  # an answer that never comes

        async def close(self):
            pass

    with Outbox(tmp_path) as ob:
        ob.append(window_records(0, 0, 3))
        w = SyncWorker(SyncConfig(url="http://x", org="o", bucket="b", timeout_s=600), ob, sink=Slow())
        await w.start()
        w.wake()
        await asyncio.wait_for(started.wait(), 5)
        await w.stop()
    with Outbox(tmp_path) as ob:
        assert ob.backlog("slow")[:2] == (1, 3) and w.stats.sent_points == 0


def test_unsubscribing_a_removed_sink_frees_what_only_it_held(tmp_path):
    with Outbox(tmp_path, identity=Identity("s", "l", "c")) as ob:
        ob.subscribe("kept")
        ob.subscribe("removed")
        for i in range(3):
            ob.append(window_records(0, i, 4))
        while (batch := ob.fetch_batch("kept", 10**6)) is not None:
            ob.ack(batch)
        assert ob.backlog()[:2] == (3, 12)  # held for "removed" alone
        assert ob.unsubscribe("removed")[:2] == (3, 12) and ob.backlog("removed") == (0, 0, 0)
    with Outbox(tmp_path) as ob:
        assert ob.sinks() == ["kept"]
        (event,) = ob.fetch_batch("kept", 10**6).records  # the stored rows are gone, the event is for "kept"
        assert ob.backlog()[:2] == (1, 1)
    assert event.fields["sink"] == "removed" and event.fields["dropped_points"] == 12
    assert "sink removed is no longer configured" in event.fields["message"]


async def test_a_sink_removed_from_the_config_stops_holding_rows_at_the_next_start(jsonl, tmp_path,
                                                                                   monkeypatch):
    from controller.config import load_config
    from controller.runtime import Controller
    from drivers import registry
    from tests.drivers.toy import PLUGIN as TOY
    from tests.drivers.toy.test_toy_line import line_config

    monkeypatch.setenv("LINESENTRY_TEST_TOY_TOKEN", "t")
    path = line_config(tmp_path, free_port())
    path.write_text(path.read_text() + f'\n[sync]\nsink = "jsonl"\npath = "{tmp_path / "out.jsonl"}"\n')
    (tmp_path / "state" / "outbox").mkdir(parents=True)
    with Outbox(tmp_path / "state" / "outbox") as ob:  # the previous config sent to InfluxDB
        ob.subscribe("influxdb")
        ob.append(window_records(0, 0, 3))
    registry.register(TOY)
    try:
        async with Controller(load_config(path), api_port=0) as controller:
            assert controller.outbox.sinks() == ["jsonl"]
    finally:
        registry.unregister(TOY.name)


async def test_a_sink_that_swallows_cancellation_does_not_hang_shutdown(tmp_path, caplog):
    release = asyncio.Event()

    class Stubborn:
        name = "stubborn"

        async def send(self, records):
            while not release.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await release.wait()

        async def close(self):
            pass

    with Outbox(tmp_path) as ob:
        ob.append(window_records(0, 0, 2))
        w = SyncWorker(SyncConfig(url="http://x", org="o", bucket="b", timeout_s=0.3), ob, sink=Stubborn())
        await w.start()
        w.wake()
        await asyncio.sleep(0.2)
        await asyncio.wait_for(w.stop(), 5)  # before: waited for the task forever
        assert "ignored cancellation" in caplog.text
        release.set()
        await asyncio.sleep(0.1)


def test_a_sink_whose_create_raises_is_one_line_naming_it(tmp_path):
    from controller.sinks import SinkError, SinkPlugin

    def create(config, sync):
        raise KeyError("bug in the plugin")

    register(SinkPlugin("exploding", jsonl_sink.JsonlConfig, create))
    try:
        with pytest.raises(SinkError, match="sink 'exploding' could not be created: KeyError: 'bug in the"):
            SyncWorker(SyncConfig(sink="exploding", path=tmp_path / "x"), None)  # type: ignore[arg-type]
    finally:
        unregister("exploding")


HOSTILE_TAGS = ["a,b", "a=b", "a b", 'q"uote', "back\\slash", "u\u2028v\u0085w", "ü€😀", "#hash", " lead",
                "=", ",", "trail\\", "nl\nx", "tab\tx", "cr\rx"]
# Line protocol cannot carry these in a tag value: Point writes a newline, tab or CR as a backslash
# escape InfluxDB stores literally, and pads a trailing backslash with a space. Each still gets its
# own series (nothing merges), just under that spelling.
AS_STORED = {"trail\\": "trail ", "nl\nx": "nl\\nx", "tab\tx": "tab\\tx", "cr\rx": "cr\\rx"}


def export_raw(vm, match: str) -> list[dict]:
    """VictoriaMetrics' export, split on newlines only (it leaves U+2028 raw inside JSON strings)."""
    import json
    import urllib.parse
    import urllib.request

    vm.export('{__name__="flush"}')  # flushes first
    query = urllib.parse.urlencode({"match[]": match, "start": "0", "end": str(int(time.time()) + 3600)})
    with urllib.request.urlopen(f"{vm.url}/api/v1/export?{query}", timeout=30) as r:
        return [json.loads(line) for line in r.read().decode().split("\n") if line.strip()]


async def test_hostile_tag_values_and_extreme_numbers_reach_the_server_each_in_its_own_series(
        tmp_path, victoria, token_env):
    base = base_end_ns(2)
    records = [Record("linesentry_tag", {"site": "s", "tag": tag}, {"mean": float(i), "count": i}, base,
                      "window") for i, tag in enumerate(HOSTILE_TAGS)]
    records.append(Record("linesentry_tag", {"site": "s", "tag": "big"}, {"mean": 1e300, "count": 0}, base,
                          "window"))
    with Outbox(tmp_path) as ob:
        ob.append(records)
        async with SyncWorker(influx(victoria.url, token_env), ob) as w:
            w.wake()
            await wait_for(lambda: ob.backlog()[0] == 0, 10, what="the hostile window")
    got = {s["metric"]["tag"]: [float(v) for v in s["values"]]  # VM writes 1e300 as 1000...0
           for s in export_raw(victoria, '{__name__="linesentry_tag_mean"}')}
    want = {AS_STORED.get(tag, tag): [float(i)] for i, tag in enumerate(HOSTILE_TAGS)} | {"big": [1e300]}
    assert got == want


def test_an_integer_beyond_64_bits_is_refused_like_nan_and_left_out_of_events():
    """2**70 became `1180591620717411303424i`, which InfluxDB refuses with a 400 for the whole request:
    every good record in that batch went to the dead letters with it."""
    from controller.points import EventClock, event_point

    with pytest.raises(ValueError, match="beyond a 64-bit integer"):
        Record("m", {}, {"count": 2**70}, 1, "window")
    Record("m", {}, {"a": 2**63 - 1, "b": -(2**63)}, 1, "window")  # the limits themselves are fine
    event = event_point(Identity("s", "l", "c"), EventClock(), "driver", "plc1", "odd counter",
                        raw=2**64, ok=7)
    assert "raw" not in event.fields and event.fields["ok"] == 7
