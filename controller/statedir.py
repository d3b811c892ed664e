"""The controller's state directory: the API tokens (one per role) and the durable operator state.

Latched actions, shelving, acknowledgements and inhibits must survive a restart
(an operator who shelved an alarm for an hour does not expect it back after a
reboot). The state file is written atomically (temp file, fsync, rename, fsync
of the directory), so a power cut leaves either the old or the new state,
never half of one. A damaged state file is set aside, not fatal.
"""

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from pathlib import Path

from controller.atomicfile import write_atomic
from controller.logs import register_secret
from controller.roles import TOKEN_FILES, Role

log = logging.getLogger(__name__)

TOKEN_FILE = TOKEN_FILES[Role.OPERATOR]  # ack, shelve, unshelve (and every read)
READ_TOKEN_FILE = TOKEN_FILES[Role.VIEWER]  # reads only (dashboards, scrapers) when reads need a token
ENGINEER_TOKEN_FILE = TOKEN_FILES[Role.ENGINEER]  # reset, inhibit, out of service, model reload
MIN_TOKEN_CHARS = 32
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.~+/=]+")
STATE_FILE = "state.json"


def _existing_token(path: Path) -> str | None:
    """The text of the token file at `path`, or None when there is none we should trust.

    Not followed or trusted, so a new token is written in its place (with a warning): a symbolic
    link (its target may be a file others can read, e.g. /etc/machine-id), anything but a regular
    file (a FIFO would hang the start) and a file another user owns (who then knows the token).
    A file readable by others is made 0600.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            log.warning("API token %s is a symbolic link: not followed; wrote a new token in its place "
                        "(the link's target is left alone)", path)
            return None
        raise OSError(f"cannot read the API token {path}: {exc.strerror}; the service user must own "
                      "the state directory") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise OSError(f"the API token {path} is a directory: remove it (a new token is written at start)")
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            log.warning("API token %s is %s; wrote a new token in its place", path,
                        "not a regular file" if not stat.S_ISREG(info.st_mode)
                        else f"owned by another user (uid {info.st_uid})")
            return None
        if info.st_mode & 0o077:
            os.fchmod(f.fileno(), 0o600)
            log.warning("API token %s was readable by other users; made it 0600", path)
        return f.read(4096).decode("ascii", errors="replace").strip()


class StateDir:
    """The controller's state directory: API tokens and the state file. Creating the object does no
    I/O; `create()` (the controller's start, or the first `token()`) makes the directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def create(self) -> None:
        """Make the directory (mode 0700) if it does not exist; one clear OSError otherwise."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise OSError(f"cannot create the state directory {self.path}: {exc.strerror}; "
                          "set [controller] state_dir to a writable folder") from None

    def token(self, name: str = TOKEN_FILE) -> str:
        """A bearer token kept in the state directory (mode 0600), created at first start.

        A file too short to be one of ours (left empty by a first start on a full disk, or
        edited by hand) is replaced by a new token, with a warning: an empty token would make
        every mutating call 401 forever, so a latched stop could never be reset. So is a file
        that is not plainly ours (`_existing_token`), and one holding a higher role's token (a
        file copied over another by hand): it would let this role's holders do what that one may.
        """
        self.create()
        path = self.path / name
        existing = _existing_token(path)
        if existing is not None and len(existing) >= MIN_TOKEN_CHARS and _TOKEN_CHARS.fullmatch(existing):
            higher = self._higher_role_holding(name, existing)
            if higher is None:
                register_secret(existing)
                return existing
            log.warning("API token %s held the %s role's token (%s), so it gave that role; wrote a new "
                        "one: clients must read it again", path, higher.value, TOKEN_FILES[higher])
        elif existing is not None:
            log.warning("API token %s was not a valid token (%d characters, need >= %d); wrote a new one: "
                        "clients must read it again", path, len(existing), MIN_TOKEN_CHARS)
        token = secrets.token_urlsafe(32)
        write_atomic(path, token + "\n")
        register_secret(token)
        return token

    def _higher_role_holding(self, name: str, token: str) -> Role | None:
        """The role above `name`'s whose token file holds `token` too (None: no such role)."""
        role = next((r for r, file in TOKEN_FILES.items() if file == name), None)
        for higher, file in TOKEN_FILES.items() if role is not None else ():
            other = self.path / file
            if higher.rank <= role.rank or other.is_symlink() or not other.is_file():
                continue  # a link or a FIFO is dealt with (and warned about) when its own token is read
            with contextlib.suppress(OSError):
                if other.read_text(encoding="ascii", errors="replace").strip() == token:
                    return higher
        return None

    def tokens(self) -> dict[Role, str]:
        """Every role's bearer token (each created at first start, mode 0600)."""
        return {role: self.token(name) for role, name in TOKEN_FILES.items()}

    def save_state(self, state: dict) -> None:
        """Atomic and safe to call from several threads (the last save wins, never a torn file)."""
        with self._lock:
            write_atomic(self.path / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))

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
            aside = self.set_aside()
            log.warning("state file %s was unreadable (%s); starting clean, kept it as %s",
                        path, exc, aside)
            return {}

    def set_aside(self) -> str:
        """Move a damaged state file out of the way (kept for a human) and return its new name."""
        path = self.path / STATE_FILE
        aside = path.with_name(f"{STATE_FILE}.damaged-{int(time.time())}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside)
        return aside.name
