"""The history recorder (controller.history) and `linesentry fit --history` (controller.history_read)
on real files: hourly segments, a new segment per run, retention by days and by size, a torn gzip
tail read up to the tear, a failing disk (the directory is a file; a file-size limit cuts a write
short), the buffer bound, alarm periods and bad data left out of a refit with the row counts the
fit reports, and a real controller on the simulated plant recording what `fit --history` refits on."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from controller.config import load_config
from controller.history import MB, read_members, segment_hour, segment_name, segments
from controller.history_read import HistoryError, history_training, read_history, select_training
from controller.runtime import Controller
from hil_tests.rig.service_process import closed_ports_config

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_790_000_000.0 - 1_790_000_000.0 % 3600  # the start of a UTC hour
HISTORY = "\n[history]\nflush_s = 1.0\nmax_buffer_rows = {rows}\nmax_mb = {mb}\nkeep_days = {days}\n"


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def controller(tmp_path: Path, *, rows: int = 100_000, mb: float = 2000, days: float = 14,
               extra: str = "", wall: Wall | None = None) -> Controller:
    """A demo-line controller, not started: its recorder is driven by hand."""
    path = closed_ports_config(tmp_path)
    path.write_text(path.read_text() + HISTORY.format(rows=rows, mb=mb, days=days) + extra)
    c = Controller(load_config(path), api_port=0)
    c.pipeline.detector = c.models.initial()
    c.config_path = path
    if wall is not None:
        c.history.wall = wall
    return c


def frames(c: Controller, times, *, alarm=None, bad=None, seed: int = 0) -> np.ndarray:
    """Append one frame per time (random normal-ish values); returns the values appended."""
    rng = np.random.default_rng(seed)
    m = len(c.detector_tags)
    values = 50.0 + rng.standard_normal((len(times), m))
    for k, t in enumerate(times):
        c.line.frame_values[:] = values[k]
        c.line.frame_good[:] = 0 if bad is not None and bad[k] else 1
        c.pipeline.line_alarm = bool(alarm is not None and alarm[k])
        c.history.append(float(t))
    return values


async def flush(c: Controller) -> None:
    await c.history.flush()


def history_dir(c: Controller) -> Path:
    return c.history.directory


# ------------------------------------------------------------------ segments and reading back
async def test_rows_go_to_hourly_segments_and_read_back_exactly(tmp_path):
    c = controller(tmp_path, wall=Wall(T0 + 3550))
    times = T0 + 3550 + np.arange(200) * 0.5  # 100 s across the hour boundary
    values = frames(c, times)
    await flush(c)
    files = segments(history_dir(c))
    assert [segment_hour(f.name) for f in files] == [int(T0 // 3600), int(T0 // 3600) + 1]
    first = gzip.decompress(files[0].read_bytes()).decode().splitlines()
    assert first[0].startswith("# linesentry-history 1 config_hash=" + c.ops.config_hash)
    assert first[1] == "time,line_alarm,alarms,data_ok," + ",".join(c.detector_tags)
    h = read_history(history_dir(c), c.detector_tags, since=T0)
    assert h.segments == 2 and not h.torn
    np.testing.assert_allclose(h.times, times, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h.values, values, rtol=1e-9)
    assert h.data_ok.all() and not h.line_alarm.any()
    assert (h.alarms == 0).all()  # not started: no alarm was active
    status = c.ops.status()["history"]
    assert status["rows_written"] == 200 and status["write_errors"] == 0 and status["bytes_written"] > 0


async def test_a_new_run_opens_a_new_segment_in_the_same_hour(tmp_path):
    wall = Wall(T0 + 10)
    a = controller(tmp_path, wall=wall)
    frames(a, T0 + 10 + np.arange(50))
    await a.history.close()
    b = Controller(a.config, api_port=0)
    b.pipeline.detector = b.models.initial()
    b.history.wall = wall
    frames(b, T0 + 100 + np.arange(50))
    await b.history.close()
    assert len(segments(history_dir(a))) == 2
    assert len(read_history(history_dir(a), a.detector_tags, since=T0).times) == 100


async def test_a_flush_cancelled_at_stop_finishes_before_the_last_flush_writes_and_closes(tmp_path):
    """Was: the task's flush ran its write in a thread that cancelling the task did not stop; the
    last flush at stop wrote the same segment beside it and closed its descriptor under it (a raw
    fd closed twice closes whatever reused the number: the event loop's own socket, once)."""
    c = controller(tmp_path, wall=Wall(T0))
    write, inside, release = c.history.write, threading.Event(), threading.Event()
    busy, overlaps = [], []

    def slow_write(rows):  # the disk stalls in the first write
        overlaps.append(len(busy))
        busy.append(1)
        try:
            if len(overlaps) == 1:
                inside.set()
                assert release.wait(30)
            write(rows)
        finally:
            busy.pop()

    c.history.write = slow_write  # an instance attribute: the recorder's own call goes through it
    frames(c, T0 + np.arange(50))
    task = asyncio.create_task(c.history.flush())
    assert await asyncio.to_thread(inside.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    frames(c, T0 + 50 + np.arange(50), seed=1)
    queued = asyncio.create_task(c.history.flush())  # behind the stalled write, then cancelled too:
    await asyncio.sleep(0)  # its rows, already taken from the buffer, must still be written
    assert not c.history._rows
    queued.cancel()
    frames(c, T0 + 100 + np.arange(50), seed=2)
    closing = asyncio.create_task(c.history.close())
    done, _ = await asyncio.wait({closing}, timeout=0.5)  # time for a second writer to start beside it
    assert not done, "the last flush did not wait for the write in flight"
    release.set()
    await closing
    assert len(overlaps) == 3, "a write handed to the writer (its flush cancelled) never ran"
    assert overlaps == [0, 0, 0], "two writes ran at once on one segment"
    assert c.history._fd is None
    assert len(read_history(history_dir(c), c.detector_tags, since=T0).times) == 150


async def test_a_torn_tail_is_read_up_to_the_tear_and_a_torn_header_skips_the_segment(tmp_path):
    c = controller(tmp_path, wall=Wall(T0))
    for k in range(3):  # three flushes: header + three members
        frames(c, T0 + k * 10 + np.arange(10))
        await flush(c)
    path = segments(history_dir(c))[0]
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # kill -9 in the middle of the last member
    h = read_history(history_dir(c), c.detector_tags, since=T0)
    assert len(h.times) == 20 and h.torn == [path.name]
    path.write_bytes(data + b"\x1f\x8b\x08garbage")  # a power cut: junk after the last member
    assert len(read_history(history_dir(c), c.detector_tags, since=T0).times) == 30
    text, torn = read_members(data[:15])
    assert text == b"" and torn
    (history_dir(c) / segment_name(int(T0 // 3600), 1)).write_bytes(data[:15])  # torn inside the header
    h = read_history(history_dir(c), c.detector_tags, since=T0)
    assert len(h.times) == 30 and len(h.unreadable) == 1


# ------------------------------------------------------------------ retention
async def test_segments_older_than_keep_days_are_deleted_and_other_files_kept(tmp_path):
    wall = Wall(T0 - 3 * 86_400)
    c = controller(tmp_path, days=2, wall=wall)
    frames(c, T0 - 3 * 86_400 + np.arange(10))  # three days ago
    await flush(c)
    wall.t = T0 - 86_400
    frames(c, T0 - 86_400 + np.arange(10))  # yesterday
    await flush(c)
    (history_dir(c) / "notes.txt").write_text("mine")
    wall.t = T0
    frames(c, T0 + np.arange(10))
    await flush(c)
    left = [segment_hour(p.name) for p in segments(history_dir(c))]
    assert left == [int((T0 - 86_400) // 3600), int(T0 // 3600)]
    assert (history_dir(c) / "notes.txt").read_text() == "mine"
    assert c.history.stats.segments_deleted == 1


async def test_the_oldest_segments_go_first_past_max_mb_never_the_open_one(tmp_path):
    wall = Wall(T0)
    c = controller(tmp_path, mb=1, wall=wall)
    d = history_dir(c)
    d.mkdir(parents=True)
    for k in range(5):  # five old 300 kB segments, oldest first
        (d / segment_name(int(T0 // 3600) - 5 + k, k)).write_bytes(os.urandom(300_000))
    frames(c, T0 + np.arange(10))
    await flush(c)
    left = segments(d)
    assert [segment_hour(p.name) for p in left] == [int(T0 // 3600) - 3, int(T0 // 3600) - 2,
                                                    int(T0 // 3600) - 1, int(T0 // 3600)]
    assert sum(p.stat().st_size for p in left) <= MB
    (tmp_path / "b").mkdir()
    big = controller(tmp_path / "b", mb=1, wall=wall)  # the open segment alone over max_mb: kept
    frames(big, T0 + np.arange(30_000) * 0.01)
    await flush(big)
    assert len(segments(history_dir(big))) == 1


# ------------------------------------------------------------------ a failing disk, the buffer bound
async def test_an_unwritable_directory_is_one_log_line_and_counters_then_it_recovers(tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the directory should be")
    c = controller(tmp_path, wall=Wall(T0), extra=f'dir = "{blocker / "history"}"\n')
    caplog.set_level(logging.WARNING, "controller.history")
    for k in range(3):
        frames(c, T0 + k * 10 + np.arange(10))
        await flush(c)  # never raises
    s = c.history.stats
    assert s.write_errors == 3 and s.dropped_failed == 30 and s.rows_written == 0
    assert "NotADirectoryError" in s.last_error
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # once per run of failures
    blocker.unlink()
    frames(c, T0 + 40 + np.arange(10))
    await flush(c)
    assert s.rows_written == 10 and caplog.records[-1].message.startswith("history: writing to")
    assert len(read_history(blocker / "history", c.detector_tags, since=T0).times) == 10


def test_a_write_cut_short_by_a_file_size_limit_leaves_the_segment_readable_to_its_end(tmp_path):
    """RLIMIT_FSIZE fails a write past it as a full disk does (after writing what fits): the member
    cut short is truncated away and the next rows go to a new segment. In a child process: the
    limit is per process."""
    config = closed_ports_config(tmp_path)
    script = f"""
import asyncio, resource, signal, sys
import numpy as np
sys.path.insert(0, {str(ROOT)!r})
from controller.config import load_config
from controller.runtime import Controller
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
c = Controller(load_config({str(config)!r}), api_port=0)
c.pipeline.detector = c.models.initial()
c.history.wall = lambda: {T0}
def put(n, t0):
    for k in range(n):
        c.line.frame_values[:] = np.random.standard_normal(len(c.detector_tags))
        c.line.frame_good[:] = 1
        c.history.append({T0} + t0 + k * 0.01)
put(100, 0)
asyncio.run(c.history.flush())
size = c.history._size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 2000, resource.RLIM_INFINITY))
put(5000, 10)
asyncio.run(c.history.flush())
s = c.history.stats
print(s.write_errors, s.dropped_failed, s.rows_written, size)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    errors, dropped, written, size = map(int, out.stdout.split())
    assert (errors, dropped, written) == (1, 5000, 100)
    cfg = load_config(config)
    (path,) = segments(cfg.history.dir_for(cfg.controller.state_dir))
    assert path.stat().st_size == size  # the torn member was truncated away
    h = read_history(path.parent, cfg.detector_tags(), since=T0)
    assert len(h.times) == 100 and not h.torn


async def test_the_buffer_is_bounded_and_drops_are_counted(tmp_path):
    c = controller(tmp_path, rows=1000, wall=Wall(T0))
    frames(c, T0 + np.arange(1500) * 0.01)
    assert c.ops.status()["history"]["buffered"] == 1000 and c.history.stats.dropped_full == 500
    await flush(c)
    assert c.history.stats.rows_written == 1000


async def test_disabled_records_nothing(tmp_path):
    c = controller(tmp_path, extra="enabled = false\n")
    frames(c, T0 + np.arange(10))
    await c.history.run()  # returns at once
    await c.history.close()
    assert not history_dir(c).exists() and c.history.stats.rows_written == 0


# ------------------------------------------------------------------ choosing the training rows
async def test_alarm_periods_with_their_margin_and_bad_rows_are_left_out_of_the_fit(tmp_path):
    """2000 rows at 0.1 s; a line alarm on rows 1000..1099 (t 100.0..109.9 s), margin 5 s: rows at
    t 95.0..114.9 (200) are left out for the alarm; 50 bad rows elsewhere; 1750 fitted."""
    c = controller(tmp_path, wall=Wall(T0))
    n = 2000
    times = T0 + np.arange(n) * 0.1
    alarm = np.zeros(n, dtype=bool)
    alarm[1000:1100] = True
    bad = np.zeros(n, dtype=bool)
    bad[300:350] = True
    frames(c, times, alarm=alarm, bad=bad)
    await flush(c)
    t = select_training(read_history(history_dir(c), c.detector_tags, since=T0), margin_s=5.0)
    assert (t.rows, t.alarm_rows, t.bad_rows, len(t.times)) == (2000, 200, 50, 1750)
    assert t.gaps == 2 and np.diff(t.times).min() >= 0 and t.times[-1] - t.times[0] < 200 - 24
    model = tmp_path / "refit.npz"
    out = run_cli("fit", str(c.config_path), "--history", "--days", "1", "--margin-s", "5",
                  "--min-rows", "500", "-o", str(model), now=T0 + n * 0.1)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fitting on 1750 of 2000 rows in the last 1 days" in out.stdout
    assert "left out: 200 within 5 s of an alarm, 50 with bad or missing data; 2 gaps closed" in out.stdout
    from models import StreamingDetector

    det = StreamingDetector.load(model, expected_tags=c.detector_tags)
    assert det.summary["rows"] == 1750


async def test_too_few_rows_and_other_tags_are_one_line_refusals(tmp_path, monkeypatch):
    c = controller(tmp_path, wall=Wall(T0))
    frames(c, T0 + np.arange(300) * 0.1)
    await flush(c)
    cfg = c.config
    with pytest.raises(HistoryError, match=r"too few rows .*: 300 of 300 rows .* need at least 4000"):
        history_training(cfg, None, days=1, now=T0 + 60)
    with monkeypatch.context() as m:
        m.setattr("time.time", lambda: T0 + 60)
        out = invoke("fit", str(c.config_path), "--history", "--days", "1", "-o", str(tmp_path / "m.npz"))
    assert out.exit_code == 2 and out.output.count("\n") == 1 and "too few rows" in out.output
    other = tmp_path / "other.toml"  # one more detector tag than the history has
    other.write_text(c.config_path.read_text().replace('"discharge_pressure"]', '"discharge_pressure", '
                                                       '"cycle_count"]', 1))
    with pytest.raises(HistoryError, match=r"recorded with other tags: .*cycle_count are not in it"):
        history_training(load_config(other), history_dir(c), days=1, now=T0 + 60)
    for args in ([], ["data.csv", "--history"]):
        out = invoke("fit", str(c.config_path), *args)
        assert out.exit_code == 2 and "one of them" in out.output
    out = invoke("fit", str(c.config_path), "data.csv", "--days", "3")
    assert out.exit_code == 2 and "go with --history" in out.output


def invoke(*args: str):
    """`linesentry ARGS` in this process (typer's runner: for what needs no clock of its own)."""
    from typer.testing import CliRunner

    from controller.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def run_cli(*args: str, now: float | None = None) -> subprocess.CompletedProcess:
    """`linesentry ARGS` in a child; `now` fixes its wall clock for the --days window."""
    pre = f"import time; time.time = lambda: {now!r}; " if now is not None else ""
    return subprocess.run([sys.executable, "-c", pre + "from controller.cli import app; "
                           "app(prog_name='linesentry')", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "200"})


# ------------------------------------------------------------------ a real controller on the plant
async def test_linesentry_run_on_the_simulated_plant_records_through_a_kill_9_and_fit_refits_on_it(tmp_path):
    """`linesentry run` on the simulated plant (real OPC UA and Modbus servers) writes its frames;
    a kill -9 loses at most the rows of one flush interval and leaves every segment readable; the
    next start writes a new segment; `fit --history` refits on both runs and the model loads."""
    from hil_tests.rig.controller_run import without_model
    from hil_tests.rig.demo_config import demo_text
    from hil_tests.rig.net import free_port, wait_for
    from hil_tests.rig.servers import Rig
    from hil_tests.rig.service_process import ServiceProcess
    from models import StreamingDetector

    async with Rig(opcua_port=0, modbus_port=0) as rig:
        text = demo_text(tmp_path / "state", tmp_path / "none.npz", opcua_endpoint=rig.opcua_endpoint,
                         modbus_port=rig.modbus_port, api_port=free_port())
        path = tmp_path / "line.toml"
        path.write_text(without_model(text) + "\n[history]\nflush_s = 1.0\n")
        service = ServiceProcess(path)
        history = load_config(path).history.dir_for(tmp_path / "state")

        async def written(at_least: int) -> dict:
            def enough():
                s = service.get("/status")["history"]
                return s if s["rows_written"] >= at_least else None
            return await wait_for(lambda: enough(), timeout=30, interval=0.1,
                                  what=f"{at_least} frames written to the history")
        try:
            await asyncio.to_thread(service.start)
            before = await written(300)
            assert await asyncio.to_thread(service.kill9) == -9
            killed = read_history(history, load_config(path).detector_tags(), since=0)
            assert not killed.torn and not killed.unreadable
            assert len(killed.times) >= before["rows_written"]  # nothing written was lost
            await asyncio.to_thread(service.start)
            await written(300)
            assert await asyncio.to_thread(service.stop) == 0
        finally:
            service.close()
    tags = load_config(path).detector_tags()
    h = read_history(history, tags, since=0)
    assert len(segments(history)) == 2 and not h.torn and not h.unreadable
    assert len(h.times) >= len(killed.times) + 300
    model = tmp_path / "refit.npz"
    out = run_cli("fit", str(path), "--history", "--days", "1", "--margin-s", "0", "--min-rows", "300",
                  "-o", str(model))
    assert out.returncode == 0, out.stdout + out.stderr
    kept = h.data_ok & ~(h.line_alarm | (h.alarms > 0))
    assert f"fitting on {kept.sum()} of {len(h.times)} rows" in out.stdout
    det = StreamingDetector.load(model, expected_tags=tags)
    assert det.summary["rows"] == kept.sum()
