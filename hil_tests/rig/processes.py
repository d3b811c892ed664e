"""Ending a server process the rig started: a signal, a bounded wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def end_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send `sig` to a running `proc` and wait up to `timeout` s for it; kill it if it has not ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
