"""The history recorder: every detector frame the running controller steps, kept on disk for
`linesentry fit --history` (controller.history_read), so a model can be refitted on the last days
of normal operation without a separate `linesentry record` session.

One row per driver batch (the cadence the detector sees live): wall time, the detector's line
alarm, how many alarms are annunciated active, whether every detector tag was good, and every
detector tag's value. Rows go into hourly segment files under `[history] dir`
(default <state_dir>/history), one file per UTC hour and run:

    history-<YYYYmmddTHH>-<opened, unix ms>.csv.gz

A segment is gzip'd CSV, written as a sequence of complete gzip members (concatenated members are
one valid gzip stream: `zcat` reads it): the first member is the header

    # linesentry-history 1 config_hash=<sha256> model=<id or -> tags=<n>
    time,line_alarm,alarms,data_ok,<tag>,...

and each flush appends one member of rows. Why gzip CSV and not numpy .npz chunks: a segment is
appended to in place (one file per hour, not one per flush), any tool reads it, and a torn tail
(kill -9 or a power cut in the middle of a write) costs only its last member: the reader stops at
the tear and keeps everything before it. A new run always opens a new segment, never appends to
one a crash may have torn.

The hot path only appends a tuple to a list (`append`, ~0.3 µs: no formatting, no numpy
reduction, no I/O); the list is bounded (`max_buffer_rows`: beyond, rows are dropped and counted).
The recorder's own task (`run`) takes the list every `flush_s` (or once it is half full) and
formats, compresses and writes it in the recorder's own writer thread, so neither the hot path nor
the housekeeping round ever waits for the disk: a stalled disk stalls only this task. One thread, not
asyncio.to_thread: a flush cancelled at stop leaves its write running, and the last flush must queue
behind it, not write the same segment (and close its descriptor) beside it. A daemon thread: a write
stalled for good must not keep the process from exiting (the default executor's threads are joined
at exit). A failing disk
(full, read-only, the directory a file) is one log line per run of failures, counters in
/status and rows dropped, never a crash; after a failed write the next rows go to a new segment.
Retention runs after each flush: segments whose hour is older than `keep_days` are deleted, then
the oldest while the directory holds more than `max_mb` (the segment being written is never
deleted). Files that are not segments are never touched.
"""

from __future__ import annotations

import asyncio
import calendar
import concurrent.futures
import contextlib
import csv
import io
import logging
import os
import queue
import re
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from controller.config.history import HistorySection
    from controller.linestate import LineState
    from controller.pipeline import StepPipeline

log = logging.getLogger(__name__)

FORMAT = "linesentry-history 1"
COLUMNS = ("time", "line_alarm", "alarms", "data_ok")  # then one column per detector tag
SEGMENT = re.compile(r"^history-(\d{8}T\d{2})-(\d+)\.csv\.gz$")
MB = 1_000_000
TAKE_EVERY_S = 1.0  # the recorder task looks at the buffer this often (a flush every flush_s)
CLOSE_TIMEOUT_S = 5.0  # the last flush at stop waits at most this for the disk


def segment_name(hour: int, opened_ms: int) -> str:
    """`history-<UTC hour>-<ms>.csv.gz` for the hour (unix s // 3600) and the opening time.

    >>> segment_name(0, 42)
    'history-19700101T00-42.csv.gz'
    """
    return f"history-{time.strftime('%Y%m%dT%H', time.gmtime(hour * 3600))}-{opened_ms}.csv.gz"


def segment_hour(name: str) -> int | None:
    """The UTC hour (unix s // 3600) a segment's rows lie in, None when `name` is not a segment."""
    m = SEGMENT.match(name)
    if m is None:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H")) // 3600


def segments(directory: Path) -> list[Path]:
    """The segment files in `directory`, oldest first (by name: hour, then opening time)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(m.group(1), int(m.group(2)), n) for n in names if (m := SEGMENT.match(n))]
    return [Path(directory) / n for *_, n in sorted(found)]


def header_text(tags: list[str], config_hash: str, model_id: str | None) -> str:
    out = io.StringIO()
    out.write(f"# {FORMAT} config_hash={config_hash or '-'} model={model_id or '-'} tags={len(tags)}\n")
    csv.writer(out, lineterminator="\n").writerow([*COLUMNS, *tags])
    return out.getvalue()


class Writer(concurrent.futures.Executor):
    """One daemon thread running the submitted calls in order (see the module docstring). A call runs
    even when the flush awaiting it was cancelled (at stop): its rows were taken from the buffer."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._work, name="history-writer", daemon=True).start()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((done, fn, args, kwargs))
        return done

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)  # the thread ends after the calls queued before

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            done, fn, args, kwargs = job
            result, error = None, None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting flush
                error = exc
            if done.set_running_or_notify_cancel():  # False: nobody awaits it any more
                done.set_exception(error) if error is not None else done.set_result(result)


@dataclass
class HistoryStats:
    """What /status shows of the recorder (plain counters)."""

    enabled: bool = True
    dir: str = ""
    rows_written: int = 0
    bytes_written: int = 0
    buffered: int = 0
    dropped_full: int = 0  # rows dropped because the buffer was full (the disk too slow or stalled)
    dropped_failed: int = 0  # rows lost with a write that failed
    write_errors: int = 0
    segments_deleted: int = 0
    segment: str = ""  # the file being written
    last_error: str = ""
    last_flush_s: float = 0.0  # how long the last flush (format, compress, write) took


class HistoryRecorder:
    """Detector frames -> hourly gzip CSV segments. `append` is the hot path's; `run` the task."""

    def __init__(self, config: HistorySection, directory: Path, *, line: LineState, pipeline: StepPipeline,
                 config_hash: str = "", wall=time.time) -> None:
        self.config, self.directory = config, Path(directory)
        self.enabled = config.enabled
        self.line, self.pipeline = line, pipeline
        self.tags = list(pipeline.detector_tags)
        self.config_hash = config_hash
        self.wall = wall
        self.stats = HistoryStats(enabled=self.enabled, dir=str(self.directory))
        self._rows: list[tuple] = []
        self._cap = config.max_buffer_rows
        self._fd: int | None = None
        self._hour: int | None = None
        self._path: Path | None = None
        self._size = 0  # bytes of whole members in the open segment
        self._failing = False
        self._last_take = time.monotonic()
        self._writer: Writer | None = None  # made at the first flush
        if not self.enabled:
            self.append = self._off  # type: ignore[method-assign]  # the hot path pays one call, no more
        width = len(self.tags)
        self._row_format = "%.6f,%d,%d,%d" + ",%.10g" * width + "\n"

    # ------------------------------------------------------------------ the hot path
    def append(self, wall: float) -> None:
        """The frame the pipeline just stepped (values, good mask, line alarm, active alarms)."""
        rows = self._rows
        if len(rows) >= self._cap:
            self.stats.dropped_full += 1
            return
        p, line = self.pipeline, self.line
        rows.append((wall, p.line_alarm, len(p.alarms.active()), line.frame_values.tobytes(),
                     line.frame_good.tobytes()))

    def _off(self, wall: float) -> None:
        pass

    # ------------------------------------------------------------------ the task
    async def run(self) -> None:
        """Take the buffer every flush_s (sooner when half full) and write it in a thread."""
        if not self.enabled:
            return
        while True:
            await asyncio.sleep(min(TAKE_EVERY_S, self.config.flush_s))
            due = time.monotonic() - self._last_take >= self.config.flush_s
            if due or len(self._rows) >= self._cap // 2:
                await self.flush()

    async def flush(self) -> None:
        """Write what is buffered now (in a thread); never raises."""
        rows = self.take()
        if rows:
            if self._writer is None:
                self._writer = Writer()
            try:
                await asyncio.get_running_loop().run_in_executor(self._writer, self.write, rows)
            except Exception as exc:  # a bug: logged, the recorder goes on
                log.exception("history: flush failed: %s: %s", type(exc).__name__, exc)

    async def _last_flush(self) -> None:
        """The rows buffered now, then the segment closed, both in the writer thread: after every
        write still in it (the task's, cancelled at stop while its thread wrote)."""
        await self.flush()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._close_segment)

    def take(self) -> list[tuple]:
        rows, self._rows = self._rows, []
        self._last_take = time.monotonic()
        self.stats.buffered = 0
        return rows

    async def close(self) -> None:
        """At stop: the last rows (bounded wait for the disk), then the segment is closed."""
        if not self.enabled:
            return
        try:
            await asyncio.wait_for(self._last_flush(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.error("history: the last flush did not finish within %g s (a stalled disk?): its rows "
                      "may be lost", CLOSE_TIMEOUT_S)
            return  # the writer thread is kept: a next start's flushes queue behind the stalled write
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    def status(self) -> dict:
        self.stats.buffered = len(self._rows)
        return asdict(self.stats)

    # ------------------------------------------------------------------ the writer thread
    def write(self, rows: list[tuple]) -> None:
        """Format, compress and append `rows` to their hourly segments, then apply retention.
        A failing disk is counted and logged once per run of failures; the rows are lost."""
        t0 = time.perf_counter()
        try:
            for hour, text in self.format(rows):
                self._append(hour, text)
        except OSError as exc:
            self._close_segment(torn=True)
            self.stats.write_errors += 1
            self.stats.dropped_failed += len(rows)
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            if not self._failing:
                log.error("history: cannot write to %s: %s; frames are dropped (counted in /status "
                          "history) until it works again", self.directory, self.stats.last_error)
            self._failing = True
            return
        if self._failing:
            log.warning("history: writing to %s again", self.directory)
            self._failing = False
        self.stats.rows_written += len(rows)
        self.stats.last_flush_s = time.perf_counter() - t0
        try:
            self.retain()
        except OSError as exc:  # retention is retried after the next flush
            self.stats.last_error = f"retention: {type(exc).__name__}: {exc}"

    def format(self, rows: list[tuple]) -> list[tuple[int, bytes]]:
        """(UTC hour, CSV text) per hour the rows fall in, in row order."""
        m = len(self.tags)
        values = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.float64).reshape(len(rows), m)
        good = np.frombuffer(b"".join(r[4] for r in rows), dtype=np.uint8).reshape(len(rows), m)
        ok = (good.all(axis=1) & np.isfinite(values).all(axis=1)).tolist()
        fmt = self._row_format
        out: list[tuple[int, list[str]]] = []
        for (wall, alarm, active, *_), k, vals in zip(rows, ok, values.tolist(), strict=True):
            hour = int(wall // 3600)
            if not out or out[-1][0] != hour:
                out.append((hour, []))
            out[-1][1].append(fmt % (wall, alarm, active, k, *vals))
        return [(hour, "".join(lines).encode()) for hour, lines in out]

    def _append(self, hour: int, text: bytes) -> None:
        if self._fd is None or hour != self._hour:
            self._open(hour)
        self._write_all(gzip_member(text))

    def _write_all(self, data: bytes) -> None:
        """One whole member or none: a write cut short (a full disk) is truncated away again, so
        the segment stays readable to its end (the next rows go to a new segment all the same)."""
        fd, start, view = self._fd, self._size, memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self._size = start + len(data)
        self.stats.bytes_written += len(data)

    def _open(self, hour: int) -> None:
        self._close_segment()
        self.directory.mkdir(parents=True, exist_ok=True)
        opened = int(self.wall() * 1000)
        while True:
            path = self.directory / segment_name(hour, opened)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
                break
            except FileExistsError:
                opened += 1
        self._fd, self._hour, self._path, self._size = fd, hour, path, 0
        self.stats.segment = str(path)
        self._write_all(gzip_member(header_text(self.tags, self.config_hash, self._model_id()).encode()))

    def _model_id(self) -> str | None:
        det = self.pipeline.detector
        return det.metadata.get("checksum") if det is not None else None

    def _close_segment(self, *, torn: bool = False) -> None:
        """Close the segment; after a failed write (`torn`) the next rows go to a new one."""
        fd, self._fd, self._hour = self._fd, None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if torn:
            self.stats.segment = ""

    def retain(self) -> None:
        """Delete segments older than keep_days, then the oldest while over max_mb."""
        files = segments(self.directory)
        cutoff = self.wall() - self.config.keep_days * 86_400
        keep: list[tuple[Path, int]] = []
        for path in files:
            if path == self._path and self._fd is not None:
                continue
            hour = segment_hour(path.name)
            if hour is not None and (hour + 1) * 3600 < cutoff:
                self._delete(path)
                continue
            with contextlib.suppress(FileNotFoundError):
                keep.append((path, path.stat().st_size))
        total = sum(size for _, size in keep)
        if self._fd is not None:
            total += self._size
        limit = self.config.max_mb * MB
        for path, size in keep:
            if total <= limit:
                break
            self._delete(path)
            total -= size

    def _delete(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            self.stats.segments_deleted += 1


def gzip_member(data: bytes, level: int = 6) -> bytes:
    """One complete gzip member (mtime 0: the same rows give the same bytes)."""
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def read_members(data: bytes) -> tuple[bytes, bool]:
    """The text of every complete gzip member in `data`, and whether a torn tail was left out
    (a member cut short or garbage after the last complete one: a write that never finished)."""
    out: list[bytes] = []
    while data:
        d = zlib.decompressobj(31)
        try:
            text = d.decompress(data)
        except zlib.error:
            return b"".join(out), True
        if not d.eof:
            return b"".join(out), True
        out.append(text)
        data = d.unused_data
    return b"".join(out), False
