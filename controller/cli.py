"""The `linesentry` command line (typer; rich only where a command draws a table).

Exit codes: 0 success; 1 a runtime failure (service not reachable, PLC error); 2 a user mistake
(bad config, bad arguments, missing file). Errors are one line on stderr, never a traceback:
`_OneLineErrors` turns the product's errors (`LinesentryError`, and the `DriverError` / `ModelError` roots
of drivers/ and models/) into one line, and anything else into one "internal error" line
(LINESENTRY_DEBUG=1 shows the traceback, for bug reports).

Startup cost is the point of the layout: the operator commands (status, alarms, ack, shelve,
events, ...) read only the config's [controller] section and talk to the local API over
http.client, so they import neither the schema of the whole line nor numba/scipy/sklearn or a
protocol library; every other import sits inside the command that needs it. Commands of other
packages (the rig's demo/sim/hil) plug in through the entry-point group `linesentry.cli`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

from controller.errors import LinesentryError

if TYPE_CHECKING:
    from rich.console import Console

    from controller.config import ControllerSection, LineConfig
    from drivers.probe import ProbeReport

EXIT_RUNTIME, EXIT_USAGE = 1, 2
PLUGIN_GROUP = "linesentry.cli"  # entry points: register(app) adds commands (CONTRACTS.md 3)
CONFIG_ENV = "LINESENTRY_CONFIG"
DEFAULT_CONFIG = Path("/etc/linesentry/line.toml")
CONFIG_HELP = f"line config (TOML); default ${CONFIG_ENV}, else {DEFAULT_CONFIG}"


class _OneLineErrors(TyperGroup):
    """Whatever escapes a command becomes one line on stderr and its exit code, never a traceback
    (here, not around `app()`, so typer's test runner and the console script behave the same)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """A usage mistake (unknown option, missing argument, unknown command) is one `error:` line
        naming the command's --help, exit 2, instead of click's usage block in a rich box."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            error_line("aborted")
            sys.exit(EXIT_RUNTIME)
        except BrokenPipeError:  # `linesentry events | head`: the reader has gone, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
            sys.exit(EXIT_RUNTIME)
        except typer.TyperException as exc:  # click's ClickException / UsageError, as typer ships them
            code = getattr(exc, "exit_code", EXIT_USAGE)
            if type(exc).__name__ == "NoArgsIsHelpError":  # `linesentry` or `certs` alone: the help
                print(exc.format_message(), flush=True)  # (typer's own check, without importing its click)
                sys.exit(code)
            ctx = getattr(exc, "ctx", None)
            message = exc.format_message()  # type: ignore[attr-defined]
            see = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            error_line(" ".join(message.split()) + see)
            sys.exit(code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as exc:
            if os.environ.get("LINESENTRY_DEBUG"):
                raise
            code, message = describe_error(exc)
            error_line(message)
            raise typer.Exit(code) from None


def default_config() -> Path:
    """The line config a command uses when none is given: $LINESENTRY_CONFIG, else the system one."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


class _ConfigFirst(TyperCommand):
    """A command whose first argument, the line config, may be left out: `linesentry ack ALARM`
    uses `default_config()`, and `linesentry ack line.toml ALARM` works as it always did. A command
    line one positional argument short gets the default put in front (options may come anywhere)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if ctx.resilient_parsing or any(a in ctx.help_option_names for a in args):
            return super().parse_args(ctx, args)
        values = self.make_parser(ctx).parse_args(args=list(args))[0]  # options and arguments by name
        names = [p.name for p in self.get_params(ctx) if p.param_type_name == "argument"]
        given, wanted = [values[n] for n in names if values.get(n) is not None], len(names)
        config_alone = wanted > 1 and len(given) == 1 and given[0].endswith(".toml") and Path(
            given[0]).is_file()
        if len(given) >= wanted or config_alone:  # config_alone: click names the missing argument
            first = str(values[names[0]])
            commands = getattr(ctx.find_root().command, "commands", {})
            if first in commands and not Path(first).exists():  # `linesentry status status`
                ctx.fail(f"{first!r} is a command name, not a line config: pass the config file (or "
                         f"leave it out to use ${CONFIG_ENV} or {DEFAULT_CONFIG})")
            if Path(first).exists() and not Path(first).is_file() and not Path(first).is_dir():
                ctx.fail(f"{first} is not a regular file (a FIFO or a device would block the command): "
                         "pass the line config file")
            return super().parse_args(ctx, args)
        config = default_config()
        rest = super().parse_args(ctx, [str(config), *args])  # a missing option or argument first
        if not config.is_file():
            where = f"{CONFIG_ENV}={config}" if os.environ.get(CONFIG_ENV) else f"the default {config}"
            what = ("is a directory, not a config file" if config.is_dir() else
                    "is not a regular file" if config.exists() else "does not exist")
            ctx.fail(f"no line config: {where} {what}; pass the config file as the first "
                     f"argument or set {CONFIG_ENV}")
        return rest


def describe_error(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an exception no command handled."""
    from drivers.errors import DriverError
    from models.errors import ModelError

    if isinstance(exc, LinesentryError | ModelError):
        # 400 (a bad config, request or sync setting) and 422 (an unusable model) are the user's to fix
        usage = isinstance(exc, ModelError) or exc.status in (400, 422)
        return getattr(exc, "exit_code", EXIT_USAGE if usage else EXIT_RUNTIME), _first_line(exc)
    if isinstance(exc, DriverError):
        return EXIT_RUNTIME, _first_line(exc)
    if isinstance(exc, MemoryError):
        return EXIT_RUNTIME, "out of memory: lower the model sizes in [detector.spec] or use less data"
    if isinstance(exc, OSError):
        return EXIT_RUNTIME, (f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror
                              else str(exc) or type(exc).__name__)
    return EXIT_RUNTIME, (f"internal error: {type(exc).__name__}: {_first_line(exc)[:300]} "
                          "(run with LINESENTRY_DEBUG=1 for the traceback and report it)")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _LinesentryTyper(typer.Typer):
    """The app, looking plugin commands up only when the command line does not name one of
    linesentry's own: scanning the installed packages takes ~40 ms, a tenth of an operator command."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argv = kwargs.get("args")
        words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
        if not words or words[0] not in _names(self.registered_commands, self.registered_groups):
            load_plugins()
        return super().__call__(*args, **kwargs)


# rich_markup_mode=None: help is plain click text, so "[detector]" in a help string stays as written
app = _LinesentryTyper(cls=_OneLineErrors, help="linesentry: industrial anomaly detection controller.",
                       no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None)


UNWRAPPED_WIDTH = 100_000  # columns of a console that is not a terminal: nothing is wrapped or cut


def _console(stderr: bool) -> Console:
    """A rich console for the stream as it is now, created per use: a terminal gets its own width;
    a pipe, a file or typer's test runner (which swaps sys.stdout per invoke) gets lines that are
    never wrapped or cut, whatever COLUMNS says, and no colour codes (rich sees no terminal)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else UNWRAPPED_WIDTH
    # emoji=False: ":ab:" in a fingerprint or a tag name is text, not an emoji
    return Console(stderr=stderr, emoji=False, width=width)


def terminal() -> Console:
    """The rich console on stdout, for tables, live views and progress bars."""
    return _console(stderr=False)


def __getattr__(name: str) -> Any:
    """`console` (stdout) and `err` (stderr): rich consoles, created on use (rich costs startup)."""
    if name in ("console", "err"):
        return _console(stderr=name == "err")
    raise AttributeError(f"module 'controller.cli' has no attribute {name!r}")


def _styled(text: str, color: str, stream: Any) -> str:
    """`text` in an ANSI colour on a terminal (and not with NO_COLOR), plain otherwise."""
    if stream.isatty() and not os.environ.get("NO_COLOR"):
        return f"\033[{color}m{text}\033[0m"
    return text


def say(text: str) -> None:
    """One plain line on stdout (no markup, no wrapping, no rich import)."""
    print(text, flush=True)


def warn(text: str) -> None:
    """A `warning:` line on stdout (what a request disables)."""
    print(f"{_styled('warning:', '33', sys.stdout)} {text}", flush=True)


def error_line(text: str) -> None:
    """An `error:` line on stderr, never wrapped."""
    print(f"{_styled('error:', '31', sys.stderr)} {text}", file=sys.stderr, flush=True)


def print_table(headers: tuple[str, ...], rows: list[list[str]], title: str = "") -> None:
    """Aligned plain-text columns for the operator commands: greppable, never wrapped, and no
    rich import on their path (rich draws the tables of validate, fit and replay).

    >>> print_table(("alarm", "state"), [["oil_temp_high", "UNACK"]], title="alarms")
    alarms
    alarm          state
    -------------  -----
    oil_temp_high  UNACK
    """
    from controller.client import one_line

    cells = [[one_line(c, limit=None) for c in row] for row in rows]  # one line per row, no escape codes
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if title:
        say(title)
    for row in (list(headers), ["-" * w for w in widths], *cells):
        say("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print `message` as an error line; return the typer.Exit to raise (exit `code`)."""
    error_line(message)
    return typer.Exit(code)


def load_or_exit(config: Path) -> LineConfig:
    """The whole line config, or every problem as an error line and exit 2."""
    from controller.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        for line in exc.problems:
            error_line(line)
        raise typer.Exit(EXIT_USAGE) from None


def controller_section_or_exit(config: Path) -> ControllerSection:
    """Only the [controller] section (API address, state directory), validated; exit 2 if it is bad."""
    from controller.config.controller import load_controller_section
    from controller.config.errors import ConfigError

    try:
        return load_controller_section(config)
    except ConfigError as exc:
        for line in exc.problems:
            error_line(line)
        raise typer.Exit(EXIT_USAGE) from None


@app.command(cls=_ConfigFirst)
def run(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
        log_level: str = typer.Option(None, help="override [controller] log_level"),
        log_json: bool = typer.Option(False, "--log-json", help="log one JSON object per line"),
        log_levels: str = typer.Option(None, "--log-levels",
                                       help="per-module levels, e.g. drivers=DEBUG,asyncua=WARNING"),
        log_rate_limit: float = typer.Option(10.0, help="seconds between repeats of one log message "
                                                        "(0: no limit)")) -> None:
    """Run the controller service until SIGTERM or Ctrl-C."""
    import asyncio
    import signal

    from controller.logs import parse_level, parse_module_levels, setup_logging
    from controller.runtime import Controller
    from models import ModelError

    try:
        modules = parse_module_levels(log_levels)
        if log_level is not None:
            parse_level(log_level)
    except ValueError as exc:
        raise fail(str(exc)) from None
    from controller.config import secret_values
    from controller.logs import register_secret
    from controller.sinks.config import SyncConfigError

    cfg = load_or_exit(config)
    try:
        for value in secret_values(cfg):  # before the first log line: no level may print them
            register_secret(value)
    except SyncConfigError as exc:
        raise fail(str(exc)) from None
    setup_logging(log_level or cfg.controller.log_level, json=log_json, module_levels=modules,
                  rate_limit_s=log_rate_limit)
    try:
        controller = Controller(cfg)
    except (LinesentryError, ModelError, OSError, SyncConfigError) as exc:  # e.g. a driver plugin's create()
        raise fail(str(exc)) from None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, controller.stop)
        await controller.run(on_ready=lambda c: terminal().print(
            f"linesentry running: API http://{cfg.controller.api_host}:{c.api_port}"))

    try:
        asyncio.run(main())
    except LinesentryError as exc:  # e.g. a model refused at start (ModelLoadError), a sync setting
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None


@app.command(cls=_ConfigFirst)
def validate(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
             connect: bool = typer.Option(False, "--connect", help="also open a session to every PLC and "
                                          "read every tag once (exit 1 if a PLC or a tag fails)")) -> None:
    """Check a line config and print what it describes; with --connect, reach every PLC too."""
    import asyncio

    from rich.table import Table

    cfg = load_or_exit(config)
    probes = asyncio.run(probe_plcs(cfg)) if connect else {}
    table = Table(title=f"{config}: OK")
    for col in ("PLC", "protocol", "endpoint", "tags", "writable", *(("reachable",) if connect else ())):
        table.add_column(col)
    for _, plc in cfg.plcs():
        d = plc.driver
        row = [plc.name, plc.protocol, d.endpoint, str(len(d.tags)), str(sum(t.writable for t in d.tags))]
        table.add_row(*row, *((probes[plc.name].summary,) if connect else ()))
    terminal().print(table)
    say(f"detector: {len(cfg.detector_tags())} tags, model {cfg.detector.model or 'none'}; "
        f"{len(cfg.alarms)} alarms, {len(cfg.actions)} actions; "
        f"cloud sync {'on' if cfg.sync and cfg.sync.enabled else 'off'}")
    # One line per bad tag, never wrapped or cut (piped output is 80 columns wide otherwise).
    for name, probe in probes.items():
        for line in ([f"cannot reach {name}: {probe.error}"] if probe.error else []) + [
                f"bad tag {name}.{tag}: {reason}" for tag, reason in probe.bad] + (
                [f"hint: {probe.hint}"] if probe.hint else []):
            say(line)
    unreachable = [name for name, probe in probes.items() if not probe.reached]
    if unreachable:
        raise fail(f"cannot reach PLC(s) {', '.join(unreachable)}: see the lines above", EXIT_RUNTIME)
    bad = sum(len(p.bad) for p in probes.values())
    if bad:
        plcs = ", ".join(name for name, p in probes.items() if p.bad)
        raise fail(f"{bad} tag(s) not good on PLC(s) {plcs}: see the lines above", EXIT_RUNTIME)


async def probe_plcs(cfg: LineConfig) -> dict[str, ProbeReport]:
    """Probe every PLC at once through its driver plugin: connect, read each tag once, close."""
    import asyncio
    import logging

    from drivers import registry
    from drivers.probe import ProbeReport

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the drivers report every failure themselves

    async def one(plc) -> ProbeReport:
        probe = registry.plugin(plc.protocol).probe
        if probe is None:
            return ProbeReport(reached=False, error=f"the {plc.protocol} driver cannot probe a PLC")
        return await probe(plc.driver)

    plcs = [p for _, p in cfg.plcs()]
    reports = await asyncio.gather(*(one(p) for p in plcs))
    return {p.name: r for p, r in zip(plcs, reports, strict=True)}


@app.command(cls=_ConfigFirst)
def record(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
           minutes: float = typer.Option(10.0, help="how long to record"),
           out: Path = typer.Option(..., "-o", "--out", help="CSV file to write")) -> None:
    """Record live detector-tag values from the PLCs (normal operation, for `fit`)."""
    import asyncio

    from controller.record import Gaps, write_csv
    from controller.record import record as do_record

    cfg = load_or_exit(config)
    gaps = Gaps()
    with terminal().status(f"recording {minutes:g} min from {len(list(cfg.plcs()))} PLC(s)..."):
        times, values, tags = asyncio.run(do_record(cfg, minutes * 60.0, gaps=gaps))
    if len(times) == 0:
        why = f"incomplete because of {gaps.summary()}" if gaps.rows else "no data arrived"
        raise fail(f"no complete rows recorded: {why}", EXIT_RUNTIME)
    write_csv(out, times, values, tags)
    say(f"wrote {len(times)} rows x {len(tags)} tags to {out}")
    if gaps.dropped:
        say(f"left out {gaps.dropped} incomplete rows, because of {gaps.summary()}")


class _OptionalValue(_ConfigFirst):
    """`fit --history [DIR]`: the option alone (last, or before another option) means "" (the
    default directory); typer's click has no options with an optional value, so it is put in."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = list(args)
        for k, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--history" and (k + 1 == len(args) or args[k + 1].startswith("-")):
                args.insert(k + 1, "")
                break
        return super().parse_args(ctx, args)


@app.command(cls=_OptionalValue)
def fit(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
        data: Path = typer.Argument(None, help="CSV of normal operation: time,<tag>,... (or --history)",
                                    show_default=False),
        out: Path = typer.Option(None, "-o", "--out", help="model file (default: [detector] model)"),
        history: str = typer.Option(None, "--history", metavar="[DIR]", show_default=False,
                                    help="fit on the controller's recorded history (default DIR: [history] "
                                         "dir, <state_dir>/history), alarm periods and bad data left out"),
        days: float = typer.Option(None, "--days", help="with --history: the last N days (default: "
                                                        "[history] keep_days)", show_default=False),
        margin_s: float = typer.Option(None, "--margin-s", help="with --history: also leave out rows this "
                                       "close to an alarm (default 60 s, or 2x the longest alarm delays)",
                                       show_default=False),
        min_rows: int = typer.Option(None, "--min-rows", show_default=False,
                                     help="with --history: refuse below this many rows "
                                          "(default 1/(target_far x holdout_fraction))")) -> None:
    """Fit the detector's models and thresholds on normal data and write the model artifact."""
    import numpy as np
    from rich.table import Table

    from models import StreamingDetector

    if (data is None) == (history is None):
        raise fail("give the CSV of normal operation or --history [DIR] (one of them)")
    if history is None and (days, margin_s, min_rows) != (None, None, None):
        raise fail("--days, --margin-s and --min-rows go with --history")
    cfg = load_or_exit(config)
    target = out or cfg.detector.model
    if target is None:
        raise fail("no model path: pass -o model.npz or set [detector] model in the config")
    tags = cfg.detector_tags()
    if history is not None:
        from controller.history_read import HistoryError, history_training

        try:
            rows, notes = history_training(cfg, history, days=days, margin_s=margin_s, min_rows=min_rows)
        except HistoryError as exc:
            raise fail(str(exc)) from None
        for note in notes:
            say(note)
        times, values, data = rows.times, rows.values, "the history"
    else:
        times, values = _read_csv(data, tags)
    try:
        det = StreamingDetector(tags, cfg.detector_spec(), dict(cfg.detector.units)).fit(values, times)
    except (ValueError, OverflowError) as exc:
        raise fail(f"{data}: {exc}") from None
    except MemoryError:
        raise fail(f"{data}: out of memory fitting the models: lower iforest_trees / iforest_max_samples "
                   "in [detector.spec] or fit on fewer rows", EXIT_RUNTIME) from None
    det.save(target)
    s = det.summary
    table = Table(title=f"model written to {target}")
    table.add_column("")
    table.add_column("")
    table.add_row("training rows", f"{s['rows']} (fit {s['fit_rows']}, calibration {s['calibration_rows']})")
    if "pca" in s:
        table.add_row("PCA", f"{s['pca']['components']} components, "
                             f"{s['pca']['explained_variance']:.1%} of the variance")
    table.add_row("line threshold", f"{s['threshold_on']:.4f} (off {s['threshold_off']:.4f})")
    table.add_row("calibration exceedance", f"{s['calibration_exceedance']:.4%} of rows")
    for key in ("constant_tags", "shifted_tags"):
        if s[key]:
            table.add_row(key.replace("_", " "), ", ".join(s[key]), style="yellow")
    terminal().print(table)
    if not np.isfinite(s["threshold_on"]):
        raise fail("the calibrated threshold is not finite: the data is too short or constant")


def _read_csv(path: Path, tags: list[str]) -> Any:
    from controller.replay import ReplayError, read_csv

    try:
        return read_csv(path, tags)
    except ReplayError as exc:
        raise fail(str(exc)) from None


# ---------------------------------------------------------------- talking to a running service
def _api(config: Path, method: str, path: str, body: dict | None = None, timeout: float = 5.0) -> Any:
    """One API call for `config`'s controller (ApiError, a LinesentryError, ends the command in one line)."""
    from controller.client import call

    return call(controller_section_or_exit(config), method, path, body, timeout=timeout)


def _segment(name: str) -> str:
    """An alarm or action name as one URL path segment ('a/b?c' must not reach another endpoint)."""
    from urllib.parse import quote

    return quote(name, safe="")


@contextmanager
def reply_of(path: str) -> Iterator[None]:
    """Reading an API answer: one that lacks a key or has a wrong type (another version, a proxy,
    not linesentry at all) is one line and exit 1, not an internal error."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise fail(f"unexpected reply from the controller on {path}: {type(exc).__name__}: "
                   f"{_first_line(exc)[:200]} (is it a linesentry controller of this version?)",
                   EXIT_RUNTIME) from None


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m', '45' (seconds) -> seconds; ValueError when not a positive duration.

    >>> parse_duration("1h30m"), parse_duration("90s"), parse_duration("45")
    (5400.0, 90.0, 45.0)
    """
    import re

    t = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh])", t)
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        seconds = float(t)
    elif parts and re.fullmatch(r"(?:\d+(?:\.\d+)?\s*[smh]\s*)+", t):
        seconds = sum(float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    else:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 30m, 2h or 1h30m")
    if not 0 < seconds < 1e9:  # 400 nines are inf, which JSON cannot carry
        raise ValueError(f"bad duration {text[:40]!r}: must be more than 0 and less than 1e9 s")
    return seconds


def status_lines(s: dict) -> list[tuple[str, str]]:
    """The status below the PLC table as (text, style) lines: the detector line, then the standing
    indication of every protection that will not act now and what the last start restored (older
    services without these keys show none of it)."""
    d = s["detector"]
    p99 = "-" if d.get("step_p99_us") is None else f"{d['step_p99_us']:.1f} µs"  # None: no step yet
    lines = [(f"line score {d['score']:.3f} (alarm: {d['alarm']}); step p99 {p99}; "
              f"active alarms: {', '.join(s['alarms']['active']) or 'none'}; "
              f"outbox {s['outbox']['points']} points", "")]
    if d.get("explanation"):  # why the line alarm is on (controller.explanation)
        lines.append((f"why: {d['explanation']['text']}", "red"))
    if "protections_disabled" in s:
        disabled = s["protections_disabled"]
        if disabled:
            lines.append((f"PROTECTIONS DISABLED: {len(disabled)}", "bold red"))
            lines += [(f"  {p['message']}", "red") for p in disabled]
        else:
            lines.append(("protections: all armed", "green"))
        lines += [(r, "yellow") for r in s.get("restored") or []]
    return lines


PLC_COLUMNS = ("PLC", "state", "reads", "errors", "last error")


def _plc_rows(s: dict) -> list[list[str]]:
    return [[p["name"], p["state"], str(p["reads"]), str(p["read_errors"]), p["last_error"]]
            for p in s["plcs"]]


def _status_title(s: dict) -> str:
    return f"{s['controller']['line']} / {s['controller']['name']}"


def _print_status(s: dict) -> None:
    print_table(PLC_COLUMNS, _plc_rows(s), title=_status_title(s))
    from controller.client import one_line

    for text, style in status_lines(s):
        text = " " * (len(text) - len(text.lstrip(" "))) + one_line(text, limit=None)  # keeps the indent
        color = {"bold red": "1;31", "red": "31", "green": "32", "yellow": "33"}.get(style)
        say(_styled(text, color, sys.stdout) if color else text)


def _status_view(s: dict) -> Any:
    """The same status as a rich renderable, for `status --watch`."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=_status_title(s))
    for col in PLC_COLUMNS:
        table.add_column(col)
    for row in _plc_rows(s):
        table.add_row(*row)
    return Group(table, *(Text(text, style=style) for text, style in status_lines(s)))


@app.command(cls=_ConfigFirst)
def status(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
           as_json: bool = typer.Option(False, "--json", help="print JSON"),
           watch: bool = typer.Option(False, "--watch", "-w", help="refresh every second until Ctrl-C")
           ) -> None:
    """PLCs, detector, active alarms and outbox of a running controller."""
    if watch and as_json:
        raise fail("--watch and --json cannot be combined")
    if not watch:
        s = _api(config, "GET", "/status")
        with reply_of("/status"):
            if as_json:
                say(json.dumps(s, indent=2))
            else:
                _print_status(s)
        return
    _watch_status(controller_section_or_exit(config))


def _watch_status(section: ControllerSection) -> None:
    """`status --watch`: the status every second under the time it was fetched; a poll that fails
    after the first keeps the last status on screen, marked "NOT UPDATED since". On a terminal
    it redraws in place (rich Live); piped, each status is printed in turn as plain lines."""
    import time

    from controller.client import ApiError, call

    last: dict = call(section, "GET", "/status")  # the first failure ends the command (one line)
    updated = time.time()

    def poll() -> tuple[str, bool]:
        nonlocal last, updated
        try:
            last, updated = call(section, "GET", "/status"), time.time()
        except ApiError as exc:
            return f"NOT UPDATED since {clock(updated)}: {exc}", False
        return f"updated {clock(updated)}", True

    note, fresh = f"updated {clock(updated)}", True
    try:
        with reply_of("/status"):
            if not sys.stdout.isatty():
                while True:
                    say(note)
                    _print_status(last)
                    say("")
                    time.sleep(1.0)
                    note, fresh = poll()
            from rich.console import Group
            from rich.live import Live
            from rich.text import Text

            def view() -> Any:
                return Group(Text(note, style="" if fresh else "bold red"), _status_view(last))

            with Live(view(), console=terminal(), auto_refresh=False) as live:
                while True:
                    time.sleep(1.0)
                    note, fresh = poll()
                    live.update(view(), refresh=True)
    except KeyboardInterrupt:
        return


def _choices(value: str | None, allowed: tuple[str, ...], option: str, upper: bool) -> set[str] | None:
    if value is None:
        return None
    picked = {(v.strip().upper() if upper else v.strip().lower()) for v in value.split(",") if v.strip()}
    bad = sorted(picked - set(allowed))
    if bad or not picked:
        raise fail(f"{option}: unknown value {', '.join(bad) or repr(value)} (choose from "
                   f"{', '.join(allowed)}; comma-separate several)")
    return picked


@app.command(cls=_ConfigFirst)
def alarms(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
           as_json: bool = typer.Option(False, "--json", help="print JSON"),
           state: str = typer.Option(None, "--state", help="only these states, e.g. UNACK or UNACK,ACKED"),
           priority: str = typer.Option(None, "--priority", help="only these priorities, e.g. critical")
           ) -> None:
    """Every alarm of a running controller and its ISA-18.2 state."""
    from controller.alarms import AlarmState

    states = _choices(state, tuple(AlarmState), "--state", upper=True)
    priorities = None
    if priority is not None:
        from controller.config.alarms import PRIORITIES

        priorities = _choices(priority, PRIORITIES, "--priority", upper=False)
    answer = _api(config, "GET", "/alarms")
    with reply_of("/alarms"):
        rows = [a for a in answer
                if (states is None or str(a.get("state", "")).upper() in states)
                and (priorities is None or str(a.get("priority", "")).lower() in priorities)]
        if as_json:
            say(json.dumps(rows, indent=2))
            return
        print_table(("alarm", "state", "priority", "since", "acked by", "shelved until", "message"),
                    [[a["name"], a["state"], a["priority"], clock(a.get("since")),
                      (a.get("acked_by") or "-") if a["state"] == "ACKED" else "-",
                      f"{clock(a['shelved_until'])} by {a.get('shelved_by') or '?'}"
                      if a.get("shelved_until") else "-", a["message"] or "-"] for a in rows])


def clock(wall: float | None, now: float | None = None) -> str:
    """A wall time as an operator reads it: the local time of day, with the date when not today.

    >>> import time
    >>> t = time.time()
    >>> clock(t) == time.strftime("%H:%M:%S", time.localtime(t)), clock(None), clock(t - 3 * 86400)[4]
    (True, '-', '-')
    """
    import time

    if wall is None:
        return "-"
    when, today = time.localtime(float(wall)), time.localtime(time.time() if now is None else now)
    same_day = when[:3] == today[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", when)


REASON_HELP = "why (required; kept with the change and shown in status and events)"


@app.command(cls=_ConfigFirst)
def ack(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
        alarm: str = typer.Argument(..., help="alarm name"),
        user: str = typer.Option("operator", help="who acknowledges")) -> None:
    """Acknowledge an alarm (one that needs no acknowledgement says so, exit 0)."""
    _done(f"{alarm} acknowledged", _api(config, "POST", f"/alarms/{_segment(alarm)}/ack", {"user": user}))


@app.command(cls=_ConfigFirst)
def shelve(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
           alarm: str = typer.Argument(..., help="alarm name"),
           duration: str = typer.Option(..., "--for", help="how long: 90s, 30m, 2h, 1h30m"),
           user: str = typer.Option("operator", help="who shelves"),
           reason: str = typer.Option(None, "--reason", help=REASON_HELP)) -> None:
    """Shelve an alarm for a while (it returns by itself; up to the alarm's max_shelve_s)."""
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise fail(str(exc)) from None
    _need_reason(reason, f"shelve {alarm}")
    answer = _api(config, "POST", f"/alarms/{_segment(alarm)}/shelve", {"user": user, "seconds": seconds,
                                                               "reason": reason})
    _done(f"{alarm} shelved for {_human(seconds)}", answer)


def _need_reason(reason: str | None, what: str) -> None:
    if reason is None or not reason.strip():
        raise fail(f"a reason is required to {what}: add --reason TEXT")


def _done(text: str, answer: Any) -> None:
    """What the request did, then what protection it disables, if any; or, when it changed
    nothing ("changed": false), the controller's reason why (already acknowledged, not latched)."""
    if isinstance(answer, dict) and answer.get("changed") is False:
        say(str(answer.get("message") or f"{text}: nothing changed"))
        return
    say(text)
    warning = answer.get("warning") if isinstance(answer, dict) else None
    if warning:
        warn(str(warning))


def _human(seconds: float) -> str:
    """
    >>> _human(7200), _human(5400), _human(90)
    ('2 h', '90 min', '90 s')
    """
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


@app.command(cls=_ConfigFirst)
def unshelve(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
             alarm: str = typer.Argument(..., help="alarm name"),
             user: str = typer.Option("operator", help="who unshelves")) -> None:
    """Return a shelved alarm to service now."""
    _done(f"{alarm} unshelved", _api(config, "POST", f"/alarms/{_segment(alarm)}/unshelve", {"user": user}))


@app.command("out-of-service", cls=_ConfigFirst)
def out_of_service(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
                   alarm: str = typer.Argument(..., help="alarm name"),
                   off: bool = typer.Option(False, "--off", help="return it to service"),
                   user: str = typer.Option("operator", help="who does it"),
                   reason: str = typer.Option(None, "--reason", help=REASON_HELP + " (not with --off)")
                   ) -> None:
    """Take an alarm out of service (maintenance: it never annunciates nor drives its actions), or
    return it to service with --off. Needs the engineer role."""
    if not off:
        _need_reason(reason, f"take {alarm} out of service")
    answer = _api(config, "POST", f"/alarms/{_segment(alarm)}/out-of-service",
                  {"user": user, "enabled": not off, "reason": reason or ""})
    _done(f"{alarm} {'returned to service' if off else 'out of service'}", answer)


@app.command(cls=_ConfigFirst)
def reset(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
          action: str = typer.Argument(..., help="action name"),
          user: str = typer.Option("operator", help="who resets"),
          reason: str = typer.Option(None, "--reason", help=REASON_HELP)) -> None:
    """Reset a latched or failed action (it can fire again on its alarm's next activation)."""
    _need_reason(reason, f"reset {action}")
    answer = _api(config, "POST", f"/actions/{_segment(action)}/reset", {"user": user, "reason": reason})
    message = answer.get("message") if isinstance(answer, dict) else None
    _done(str(message or f"{action} reset"), answer)


@app.command(cls=_ConfigFirst)
def inhibit(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
            action: str = typer.Argument(..., help="action name"),
            off: bool = typer.Option(False, "--off", help="lift the inhibit"),
            user: str = typer.Option("operator", help="who inhibits"),
            reason: str = typer.Option(None, "--reason", help=REASON_HELP + " (not with --off)")) -> None:
    """Inhibit an action (it decides but does not write), or lift the inhibit with --off."""
    if not off:
        _need_reason(reason, f"inhibit {action}")
    answer = _api(config, "POST", f"/actions/{_segment(action)}/inhibit",
                  {"user": user, "enabled": not off, "reason": reason or ""})
    _done(f"{action} {'no longer inhibited' if off else 'inhibited'}", answer)


model_app = typer.Typer(help="The detector model of a running controller.", no_args_is_help=True)
app.add_typer(model_app, name="model")
RELOAD_TIMEOUT_S = 120.0  # loading and warming up a model (JIT compilation) takes seconds, not 5 s


@model_app.command("reload", cls=_ConfigFirst)
def model_reload(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
                 model: Path = typer.Option(None, "--model", help="load this model file instead "
                                                                  "(default: the one in use)"),
                 user: str = typer.Option("operator", help="who reloads")) -> None:
    """Load the model file again, or another one, without a restart: the running model stays if
    the new one is refused (exit 1, the controller's reason). Needs the engineer role."""
    body: dict = {"user": user}
    if model is not None:
        body["path"] = str(model.resolve())  # the service's working directory is not ours
    answer = _api(config, "POST", "/model/reload", body, timeout=RELOAD_TIMEOUT_S)
    with reply_of("/model/reload"):
        say(f"model reloaded from {answer['model']} (threshold {float(answer['threshold']):.4f})")


def _register_model_commands() -> None:
    """push, list, promote, rollback (controller/cli_models.py: the registry and the fleet rollout)."""
    from controller.cli_models import register

    register(model_app, say=say, print_table=print_table)


_register_model_commands()


def _when(e: dict) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(float(e.get("time", 0))).isoformat(sep=" ", timespec="milliseconds")


def _by(e: dict) -> str:
    """Who caused an event: the user and role of an operator request, "-" for the controller's own."""
    user = e.get("user") or ""
    return (f"{user} ({e['role']})" if e.get("role") else user) or "-"


def event_line(e: dict) -> str:
    """One event as one text line: id, local time, kind, source, message, [other fields]."""
    from controller.client import one_line

    extra = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("id", "time", "kind", "source", "message"))
    return one_line(f"{e.get('id')} {_when(e)} {e.get('kind')} {e.get('source')}: {e.get('message')}" + (
        f" [{extra}]" if extra else ""), limit=None)


def print_event(e: dict, as_json: bool) -> None:
    """One event on stdout: compact JSON (jq-friendly) or `event_line`."""
    say(json.dumps(e) if as_json else event_line(e))


@app.command(cls=_ConfigFirst)
def events(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
           follow: bool = typer.Option(False, "--follow", "-f", help="stream new events until Ctrl-C"),
           since: int = typer.Option(None, "--since", min=0, help="the events after this id (ids go on "
                                     "across restarts; 0: from the oldest kept)"),
           last: int = typer.Option(50, "--last", min=1, help="without --since: the newest N events"),
           as_json: bool = typer.Option(False, "--json", help="one JSON object per line")) -> None:
    """Alarm, action, operator, driver and model events of a running controller, from its durable
    journal (one page, or --follow)."""
    if since is None:  # like tail: the newest events (a service without ids in /status: from the oldest)
        with reply_of("/status"):
            newest = int((_api(config, "GET", "/status").get("events") or {}).get("last_id", 0))
        since = max(0, newest - last)
    if not follow:
        page = _api(config, "GET", f"/events?since={since}")
        with reply_of("/events"):
            if as_json:
                for e in page:
                    print_event(e, True)
                return
            print_table(("id", "time", "kind", "source", "by", "message"),
                        [[str(e["id"]), _when(e), e["kind"], e["source"], _by(e), e["message"]]
                         for e in page])
        return
    from http.client import HTTPException

    from controller.client import MAX_REPLY_BYTES, request

    section = controller_section_or_exit(config)
    try:
        # The server sends a keep-alive every 15 s: 60 s of silence means it is gone.
        with request(section, "GET", f"/events/stream?since={since}", timeout=60.0) as response, \
                reply_of("/events/stream"):
            data: list[str] = []
            while raw := response.readline(MAX_REPLY_BYTES + 1):
                if len(raw) > MAX_REPLY_BYTES or sum(map(len, data)) > MAX_REPLY_BYTES:
                    raise fail(f"the event stream sent an event over {MAX_REPLY_BYTES >> 20} MiB",
                               EXIT_RUNTIME)
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    print_event(json.loads("\n".join(data)), as_json)
                    data = []
    except KeyboardInterrupt:
        return
    except (OSError, HTTPException) as exc:
        raise fail(f"lost the event stream: {exc or type(exc).__name__}", EXIT_RUNTIME) from None
    raise fail("the controller closed the event stream (stopped?)", EXIT_RUNTIME)


# ---------------------------------------------------------------- offline tools
@app.command(cls=_ConfigFirst)
def replay(config: Path = typer.Argument(None, help=CONFIG_HELP, show_default=False),
           data: Path = typer.Argument(..., help="CSV time,<tag>,... (as written by `linesentry record`)"),
           out: Path = typer.Option(None, "-o", "--out", help="write time,score,alarm,<tag>_flags,... CSV"),
           plot_to: Path = typer.Option(None, "--plot", help="draw tags, line score and alarms to a PNG"),
           model: Path = typer.Option(None, "--model", help="model file (default: [detector] model)")
           ) -> None:
    """Replay recorded data through a fitted model offline: scores, flags, alarms and a plot."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from controller import replay as rp
    from models import ModelError, load_model

    if plot_to is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise fail(rp.PLOT_EXTRA_HINT) from None
    cfg = load_or_exit(config)
    path = model or cfg.detector.model
    if path is None:
        raise fail("no model: pass --model model.npz or set [detector] model in the config")
    tags = cfg.detector_tags()
    try:
        det = load_model(path, expected_tags=tags)
    except ModelError as exc:
        raise fail(str(exc)) from None
    times, values = _read_csv(data, tags)
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                  TimeRemainingColumn(), console=terminal(), transient=True) as progress:
        task = progress.add_task("replay", total=len(times))
        result = rp.replay(det, times, values, progress=lambda n: progress.advance(task, n))
    s = rp.summarize(times, result, tags)
    try:
        if out is not None:
            rp.write_scores(out, times, result, tags)
        if plot_to is not None:
            rp.plot(plot_to, times, values, tags, result, det.threshold, dict(cfg.detector.units),
                    actuators=rp.read_actuators(data, rp.actuator_tags(cfg)))
    except OSError as exc:
        raise fail(f"cannot write {exc.filename}: {exc.strerror}", EXIT_RUNTIME) from None
    table = Table(title=f"replay of {data}", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("rows", f"{s.rows} ({times[-1] - times[0]:.1f} s)")
    table.add_row("alarm rows", f"{s.alarm_rows} ({s.alarm_rows / s.rows:.2%})")
    table.add_row("alarm intervals", str(s.alarm_intervals))
    table.add_row("max line score", f"{s.max_score:.4f} at t={s.max_score_time:.3f} "
                                    f"(threshold {det.threshold:.4f})")
    flagged = [f"{t} {n}" for t, n in s.flagged_rows.items() if n]
    table.add_row("flagged rows per tag", ", ".join(flagged) or "none")
    terminal().print(table)
    for what, target in (("scores", out), ("plot", plot_to)):
        if target is not None:
            say(f"{what} written to {target}")


certs_app = typer.Typer(help="OPC UA client certificates.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


@certs_app.command("create")
def certs_create(out: Path = typer.Option(..., "--out", help="directory for the certificate and key"),
                 uri: str = typer.Option("urn:linesentry:client", "--uri",
                                         help="application URI (put in the SubjectAltName)"),
                 host: str = typer.Option(None, "--host", help="DNS name in the certificate (default: "
                                                               "this host's name)"),
                 days: int = typer.Option(365, min=1, help="validity in days"),
                 force: bool = typer.Option(False, "--force", help="overwrite existing files")) -> None:
    """Create a self-signed OPC UA client certificate (DER) and private key (PEM, mode 0600)."""
    import re
    import socket

    from drivers.opcua.security import create_client_certificate

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", uri):
        raise fail(f"--uri {uri!r} is not a URI: use e.g. urn:linesentry:line1-controller")
    host = host or socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
        raise fail(f"--host {host!r} is not a DNS name")
    cert, key = out / "client.der", out / "client_key.pem"
    existing = [str(p) for p in (cert, key) if p.exists()]
    if existing and not force:
        raise fail(f"{', '.join(existing)} already exist(s): pass --force to overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
        create_client_certificate(cert, key, uri, host, days=days)
    except OSError as exc:
        raise fail(f"cannot write to {out}: {exc.strerror}", EXIT_RUNTIME) from None
    say(f"certificate {cert}\nprivate key {key} (mode 0600)\napplication URI {uri}, host {host}, "
        f"valid {days} days")
    say("set security.client_certificate / client_private_key to these paths and trust the "
        "certificate on the PLC")


@certs_app.command("fetch")
def certs_fetch(endpoint: str = typer.Argument(..., help="opc.tcp://host:port[/path] of the PLC"),
                out: Path = typer.Option(None, "--out", help="write the server certificate here (DER)"),
                timeout: float = typer.Option(5.0, min=0.1, help="seconds to wait for the server")) -> None:
    """Get a PLC's server certificate (GetEndpoints) and print its SHA-256 fingerprint for pinning."""
    import asyncio
    from urllib.parse import urlparse

    from drivers.errors import DriverError
    from drivers.opcua.security import fetch_server_certificate, fingerprint

    if urlparse(endpoint).scheme != "opc.tcp" or not urlparse(endpoint).hostname:
        raise fail(f"endpoint {endpoint!r} must look like opc.tcp://host:4840[/path]")

    async def fetch() -> bytes:
        async with asyncio.timeout(timeout * 2):
            return await fetch_server_certificate(endpoint, timeout)

    try:
        der = asyncio.run(fetch())
    except DriverError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None
    except TimeoutError:
        raise fail(f"{endpoint}: no answer within {timeout:g} s", EXIT_RUNTIME) from None
    except ConnectionRefusedError:
        raise fail(f"{endpoint}: connection refused (server down or wrong port)", EXIT_RUNTIME) from None
    except OSError as exc:
        raise fail(f"{endpoint}: cannot connect: {exc.strerror or exc}", EXIT_RUNTIME) from None
    if out is not None:
        try:
            out.write_bytes(der)
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc.strerror}", EXIT_RUNTIME) from None
    say(f"sha256 Fingerprint={fingerprint(der)}")
    if out is not None:
        say(f"written to {out}: set security.server_certificate = \"{out}\" (or "
            "security.server_certificate_sha256 to the fingerprint) after checking it on the PLC")


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as dist_version

    say(dist_version("linesentry"))


def _names(commands: list[Any], groups: list[Any]) -> set[str]:
    """The command names of typer's CommandInfo / TyperInfo entries (a function's name by default)."""
    return {c.name or c.callback.__name__.replace("_", "-") for c in commands if c.callback is not None} | {
        g.name for g in groups if g.name}


@cache
def load_plugins() -> None:
    """Add the commands of every `linesentry.cli` entry point (the rig's demo/sim/hil), once. Cheap
    by contract: a plugin's `register` imports only typer, its commands import the rest when run.

    A broken plugin (does not import, `register` raises, even SystemExit) adds nothing and is one
    `warning:` line on stderr: the product's own commands keep working. Nor can a plugin replace a
    command that exists already (a plugin's `status` would answer for the product)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        commands, groups = len(app.registered_commands), len(app.registered_groups)
        taken = _names(app.registered_commands, app.registered_groups)
        try:
            ep.load()(app)
        except (Exception, SystemExit) as exc:
            problem = f"failed to load: {type(exc).__name__}: {_first_line(exc)[:200]}"
        else:
            clash = taken & _names(app.registered_commands[commands:], app.registered_groups[groups:])
            problem = f"tried to replace the command(s) {', '.join(sorted(clash))}" if clash else ""
        if problem:
            del app.registered_commands[commands:], app.registered_groups[groups:]
            print(f"{_styled('warning:', '33', sys.stderr)} CLI plugin {ep.name!r} ({ep.value}) {problem}; "
                  "its commands are not available (reinstall or remove that package)", file=sys.stderr)

