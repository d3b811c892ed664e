"""Reading the recorded history back (controller.history) and choosing the rows a refit may use:
`linesentry fit CONFIG --history [DIR] --days N`.

A row is used when its data was good (every detector tag GOOD and finite) and no alarm was
active within +-margin of it: the detector's line alarm or any annunciated alarm. The margin
(default `default_margin`: 60 s, or twice the longest on+off delay of [[alarms]] when longer)
keeps the onset before an alarm fired and the settling after it cleared out of "normal".

Gaps between the rows kept (alarm periods, bad data, restarts, the controller off) are closed: the
first row after a gap gets the time of the row before it, which the detector treats as a repeated
time stamp (no rate, no flat time: models.baseline.monotone_times), so neither a rate of change nor
a flatline run is measured across an hour the line was down. A torn segment tail (a kill -9 in
the middle of a write) is read up to the tear.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from controller.errors import BadRequest
from controller.history import COLUMNS, FORMAT, read_members, segment_hour, segments

if TYPE_CHECKING:
    from controller.config import LineConfig

MIN_MARGIN_S = 60.0
GAP_MIN_S = 1.0  # a step longer than this and than GAP_FACTOR x the median interval is a gap
GAP_FACTOR = 10.0


class HistoryError(BadRequest):
    """The history cannot give training rows (no segments, other tags, too few rows): one line."""


@dataclass
class History:
    """Rows of every segment read, in recorded order; values in the requested tag order."""

    times: np.ndarray
    values: np.ndarray
    line_alarm: np.ndarray
    alarms: np.ndarray
    data_ok: np.ndarray
    segments: int = 0
    torn: list[str] = field(default_factory=list)  # segments read up to a torn tail
    unreadable: list[str] = field(default_factory=list)  # no readable header
    other_tags: list[str] = field(default_factory=list)  # recorded without some of the tags


@dataclass
class Training:
    """The rows a refit uses and why the others were left out."""

    times: np.ndarray
    values: np.ndarray
    rows: int  # rows in the time range
    alarm_rows: int  # left out: an alarm within +-margin
    bad_rows: int  # left out (of the rest): a detector tag not good, or not finite
    gaps: int  # gaps closed between the rows kept
    margin_s: float


def default_margin(config: LineConfig) -> float:
    """60 s, or twice the longest on_delay_s + off_delay_s of the [[alarms]] when that is longer."""
    delays = [a.on_delay_s + a.off_delay_s for a in config.alarms]
    return max(MIN_MARGIN_S, 2.0 * max(delays, default=0.0))


def default_min_rows(config: LineConfig) -> int:
    """Enough rows that the calibration holdout holds 1/target_far rows (one exceedance at the
    designed false-alarm rate): 4000 with the defaults (target_far 0.001, holdout 0.25)."""
    from models.detector import MIN_FIT_ROWS

    spec = config.detector_spec()
    return max(MIN_FIT_ROWS, math.ceil(1.0 / (spec.target_far * spec.holdout_fraction)))


def read_history(directory: Path, tags: list[str], *, since: float, until: float = math.inf) -> History:
    """Every row with since <= time < until from the segments in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HistoryError(f"no history directory {directory} (is [history] enabled? the controller "
                           "writes <state_dir>/history by default)")
    parts: list[np.ndarray] = []
    h = History(*(np.zeros(0) for _ in range(5)))
    wanted = [p for p in segments(directory) if _may_hold(p, since, until)]
    recorded: set[tuple[str, ...]] = set()
    for path in wanted:
        try:
            data = path.read_bytes()
        except OSError as exc:
            h.unreadable.append(f"{path.name} ({exc.strerror})")
            continue
        text, torn = read_members(data)
        head, body = _split_header(text)
        if head is None:
            h.unreadable.append(path.name)
            continue
        recorded.add(tuple(head))
        if missing := [t for t in tags if t not in head]:
            h.other_tags.append(f"{path.name} (no {', '.join(missing)})")
            continue
        rows = _parse(body, len(head))
        cols = [0, 1, 2, 3, *(head.index(t) for t in tags)]
        rows = rows[:, cols]
        rows = rows[(rows[:, 0] >= since) & (rows[:, 0] < until)]
        if torn:
            h.torn.append(path.name)
        h.segments += 1
        parts.append(rows)
    if not wanted:
        raise HistoryError(f"no history segments in {directory} for the time asked (the controller "
                           "writes one per hour while [history] is enabled)")
    if not parts:
        if recorded:
            seen = sorted({t for head in recorded for t in head[len(COLUMNS):]})
            raise HistoryError(f"the history in {directory} was recorded with other tags: the config's "
                               f"detector tags {', '.join(t for t in tags if t not in seen) or '?'} are "
                               f"not in it (recorded: {', '.join(seen)})")
        raise HistoryError(f"no readable history segment in {directory} ({len(h.unreadable)} unreadable)")
    allrows = np.concatenate(parts) if parts else np.zeros((0, 4 + len(tags)))
    h.times, h.values = allrows[:, 0], allrows[:, 4:]
    h.line_alarm, h.alarms = allrows[:, 1] != 0, allrows[:, 2].astype(np.int64)
    h.data_ok = allrows[:, 3] != 0
    return h


def select_training(h: History, margin_s: float) -> Training:
    """The rows with good data and no alarm within +-margin_s, gaps closed (module docstring)."""
    alarm = h.line_alarm | (h.alarms > 0)
    near = np.zeros(len(h.times), dtype=bool)
    if alarm.any():
        at = np.sort(h.times[alarm])
        k = np.searchsorted(at, h.times)
        before = np.abs(h.times - at[np.clip(k - 1, 0, len(at) - 1)])
        after = np.abs(at[np.clip(k, 0, len(at) - 1)] - h.times)
        near = np.minimum(before, after) <= margin_s
    keep = ~near & h.data_ok
    times, gaps = close_gaps(h.times[keep])
    return Training(times=times, values=h.values[keep], rows=len(h.times), alarm_rows=int(near.sum()),
                    bad_rows=int((~near & ~h.data_ok).sum()), gaps=gaps, margin_s=margin_s)


def close_gaps(times: np.ndarray) -> tuple[np.ndarray, int]:
    """`times` with every gap shut: the row after it takes the time of the row before it.

    >>> close_gaps(np.array([0.0, 0.25, 0.5, 50.5, 50.75]))
    (array([0.  , 0.25, 0.5 , 0.5 , 0.75]), 1)
    """
    if len(times) < 3:
        return times, 0
    dt = np.diff(times)
    forward = dt[dt > 0]
    limit = max(GAP_MIN_S, GAP_FACTOR * float(np.median(forward))) if forward.size else math.inf
    gap = np.where(dt > limit, dt, 0.0)
    shift = np.concatenate([[0.0], np.cumsum(gap)])
    return times - shift, int((gap > 0).sum())


def _may_hold(path: Path, since: float, until: float) -> bool:
    hour = segment_hour(path.name)
    return hour is not None and (hour + 1) * 3600 > since and hour * 3600 < until


def _split_header(text: bytes) -> tuple[list[str] | None, bytes]:
    """(the column names, the rows' text) of a segment; None when its header is not ours."""
    first = text.find(b"\n")
    second = text.find(b"\n", first + 1)
    if first < 0 or second < 0 or not text.startswith(f"# {FORMAT} ".encode()):
        return None, b""
    try:
        head = next(csv.reader(io.StringIO(text[first + 1:second].decode())))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        return None, b""
    if tuple(head[:len(COLUMNS)]) != COLUMNS:
        return None, b""
    return head, text[second + 1:]


def _parse(body: bytes, width: int) -> np.ndarray:
    """The rows' numbers, fast (one numpy parse); line by line when that does not add up."""
    if not body.strip():
        return np.zeros((0, width))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flat = np.fromstring(body.strip().replace(b"\n", b",").decode(), sep=",")  # noqa: NPY201
    if flat.size % width == 0 and flat.size // width == body.strip().count(b"\n") + 1:
        return flat.reshape(-1, width)
    out = []
    for line in body.decode(errors="replace").splitlines():
        try:
            row = [float(v) for v in line.split(",")]
        except ValueError:
            continue
        if len(row) == width:
            out.append(row)
    return np.asarray(out, dtype=np.float64).reshape(len(out), width)


def history_training(config: LineConfig, directory: str | Path | None, *, days: float | None = None,
                     margin_s: float | None = None, min_rows: int | None = None,
                     now: float | None = None) -> tuple[Training, list[str]]:
    """`linesentry fit --history`: the training rows of the last `days` (default: [history] keep_days)
    and the lines that say what was read and left out; HistoryError when too few rows remain."""
    import time

    directory = Path(directory) if directory else config.history.dir_for(config.controller.state_dir)
    days = config.history.keep_days if days is None else days
    if not 0 < days <= 36_500:
        raise HistoryError(f"--days {days:g}: expected a number of days > 0")
    margin = default_margin(config) if margin_s is None else margin_s
    if not 0 <= margin <= 86_400:
        raise HistoryError(f"--margin-s {margin:g}: expected 0..86400 seconds")
    need = default_min_rows(config) if min_rows is None else min_rows
    now = time.time() if now is None else now
    h = read_history(directory, config.detector_tags(), since=now - days * 86_400)
    t = select_training(h, margin)
    notes = []
    for what, names in (("read up to a torn tail (a write cut short)", h.torn),
                        ("unreadable, skipped", h.unreadable),
                        ("recorded without some detector tags, skipped", h.other_tags)):
        if names:
            notes.append(f"{len(names)} segment(s) {what}: {', '.join(names[:3])}"
                         + (", ..." if len(names) > 3 else ""))
    why = (f"{len(t.times)} of {t.rows} rows in the last {days:g} days of {directory} ({h.segments} "
           f"segments); left out: {t.alarm_rows} within {margin:g} s of an alarm, {t.bad_rows} with bad or "
           "missing data")
    if len(t.times) < need:
        raise HistoryError(f"too few rows of normal operation to fit: {why}; need at least {need} "
                           "(--days longer, --margin-s shorter or --min-rows)")
    notes.append(f"fitting on {why}" + (f"; {t.gaps} gaps closed" if t.gaps else ""))
    return t, notes
