"""LineState: the line's latest value, quality and timestamps per tag, as preallocated arrays.

Every driver batch is scattered into these arrays with one vectorized
assignment (no Python object per value), and the detector's frame (values,
fresh mask, good mask, in the model's tag order) is gathered from them into
preallocated buffers. Tags that did not change keep their last value
(sample-and-hold) and are simply not fresh.

A tag that goes STALE or COMM_LOST here (housekeeping) is also marked fresh, so the next
detector step sees it as fresh and not good and raises its invalid flag. Staleness is timed on
the monotonic clock (`good_ts`), never on the drivers' wall-clock receive stamps.

Text tags (OPC UA String, Modbus `dtype = "string"`) arrive as value NaN, quality GOOD and the
string in `ReadingBatch.text`: the latest string per tag is kept for display only. A detector
tag that turns out to carry text is a config mistake: it counts as not good in the detector's
frame from then on (its invalid flag rises) and is reported once through `take_text_in_detector`.
"""

import time

import numpy as np

from drivers.base import Quality, ReadingBatch

# Plain ints: enum attribute lookups cost more than the numpy work they guard here.
GOOD, UNCERTAIN, STALE = int(Quality.GOOD), int(Quality.UNCERTAIN), int(Quality.STALE)
COMM_LOST = int(Quality.COMM_LOST)


class LineState:
    """Latest values of all tags of a line, plus the detector's frame buffers."""

    def __init__(self, tags: list[str], detector_tags: list[str]) -> None:
        if len(set(tags)) != len(tags):
            raise ValueError("tag names must be unique across the line")
        unknown = [t for t in detector_tags if t not in tags]
        if unknown:
            raise ValueError(f"detector tags not on the line: {', '.join(unknown)}")
        self.tags = list(tags)
        self.position = {name: i for i, name in enumerate(tags)}
        n = len(tags)
        self.values = np.full(n, np.nan)
        self.quality = np.full(n, int(Quality.COMM_LOST), dtype=np.uint8)  # nothing heard yet
        self.source_ts = np.full(n, np.nan)
        self.receive_ts = np.full(n, np.nan)  # when the latest value (or quality) arrived
        self.good_ts = np.full(n, np.nan)  # monotonic time the latest GOOD value arrived (staleness)
        self.fresh = np.zeros(n, dtype=np.uint8)  # set by batches, cleared after each step
        # The detector's frame, in the model's order.
        self.detector_index = np.array([self.position[t] for t in detector_tags], dtype=np.int64)
        m = len(detector_tags)
        self.frame_values = np.zeros(m)
        self.frame_fresh = np.zeros(m, dtype=np.uint8)
        self.frame_good = np.zeros(m, dtype=np.uint8)
        self.text = np.full(n, None, dtype=object)  # latest string of each text tag, else None
        self._frame_slot = np.full(n, -1, dtype=np.int64)  # line position -> frame index (-1: none)
        self._frame_slot[self.detector_index] = np.arange(m)
        self._text_slots = np.zeros(0, dtype=np.int64)  # frame indices of detector tags found text
        self._text_new: list[str] = []  # such tags not yet reported

    def binding(self, driver_tags: list[str]) -> np.ndarray:
        """Line positions of a driver's tags (driver index -> line index)."""
        return np.array([self.position[t] for t in driver_tags], dtype=np.int64)

    def apply(self, binding: np.ndarray, batch: ReadingBatch, mono: float | None = None) -> None:
        """Scatter one driver batch into the line state; `mono`: its arrival on the monotonic clock."""
        at = binding[batch.index]
        self.values[at] = batch.values
        self.quality[at] = batch.quality
        self.source_ts[at] = batch.source_ts
        self.receive_ts[at] = batch.receive_ts
        self.good_ts[at[batch.quality == GOOD]] = time.monotonic() if mono is None else mono
        self.fresh[at] = 1
        if batch.text is not None:  # only drivers with text tags send it: the numeric path skips this
            self._apply_text(at, batch.text)

    def _apply_text(self, at: np.ndarray, text: list[str | None]) -> None:
        self.text[at] = text
        slots = self._frame_slot[at[[k for k, s in enumerate(text) if s is not None]]]
        slots = np.setdiff1d(slots[slots >= 0], self._text_slots)
        if slots.size:
            self._text_slots = np.union1d(self._text_slots, slots)
            self._text_new += [self.tags[self.detector_index[k]] for k in slots]

    def take_text_in_detector(self) -> list[str]:
        """Detector tags found to carry text since the last call (each tag reported once)."""
        new, self._text_new = self._text_new, []
        return new

    def mark_stale(self, mono: float, timeout: np.ndarray) -> np.ndarray:
        """Mark GOOD/UNCERTAIN tags whose last good value is older than `timeout` (per tag) as STALE.

        Returns the line positions that became stale now (to raise an event), usually empty.
        """
        live = self.quality <= UNCERTAIN
        stale = live & ~(mono - self.good_ts <= timeout)  # NaN good_ts (never good) counts as stale
        changed = np.flatnonzero(stale)
        if changed.size:
            self.quality[changed] = STALE
            self.values[changed] = np.nan
            self.fresh[changed] = 1
        return changed

    def mark_lost(self, positions: np.ndarray) -> None:
        """A PLC is comm-lost: its tags become COMM_LOST (unknown) until it delivers again."""
        self.quality[positions] = COMM_LOST
        self.values[positions] = np.nan
        self.fresh[positions] = 1

    def gather_frame(self) -> None:
        """Fill the detector frame buffers from the line state."""
        idx = self.detector_index
        np.take(self.values, idx, out=self.frame_values)
        np.take(self.fresh, idx, out=self.frame_fresh)
        np.equal(self.quality[idx], GOOD, out=self.frame_good, casting="unsafe")
        if self._text_slots.size:  # a text tag is never a good value for a model
            self.frame_good[self._text_slots] = 0

    def clear_fresh(self) -> None:
        """End of a step: every value now counts as held until a new batch brings it again."""
        self.fresh[:] = 0

    def value(self, name: str) -> float:
        return float(self.values[self.position[name]])

    def snapshot(self) -> list[dict]:
        """Per-tag view for the API and the CLI (not for the hot path); `text` is a text tag's
        latest string while its quality is good or uncertain (its `value` is then null)."""
        return [{"tag": t, "value": None if np.isnan(self.values[i]) else float(self.values[i]),
                 "text": self.text[i] if self.quality[i] <= UNCERTAIN else None,
                 "quality": Quality(int(self.quality[i])).name.lower(),
                 "source_ts": None if np.isnan(self.source_ts[i]) else float(self.source_ts[i]),
                 "receive_ts": None if np.isnan(self.receive_ts[i]) else float(self.receive_ts[i])}
                for i, t in enumerate(self.tags)]
