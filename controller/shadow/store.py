"""The shadow file, `<state_dir>/shadow.json`: the last accepted desired state, the rejections and
the reported version, so the edge applies the desired state again after a restart with no broker,
and never reports a version lower than one it already published.

Written with `controller.atomicfile.write_atomic`: a kill -9 or a power cut leaves the old file
or the new one. A damaged file is set aside (kept for a human), loudly, and the
shadow starts empty: the broker's retained desired topics bring the fleet's state back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from controller.atomicfile import remove_leftovers, write_atomic
from controller.shadow.document import ShadowDocument, decode_json

log = logging.getLogger(__name__)

SHADOW_FILE = "shadow.json"


class ShadowStore:
    """Loads and saves one `ShadowDocument` in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / SHADOW_FILE

    def load(self, doc: ShadowDocument) -> str:
        """Fill `doc` from the file; returns "" or what went wrong (the file then is set aside). A temp
        file a kill -9 left mid-write is removed (the file itself is whole: old or new)."""
        for tmp in remove_leftovers(self.path):
            log.info("shadow: removed %s, left by an interrupted write", tmp.name)
        try:
            data = decode_json(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            doc.load_json(data)
        except FileNotFoundError:
            return ""
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(f"{SHADOW_FILE}.damaged-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            problem = (f"shadow file {self.path} unusable ({exc}); kept as {aside.name}; started with no "
                       "desired state")
            log.error("%s", problem)
            return problem
        return ""

    def save(self, doc: ShadowDocument) -> None:
        """Write `doc` durably (OSError when the state directory cannot take it)."""
        self.write(self.dumps(doc))

    @staticmethod
    def dumps(doc: ShadowDocument) -> str:
        """The file's text for `doc` now (the agent takes it on the event loop, then writes it in a
        thread, so the document cannot change while it is serialised)."""
        return json.dumps(doc.to_json(), indent=1, sort_keys=True)

    def write(self, text: str) -> None:
        """Write `dumps`' text durably (OSError when the state directory cannot take it)."""
        write_atomic(self.path, text)
