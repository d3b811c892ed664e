"""Offline replay of a recorded CSV through a fitted model (`linesentry replay`).

The CSV is the format `linesentry record` writes: a header `time,<tag>,...` then
one numeric row per sample. Rows go through `StreamingDetector.run_batch`, the
same kernel the service steps live, in chunks so a long recording shows progress.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.detector import BatchResult, StreamingDetector

CHUNK_ROWS = 20_000
PLOT_EXTRA_HINT = "install the plot extra: pip install 'linesentry[plot]'"


class ReplayError(ValueError):
    """Unusable input (unreadable file, wrong header, non-numeric row); the message is one line."""


def read_csv(path: Path, tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(times, values) of `tags` (in that order) from a `time,<tag>,...` CSV."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ReplayError(f"{path}: not a CSV file ({type(exc).__name__})") from None
    if not rows or rows[0][:1] != ["time"]:
        raise ReplayError(f"{path}: expected a header 'time,<tag>,...' (as written by `linesentry record`)")
    header = rows[0]
    missing = [t for t in tags if t not in header]
    if missing:
        raise ReplayError(f"{path}: no column for detector tag(s) {', '.join(missing)}")
    cols = [header.index(t) for t in tags]
    try:
        data = np.array([[float(r[0])] + [float(r[c]) for c in cols] for r in rows[1:] if r],
                        dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise ReplayError(f"{path}: a row is not numeric ({exc})") from None
    if data.size == 0:
        raise ReplayError(f"{path}: no data rows")
    return data[:, 0], data[:, 1:]


def replay(det: StreamingDetector, times: np.ndarray, values: np.ndarray, chunk_rows: int = CHUNK_ROWS,
           progress: Callable[[int], None] | None = None) -> BatchResult:
    """Score every row from a fresh detector state; `progress(rows_done)` after each chunk."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    det.reset()
    parts: list[BatchResult] = []
    for start in range(0, len(times), chunk_rows):
        stop = min(start + chunk_rows, len(times))
        parts.append(det.run_batch(values[start:stop], times[start:stop]))
        if progress is not None:
            progress(stop - start)
    return BatchResult(score=np.concatenate([p.score for p in parts]),
                       alarm=np.concatenate([p.alarm for p in parts]),
                       components=np.concatenate([p.components for p in parts]),
                       tag_flags=np.concatenate([p.tag_flags for p in parts]),
                       tag_scores=np.concatenate([p.tag_scores for p in parts]))


def intervals(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as (first row, last row + 1)."""
    m = np.asarray(mask, dtype=bool).astype(np.int8)
    edges = np.diff(np.concatenate(([0], m, [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


@dataclass
class Summary:
    rows: int
    alarm_rows: int
    alarm_intervals: int
    max_score: float
    max_score_time: float
    flagged_rows: dict[str, int]  # per tag: rows with any flag bit set


def summarize(times: np.ndarray, result: BatchResult, tags: list[str]) -> Summary:
    i = int(np.argmax(result.score))
    return Summary(rows=len(times), alarm_rows=int(result.alarm.sum()),
                   alarm_intervals=len(intervals(result.alarm)), max_score=float(result.score[i]),
                   max_score_time=float(times[i]),
                   flagged_rows={t: int((result.tag_flags[:, k] != 0).sum()) for k, t in enumerate(tags)})


def write_scores(path: Path, times: np.ndarray, result: BatchResult, tags: list[str]) -> None:
    """`time,score,alarm,<tag>_flags,...`: flags are the kernel's FLAG_* bitmask per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "score", "alarm", *(f"{t}_flags" for t in tags)])
        for k in range(len(times)):
            w.writerow([repr(float(times[k])), f"{result.score[k]:.6g}", int(result.alarm[k]),
                        *result.tag_flags[k].tolist()])


def plot(path: Path, times: np.ndarray, values: np.ndarray, tags: list[str], result: BatchResult,
         threshold: float, units: dict[str, str] | None = None) -> None:
    """One stacked subplot per tag, then the line score against the threshold.

    Line-alarm intervals are shaded red on every subplot; rows where a tag's own
    flags are set are shaded orange on that tag's subplot. Raises ImportError
    (with the install hint) when matplotlib is missing.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(PLOT_EXTRA_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    units = units or {}
    t = times - times[0]
    alarms = intervals(result.alarm)
    n = len(tags) + 1
    fig, axes = plt.subplots(n, 1, sharex=True, figsize=(11, 1.6 * n + 1), squeeze=False)
    axes = axes[:, 0]

    def shade(ax, spans, color, alpha):
        for a, b in spans:
            ax.axvspan(t[a], t[min(b, len(t) - 1)], color=color, alpha=alpha, lw=0)

    for k, tag in enumerate(tags):
        ax = axes[k]
        ax.plot(t, values[:, k], lw=0.7, color="tab:blue")
        shade(ax, intervals(result.tag_flags[:, k] != 0), "tab:orange", 0.3)
        shade(ax, alarms, "tab:red", 0.15)
        ax.set_ylabel(f"{tag}\n[{units[tag]}]" if tag in units else tag, fontsize=8)
        ax.tick_params(labelsize=7)
    ax = axes[-1]
    ax.plot(t, result.score, lw=0.8, color="black", label="line score")
    ax.axhline(threshold, color="tab:red", ls="--", lw=0.8, label=f"threshold {threshold:.3f}")
    shade(ax, alarms, "tab:red", 0.15)
    ax.set_ylabel("line score", fontsize=8)
    ax.set_xlabel(f"seconds since {times[0]:.3f}")
    ax.legend(loc="upper left", fontsize=7)
    ax.tick_params(labelsize=7)
    fig.suptitle(f"replay: {len(t)} rows, {len(alarms)} line alarm interval(s)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
