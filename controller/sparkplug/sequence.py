"""The two Sparkplug counters: `seq` per message of a session, `bdSeq` per MQTT session (persisted).

seq is 0 on NBIRTH and +1 on every later NBIRTH/DBIRTH/NDATA/DDATA/DDEATH of the session, 255 -> 0:

>>> s = Seq(); [s.birth(), s.next(), s.next()]
[0, 1, 2]
>>> s.value = 255; s.next()
0

bdSeq (birth/death sequence) is 0..255 too, one step per MQTT CONNECT: the will (NDEATH) of a
session and its NBIRTH carry the same value, so a host can tell a late NDEATH of an older session
from the death of the current one. It is kept in the state directory, so a restart goes on from the
last value instead of reusing one a host may still associate with the old session.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from controller.atomicfile import write_atomic

log = logging.getLogger(__name__)

BDSEQ_FILE = "sparkplug.json"


class Seq:
    """The message sequence number of one session."""

    def __init__(self) -> None:
        self.value = 0

    def birth(self) -> int:
        self.value = 0
        return 0

    def next(self) -> int:
        self.value = (self.value + 1) % 256
        return self.value


class BdSeqStore:
    """The last bdSeq used, in `<state_dir>/sparkplug.json` (an unreadable file starts again at 0)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / BDSEQ_FILE
        self.last: int | None = None
        try:
            value = json.loads(self.path.read_text())["bdseq"]
            if type(value) is not int or not 0 <= value <= 255:  # (a bool is no bdSeq either)
                raise ValueError(f"bdseq {value!r} is not an integer 0..255")
            self.last = value
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s cannot be read (%s): bdSeq starts again at 0", self.path, exc)

    def next(self) -> int:
        """The bdSeq of the next MQTT session, saved before it is used (a failed save is logged:
        the session goes on with it)."""
        value = 0 if self.last is None else (self.last + 1) % 256
        self.last = value
        try:
            write_atomic(self.path, json.dumps({"bdseq": value}))
        except OSError as exc:
            log.error("%s cannot be written (%s): a restart may reuse bdSeq %d", self.path, exc, value)
        return value
