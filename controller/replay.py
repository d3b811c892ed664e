"""Offline replay of a recorded CSV through a fitted model (`linesentry replay`).

The CSV is the format `linesentry record` writes: a header `time,<tag>,...` then
one numeric row per sample. Rows go through `StreamingDetector.run_batch`, the
same kernel the service steps live, in chunks so a long recording shows progress,
and are explained (models.attribution) at sampled rows and at every rise of the
line alarm, for the plot's attribution panel and its alarm annotations.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from controller.explanation import MINUS
from models import attribution
from models.attribution import Attribution
from models.detector import BatchResult, StreamingDetector

if TYPE_CHECKING:
    from controller.config import LineConfig

CHUNK_ROWS = 20_000
EXPLAIN_SAMPLES = 400  # attribution samples over a replay (the plot's attribution panel), plus the rises
RUN_ROWS = 2048  # longest run between checkpoints: a rise of the line alarm reruns at most this many rows
GAP_SAMPLES, GAP_MIN_S = 10, 1.0  # the plot breaks its lines across a longer gap (see `breaks`)
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


@dataclass
class ReplayResult(BatchResult):
    """A replay's per-row outputs and why it scored what it did: the attribution (models.attribution)
    after `explained_rows`: about EXPLAIN_SAMPLES rows spread over the replay plus every row where
    the line alarm rose, as the live controller explains it."""

    explained_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    explained: list[Attribution] = field(default_factory=list)

    def explained_at(self, row: int) -> Attribution | None:
        k = int(np.searchsorted(self.explained_rows, row))
        return self.explained[k] if k < len(self.explained) and self.explained_rows[k] == row else None


def replay(det: StreamingDetector, times: np.ndarray, values: np.ndarray, chunk_rows: int = CHUNK_ROWS,
           progress: Callable[[int], None] | None = None, samples: int = EXPLAIN_SAMPLES) -> ReplayResult:
    """Score every row from a fresh detector state; `progress(rows_done)` after each chunk.

    Runs end at the chunks' ends and at the sampled rows, so the detector's state there is the one
    after that row and `explain` sees exactly what the live step would; a run in which the line
    alarm rises is run again up to the rise (from a checkpoint), so each rise is explained at its
    own row.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    det.reset()
    rows = len(times)
    every = max(1, -(-rows // max(samples, 1)))
    parts: list[BatchResult] = []
    explained_rows: list[int] = []
    explained: list[Attribution] = []
    start, alarm_before, done = 0, False, 0
    while start < rows:
        stop = min((start // chunk_rows + 1) * chunk_rows, rows, (start // every + 1) * every,
                   start + RUN_ROWS)
        saved = det.checkpoint()
        part = det.run_batch(values[start:stop], times[start:stop])
        rises = np.flatnonzero(part.alarm & ~np.concatenate(([alarm_before], part.alarm[:-1])))
        if rises.size and rises[0] < stop - start - 1:  # redo up to the first rise: explained there
            det.restore(saved)
            stop = start + int(rises[0]) + 1
            part = det.run_batch(values[start:stop], times[start:stop])
        parts.append(part)
        if rises.size or stop % every == 0 or stop == rows:
            explained_rows.append(stop - 1)
            explained.append(attribution.explain(det.tags, det.model, det.state, part.components[-1],
                                                 part.tag_flags[-1], part.tag_scores[-1], top_k=len(det.tags),
                                                 fitted=det.fitted))
        if progress is not None and (stop % chunk_rows == 0 or stop == rows):
            progress(stop - done)
            done = stop
        start, alarm_before = stop, bool(part.alarm[-1])
    return ReplayResult(score=np.concatenate([p.score for p in parts]),
                        alarm=np.concatenate([p.alarm for p in parts]),
                        components=np.concatenate([p.components for p in parts]),
                        tag_flags=np.concatenate([p.tag_flags for p in parts]),
                        tag_scores=np.concatenate([p.tag_scores for p in parts]),
                        explained_rows=np.asarray(explained_rows, dtype=np.int64), explained=explained)


def intervals(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as (first row, last row + 1)."""
    m = np.asarray(mask, dtype=bool).astype(np.int8)
    edges = np.diff(np.concatenate(([0], m, [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def clock_steps(times: np.ndarray) -> np.ndarray:
    """Rows where the recording's wall clock went backwards (an NTP step, a PLC clock reset)."""
    return np.flatnonzero(np.diff(np.asarray(times, dtype=float)) < 0.0) + 1


def breaks(times: np.ndarray) -> np.ndarray:
    """Rows the plot must not join to the row before: a clock step back, or a gap (a recording
    with stops and restarts) longer than GAP_SAMPLES sample intervals and GAP_MIN_S."""
    dt = np.diff(np.asarray(times, dtype=float))
    if dt.size == 0:
        return np.zeros(0, dtype=np.int64)
    gap = max(GAP_MIN_S, GAP_SAMPLES * float(np.median(np.abs(dt))))
    return np.flatnonzero((dt < 0.0) | (dt > gap)) + 1


def split_at(spans: list[tuple[int, int]], steps: np.ndarray) -> list[tuple[int, int]]:
    """`spans` cut at each clock step (a shading across one would cover the wrong wall-clock range)."""
    out = []
    for a, b in spans:
        cuts = [int(k) for k in steps if a < k < b]
        out += list(zip([a, *cuts], [*cuts, b], strict=True))
    return out


def duration_text(seconds: float) -> str:
    """'−1 h', '+42 s', '−3 d': a clock step's size at a glance."""
    size = abs(seconds)
    value, unit = next(((size / d, u) for d, u in ((86400, "d"), (3600, "h"), (60, "min")) if size >= d),
                       (size, "s"))
    return f"{'+' if seconds >= 0 else MINUS}{value:.3g} {unit}"


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


def actuator_tags(config: LineConfig) -> list[str]:
    """The tags the controller writes to act on the line: [[actions]] and safe-state writes."""
    written = [a.write.tag for a in config.actions]
    written += [w.tag for _, plc in config.plcs() for w in plc.safe_state]
    return list(dict.fromkeys(written))


def read_actuators(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The columns of `names` that the CSV has (a recording may hold the actuators' values too);
    a row with a blank or non-numeric cell there reads NaN."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    out = {}
    for name in (n for n in names if n in header):
        c = header.index(name)
        out[name] = np.array([_number(r[c]) if c < len(r) else np.nan for r in rows[1:] if r])
    return out


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return np.nan


# One colour per flag kind (shaded on the tag's panel), per component (the attribution panel's strip;
# the tags' stack there takes matplotlib's tab10 colours).
FLAG_COLOURS = {"invalid": "tab:gray", "limit": "tab:purple", "rate_of_change": "tab:pink",
                "flatline": "tab:brown", "ewma_z": "tab:orange", "cusum": "tab:olive"}
COMPONENT_COLOURS = {"tags": "dimgray", "pca_t2": "goldenrod", "pca_spe": "navy", "iforest": "teal"}
ALARM_COLOUR = "tab:red"


def figure(times: np.ndarray, values: np.ndarray, tags: list[str], result: ReplayResult, threshold: float,
           units: Mapping[str, str] | None = None, actuators: Mapping[str, np.ndarray] | None = None):
    """The replay as a matplotlib Figure (for `plot`, and for tests to inspect).

    Top to bottom: one panel per tag (value, its flags shaded in their kind's colour), the
    actuators the controller writes (when the recording has them), the line score against the
    threshold with each line alarm's explanation at its rise, and the attribution panel: the
    driving component and each tag's share of it over time. Line alarms are shaded red on every
    panel; the time axis is wall-clock (UTC). Raises ImportError (with the install hint) when
    matplotlib is missing.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(PLOT_EXTRA_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from controller.explanation import explanation
    from models.names import FLAG_NAMES

    units, actuators = units or {}, actuators or {}
    t = (np.asarray(times) * 1e6).astype("datetime64[us]")
    steps, cut = clock_steps(times), breaks(times)
    # A line never joins the rows either side of a step back or a gap: a NaN point (at the last
    # time before it) breaks it, and every shading is cut there.
    t_line = np.insert(t, cut, t[cut - 1]) if cut.size else t

    def line(y) -> np.ndarray:
        y = np.asarray(y, dtype=float)
        return np.insert(y, cut, np.nan) if cut.size else y

    alarms = intervals(result.alarm)
    heights = [1.0] * len(tags) + [0.6] * bool(actuators) + [1.2, 1.2]
    fig, axes = plt.subplots(len(heights), 1, sharex=True, figsize=(11, 1.05 * sum(heights) + 1.6),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    axes = list(axes[:, 0])
    tag_axes = axes[:len(tags)]
    act_ax = axes[len(tags)] if actuators else None
    score_ax, why_ax = axes[-2], axes[-1]

    def shade(ax, spans, colour, alpha):
        for a, b in split_at(spans, cut):
            ax.axvspan(t[a], t[min(b, len(t) - 1)], color=colour, alpha=alpha, lw=0)

    flag_kinds_seen: list[str] = []
    for k, (ax, tag) in enumerate(zip(tag_axes, tags, strict=True)):
        ax.plot(t_line, line(values[:, k]), lw=0.7, color="black")
        for bit, kind in sorted(FLAG_NAMES.items()):
            spans = intervals(result.tag_flags[:, k] & bit != 0)
            if spans:
                shade(ax, spans, FLAG_COLOURS[kind], 0.35)
                flag_kinds_seen.append(kind)
        ax.set_ylabel(f"{tag}\n[{units[tag]}]" if tag in units else tag, fontsize=7)
    if act_ax is not None:
        for k, (name, series) in enumerate(actuators.items()):
            act_ax.step(t_line, line(series) + 1.2 * k, where="post", lw=1.0, label=name)
        act_ax.set_yticks([1.2 * k + v for k in range(len(actuators)) for v in (0, 1)],
                          [f"{n} {v}" for n in actuators for v in ("off", "on")], fontsize=6)
        act_ax.set_ylabel("actuators", fontsize=7)
    score_ax.plot(t_line, line(result.score), lw=0.8, color="black", label="line score")
    score_ax.axhline(threshold, color=ALARM_COLOUR, ls="--", lw=0.8, label=f"threshold {threshold:.3f}")
    score_ax.set_ylabel("line score", fontsize=7)
    score_ax.legend(loc="upper right", fontsize=6)
    for n, (a, _) in enumerate(alarms):  # each line alarm's explanation, as the live event gives it
        why = result.explained_at(a)
        if why is not None:
            readings = {tag: float(values[a, k]) for k, tag in enumerate(tags)}  # as the live step reads
            score_ax.annotate(explanation(f"#{n + 1}", why, units, readings=readings)["text"], (t[a], 1.0),
                              xytext=(2, -2),
                              textcoords="offset points", xycoords=("data", "axes fraction"), fontsize=6,
                              va="top", color=ALARM_COLOUR, rotation=0, clip_on=True)
    _attribution_panel(why_ax, t, tags, result, cut)
    for ax in axes:
        shade(ax, alarms, ALARM_COLOUR, 0.12)
        ax.tick_params(labelsize=6)
        for k in steps:
            ax.axvline(t[k], color="black", ls=":", lw=0.8)
    for k in steps:  # the rows after it are drawn over earlier wall-clock times: say so
        score_ax.annotate(f"clock step {duration_text(float(times[k] - times[k - 1]))}", (t[k], 0.0),
                          xytext=(2, 2), textcoords="offset points", xycoords=("data", "axes fraction"),
                          fontsize=6, va="bottom")
    why_ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(why_ax.xaxis.get_major_locator()))
    why_ax.set_xlabel("time (UTC)", fontsize=7)
    handles = [Patch(color=ALARM_COLOUR, alpha=0.3, label="line alarm")]
    handles += [Patch(color=FLAG_COLOURS[k], alpha=0.5, label=f"flag: {k}")
                for k in FLAG_COLOURS if k in flag_kinds_seen]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.985))
    stepped = f", {steps.size} clock step(s) back (dotted)" if steps.size else ""
    fig.suptitle(f"replay: {len(t)} rows, {len(alarms)} line alarm interval(s){stepped}", fontsize=9, y=0.998)
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    return fig


def _attribution_panel(ax, t: np.ndarray, tags: list[str], result: ReplayResult, steps: np.ndarray) -> None:
    """Each tag's share of the driving component at the explained rows (stacked, one colour per
    tag; the stack is as high as the component's ratio to its limit, at most 1), under a strip
    naming the driving component (one colour per component). Both end at each of `steps` (the
    plot's breaks: clock steps back and gaps)."""
    import matplotlib
    from matplotlib.patches import Patch

    rows = result.explained_rows
    if rows.size == 0:
        return
    index = {tag: k for k, tag in enumerate(tags)}
    shares = np.zeros((len(tags), rows.size))
    for j, a in enumerate(result.explained):
        weight = min(a.ratio, 1.0)  # a component far below its limit drives little: a low stack
        for c in a.top:
            shares[index[c.tag], j] = c.share * weight
    cmap = matplotlib.colormaps["tab10"]
    colours = [cmap(k % 10) for k in range(len(tags))]
    # Explained row j is followed by a clock step before row j + 1: the stack and the strip end at
    # the last row before the step.
    after = np.searchsorted(rows, steps)  # the first explained row at or after each step
    ends = {int(j) - 1: int(k) - 1 for j, k in zip(after, steps, strict=True) if j > 0}
    x, y = t[rows], shares
    if ends:
        cut = sorted(j + 1 for j in ends if j + 1 < rows.size)
        x = np.insert(x, cut, [t[ends[j - 1]] for j in cut])
        y = np.insert(y, cut, np.nan, axis=1)
    ax.stackplot(x, y, colors=colours, labels=tags, alpha=0.8, step="post")
    stops = [t[ends[j]] if j in ends else (t[rows[j + 1]] if j + 1 < rows.size else t[-1])
             for j in range(rows.size)]
    seen = []
    for j, a in enumerate(result.explained):
        if a.component is not None:
            ax.axvspan(t[rows[j]], stops[j], ymin=1.02, ymax=1.12, color=COMPONENT_COLOURS[a.component],
                       clip_on=False, lw=0)
            seen.append(a.component)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attribution\nshare x min(1, ratio)", fontsize=6)
    tag_legend = ax.legend(loc="upper left", fontsize=5, ncol=min(len(tags), 8), framealpha=0.6)
    ax.add_artist(tag_legend)
    ax.legend(handles=[Patch(color=COMPONENT_COLOURS[c], label=f"driver: {c}") for c in COMPONENT_COLOURS
                       if c in seen], loc="lower left", fontsize=5, ncol=4, framealpha=0.6)


def plot(path: Path, times: np.ndarray, values: np.ndarray, tags: list[str], result: ReplayResult,
         threshold: float, units: Mapping[str, str] | None = None,
         actuators: Mapping[str, np.ndarray] | None = None) -> None:
    """Draw `figure(...)` to a PNG at `path`."""
    fig = figure(times, values, tags, result, threshold, units, actuators)
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
