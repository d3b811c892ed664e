"""What every protocol driver shares: quality codes, reading batches, connection state, the interface.

A driver owns one PLC connection and a fixed, ordered list of tags. Readings
travel as `ReadingBatch` arrays indexed by tag position, so the controller can
copy them straight into the detector's frame without a Python object per value.
"""

import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class Quality(enum.IntEnum):
    """Quality of one value, worst last. Only GOOD values reach the models."""

    GOOD = 0
    UNCERTAIN = 1  # the PLC says the value may be inaccurate (e.g. OPC UA Uncertain*)
    BAD = 2  # the PLC or the codec rejected the value (exception response, bad status, NaN)
    STALE = 3  # no fresh value within the tag's staleness timeout
    COMM_LOST = 4  # the connection to the PLC is down


class ConnectionState(enum.Enum):
    """A PLC connection as its supervisor (drivers.supervisor, the only writer) reports it."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"  # lost or refused; waiting before the next reconnect attempt
    FAILED = "failed"  # a permanent error (drivers.errors): no more attempts until restarted
    CLOSED = "closed"


@dataclass
class ReadingBatch:
    """Values of some of a driver's tags, aligned arrays; `index` gives each one's tag position."""

    index: np.ndarray  # int32 positions in the driver's tag list
    values: np.ndarray  # float64 (booleans as 0/1; NaN where quality is not GOOD/UNCERTAIN)
    quality: np.ndarray  # uint8 Quality codes
    source_ts: np.ndarray  # float64 epoch seconds stamped by the PLC/server (NaN when unknown)
    receive_ts: np.ndarray  # float64 epoch seconds when the driver received each value
    # Text tags (e.g. OPC UA String): the string per entry, None for numeric entries; a text entry
    # has value NaN and quality GOOD/UNCERTAIN. For display, events and summaries, never a model.
    # None (the default) when the batch carries no text at all.
    text: list[str | None] | None = None

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @classmethod
    def empty_for(cls, index: Sequence[int], quality: Quality, now: float | None = None
                  ) -> "ReadingBatch":
        """A batch with no values, only a quality (e.g. tags a driver cannot use this session)."""
        n = len(index)
        now = time.time() if now is None else now
        return cls(index=np.asarray(index, dtype=np.int32), values=np.full(n, np.nan),
                   quality=np.full(n, int(quality), dtype=np.uint8),
                   source_ts=np.full(n, np.nan), receive_ts=np.full(n, now))


OnBatch = Callable[[ReadingBatch], None]


@dataclass
class DriverStats:
    """Counters a driver keeps for metrics and the status view."""

    sessions_created: int = 0
    reads: int = 0
    read_errors: int = 0
    writes: int = 0
    write_errors: int = 0
    batches: int = 0
    values: int = 0
    bad_values: int = 0
    last_error: str = ""
    tag_errors: dict[str, str] = field(default_factory=dict)  # tag name -> why it is BAD for this session
    # Monotonic time of the last proof of good data: a delivery, poll result, keep-alive or
    # successful read while at least one tag of this PLC holds a GOOD/UNCERTAIN value. The
    # controller's liveness (comm loss) is judged on its age alone; see `Driver`.
    last_alive: float = -math.inf
    read_latency_s: list[float] = field(default_factory=list, repr=False)  # recent, bounded

    def record_latency(self, seconds: float, keep: int = 1024) -> None:
        self.read_latency_s.append(seconds)
        if len(self.read_latency_s) > keep:
            del self.read_latency_s[: len(self.read_latency_s) - keep]


@runtime_checkable
class Driver(Protocol):
    """The interface every protocol driver implements (OPC UA, Modbus TCP, ...).

    Liveness contract: while the link is healthy and at least one tag is GOOD/UNCERTAIN, the
    driver refreshes `stats.last_alive` at least every `alive_interval_s` seconds (OPC UA:
    publish responses incl. keep-alives, polled reads; Modbus: every poll cycle with a good
    value). A device that answers only with errors or timeouts never refreshes it, so it
    becomes comm-lost in the controller after its `stale_timeout_s`.
    """

    name: str
    tag_names: list[str]
    stats: DriverStats
    alive_interval_s: float  # the longest gap between two refreshes of stats.last_alive when healthy

    async def connect(self) -> None:
        """Open a new session (a fresh client object every time).

        Raises ConnectionLost when the PLC cannot be reached, a permanent DriverError
        (CredentialsRejected, CertificateUntrusted) when it refuses us, DriverError otherwise;
        each with the library's exception as __cause__.
        """

    async def close(self) -> None:
        """Close the session; safe to call at any time, twice, or on a broken connection."""

    async def read(self, names: Sequence[str] | None = None) -> ReadingBatch:
        """Read these tags (all when None) now, in as few requests as the protocol allows."""

    async def subscribe(self, on_batch: OnBatch) -> None:
        """Deliver batches to on_batch (subscriptions or polling) until the connection breaks.

        Returns only by raising ConnectionLost (or CancelledError on shutdown).
        """

    async def write(self, name: str, value: float) -> None:
        """Write a writable tag and confirm by readback; WriteRefused / WriteFailed otherwise."""
