"""`linesentry run CONFIG` as a child process, for tests of what only a real process shows: kill -9
and restarts, a file-size limit on the process (RLIMIT_FSIZE: writes past it fail, as on a full
disk), the CLI over real sockets. Its output is collected from a pipe (a pipe is not limited by
RLIMIT_FSIZE, a log file would be)."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from hil_tests.rig.controller_run import without_model
from hil_tests.rig.demo_config import DEMO_CONFIG
from hil_tests.rig.net import free_port

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, "-c", "from controller.cli import app; app(prog_name='linesentry')"]


def closed_ports_config(tmp_path: Path, model: Path | None = None) -> Path:
    """The demo line with its PLCs on closed ports (so its comm-loss alarms are active), a private
    state dir (tmp_path/state) and API port, and `model`; without one, the commissioning config."""
    text = DEMO_CONFIG.read_text()
    text = without_model(text) if model is None else re.sub(r"^model = .*$", f'model = "{model}"', text,
                                                             flags=re.M)
    subs = [(r"127\.0\.0\.1:4840", f"127.0.0.1:{free_port()}"), (r"^port = 5020$", f"port = {free_port()}"),
            (r"^state_dir = .*$", f'state_dir = "{tmp_path / "state"}"'),
            (r"^api_port = 8470$", f"api_port = {free_port()}")]
    for pattern, replacement in subs:
        text, n = re.subn(pattern, replacement, text, flags=re.M)
        assert n == 1, pattern
    path = tmp_path / "line.toml"
    path.write_text(text)
    return path


class ServiceProcess:
    """One controller process at a time on `config` (start again after a kill or a stop); every
    start's output goes on in `output`. `file_limit`: the child's RLIMIT_FSIZE in bytes."""

    def __init__(self, config: Path, file_limit: int | None = None) -> None:
        self.config, self.file_limit = config, file_limit
        self.port = int(re.search(r"^api_port = (\d+)$", config.read_text(), re.M).group(1))
        self.output: list[str] = []
        self.proc: subprocess.Popen | None = None

    def _limit(self) -> None:
        if self.file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_limit, self.file_limit))

    def start(self) -> None:
        self.proc = subprocess.Popen([*LAUNCH, "run", str(self.config)], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, preexec_fn=self._limit,
                                     env=os.environ | {"PYTHONPATH": str(ROOT)})
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the controller exited:\n{self.log()}")
            try:
                if self.get("/status")["controller"]["started_at"]:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no API after 60 s:\n{self.log()}")
            time.sleep(0.1)

    def _drain(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.output.append(line)

    def log(self) -> str:
        return "".join(self.output)

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1{path}", timeout=5) as r:
            return json.loads(r.read())

    def events(self, since: int = 0) -> list[dict]:
        out: list[dict] = []
        while page := self.get(f"/events?since={since}"):
            out += page
            since = page[-1]["id"]
        return out

    def kill9(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(10)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
