"""`linesentry run CONFIG` with a shorter summary window, for the cloud crash test.

    python -m hil_tests.cloud_launcher WINDOW_S CONFIG

`controller.runtime.SUMMARY_WINDOW_S` (10 s) is a module constant read when the Controller is
built; this sets it, then hands over to the real CLI command (same signals, logging, exit codes).
"""

from __future__ import annotations

import sys

import controller.runtime
from controller.cli import app


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        raise SystemExit("usage: python -m hil_tests.cloud_launcher WINDOW_S CONFIG [run options]")
    controller.runtime.SUMMARY_WINDOW_S = float(argv[0])
    app(["run", *argv[1:]], prog_name="linesentry")


if __name__ == "__main__":
    main()
