"""The controller's state directory: the API token and the durable operator state.

Latched actions, shelving, acknowledgements and inhibits must survive a restart
(an operator who shelved an alarm for an hour does not expect it back after a
reboot). The state file is written atomically (temp file, fsync, rename, fsync
of the directory), so a power cut leaves either the old or the new state,
never half of one. A damaged state file is set aside, not fatal.
"""

import json
import logging
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_FILE = "api-token"
STATE_FILE = "state.json"


class StateDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise OSError(f"cannot create the state directory {self.path}: {exc.strerror}; "
                          "set [controller] state_dir to a writable folder") from None

    def token(self) -> str:
        """The bearer token for mutating API calls, created at first start with mode 0600."""
        path = self.path / TOKEN_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token

    def save_state(self, state: dict) -> None:
        """Atomic and safe to call from several threads (the last save wins, never a torn file)."""
        path = self.path / STATE_FILE
        with self._lock:
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=STATE_FILE, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(state, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load_state(self) -> dict:
        """The saved state, or {} when there is none or it is damaged (then it is kept aside)."""
        path = self.path / STATE_FILE
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            return state
        except (OSError, ValueError) as exc:
            aside = path.with_name(f"{STATE_FILE}.damaged-{int(time.time())}")
            os.replace(path, aside)
            log.warning("state file %s was unreadable (%s); starting clean, kept it as %s",
                        path, exc, aside.name)
            return {}
