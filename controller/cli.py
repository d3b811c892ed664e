"""The `linesentry` command line (typer + rich).

Exit codes: 0 success; 1 a runtime failure (service not reachable, PLC error);
2 a user mistake (bad config, bad arguments, missing file). Errors are one line
on stderr, never a traceback: `_App` turns anything no command handled into one
line and exit 1 (LINESENTRY_DEBUG=1 shows the traceback, for bug reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

EXIT_RUNTIME, EXIT_USAGE = 1, 2


class _App(typer.Typer):
    """The entry point: whatever escapes a command becomes one line on stderr, never a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("LINESENTRY_DEBUG"):
                raise
            code, message = describe_error(exc)
            err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
            sys.exit(code)


def describe_error(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an exception no command handled."""
    from controller.config import ConfigError
    from controller.sync import SyncConfigError

    if isinstance(exc, ConfigError | SyncConfigError):
        return EXIT_USAGE, str(exc).splitlines()[0]
    if isinstance(exc, MemoryError):
        return EXIT_RUNTIME, "out of memory: lower the model sizes in [detector.spec] or use less data"
    if isinstance(exc, OSError):
        return EXIT_RUNTIME, (f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror
                              else str(exc) or type(exc).__name__)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return EXIT_RUNTIME, (f"internal error: {type(exc).__name__}: {first[:300]} "
                          "(run with LINESENTRY_DEBUG=1 for the traceback and report it)")


app = _App(help="linesentry: industrial anomaly detection controller.", no_args_is_help=True,
           add_completion=False, pretty_exceptions_enable=False)
console = Console(emoji=False)  # ":ab:" in a fingerprint or a tag name is text, not an emoji
err = Console(stderr=True, emoji=False)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _load(config: Path):
    from controller.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        for line in exc.problems:
            err.print(f"[red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def run(config: Path = typer.Argument(..., help="line config (TOML)"),
        log_level: str = typer.Option(None, help="override [controller] log_level"),
        log_json: bool = typer.Option(False, "--log-json", help="log one JSON object per line"),
        log_levels: str = typer.Option(None, "--log-levels",
                                       help="per-module levels, e.g. drivers=DEBUG,asyncua=WARNING"),
        log_rate_limit: float = typer.Option(10.0, help="seconds between repeats of one log message "
                                                        "(0: no limit)")) -> None:
    """Run the controller service until SIGTERM or Ctrl-C."""
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
    from controller.sync import SyncConfigError

    cfg = _load(config)
    try:
        for value in secret_values(cfg):  # before the first log line: no level may print them
            register_secret(value)
    except SyncConfigError as exc:
        raise fail(str(exc)) from None
    setup_logging(log_level or cfg.controller.log_level, json=log_json, module_levels=modules,
                  rate_limit_s=log_rate_limit)
    try:
        controller = Controller(cfg)
    except (ModelError, OSError, SyncConfigError) as exc:
        raise fail(str(exc)) from None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, controller.stop)
        await controller.run(on_ready=lambda c: console.print(
            f"linesentry running: API http://{cfg.controller.api_host}:{c.api_port}"))

    try:
        asyncio.run(main())
    except SyncConfigError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None


@app.command()
def demo(config: Path = typer.Option(None, help="line config (default: configs/demo_line.toml)"),
         seconds: float = typer.Option(None, help="stop after this many seconds (default: Ctrl-C)"),
         live: bool = typer.Option(True, help="live terminal view (--no-live: one line per event)"),
         fault_every: float = typer.Option(20.0, help="seconds between injected faults")) -> None:
    """The demo line: simulated plant + controller on configs/demo_line.toml, with injected faults."""
    from hil_tests.rig.demo import DEMO_CONFIG, run_demo

    _load(config or DEMO_CONFIG)  # a bad config is a one-line usage error, like everywhere else
    logging.basicConfig(level=logging.ERROR)
    try:
        log = asyncio.run(run_demo(config or DEMO_CONFIG, seconds=seconds, live=live,
                                   fault_every_s=fault_every, console=console))
    except KeyboardInterrupt:
        return
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: is another demo or simulator using ports 4840/5020?",
                   EXIT_RUNTIME) from None
    table = Table(title="demo summary", caption="demo loop resolution 0.1 s; "
                  "python -m benchmarks.hil_latency measures onset -> write precisely")
    for col in ("fault injected", "first alarm", "line stopped after"):
        table.add_column(col)
    for i, (t, what) in enumerate(log.faults):
        until = log.faults[i + 1][0] if i + 1 < len(log.faults) else float("inf")
        stop, first = log.first_after(t, until), log.first_alarm_after(t, until)
        table.add_row(what, "-" if first is None else f"{first[1]} after {(first[0] - t) * 1000:.0f} ms",
                      "-" if stop is None else f"{(stop - t) * 1000:.0f} ms")
    console.print(table)


@app.command()
def sim(opcua_port: int = typer.Option(4840, help="OPC UA port on 127.0.0.1"),
        modbus_port: int = typer.Option(5020, help="Modbus TCP port on 127.0.0.1"),
        seed: int = typer.Option(0, help="noise seed of the simulated plant"),
        scenario: Path = typer.Option(None, help="play the faults of this scenario TOML")) -> None:
    """Serve the simulated plant (OPC UA 4840, Modbus 5020 on 127.0.0.1) until Ctrl-C."""
    from hil_tests.rig.plant import main as serve

    argv = ["--opcua-port", str(opcua_port), "--modbus-port", str(modbus_port), "--seed", str(seed)]
    if scenario is not None:
        if not scenario.is_file():
            raise fail(f"--scenario {scenario}: no such file")
        argv += ["--scenario", str(scenario)]
    try:
        serve(argv)
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: is another demo or simulator using ports "
                   f"{opcua_port}/{modbus_port}?", EXIT_RUNTIME) from None


@app.command()
def hil(scenario: Path = typer.Argument(..., help="scenario file (hil_tests/rig/scenarios/*.toml)"),
        runs: int = typer.Option(None, help="repeat count (default: the scenario's `repeat`)"),
        json_out: Path = typer.Option(None, "--json", help="write the report as JSON")) -> None:
    """Run a HIL scenario against the simulated plant and the controller on the demo config."""
    from hil_tests.rig.controller_run import run_with_controller
    from hil_tests.rig.demo import DEMO_CONFIG, ensure_model
    from hil_tests.rig.scenario import ScenarioError, load_scenario

    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    config = _load(DEMO_CONFIG)
    ensure_model(config, console)
    logging.basicConfig(level=logging.ERROR)
    with console.status(f"running {sc.name}: {runs or sc.repeat} x {sc.duration_s:g} s"):
        report = asyncio.run(run_with_controller(sc, config.detector.model, runs))
    report.print(console)
    if json_out is not None:
        report.to_json(json_out)


@app.command()
def validate(config: Path = typer.Argument(..., help="line config (TOML)"),
             connect: bool = typer.Option(False, "--connect", help="also open a session to every PLC and "
                                          "read every tag once (exit 1 if a PLC or a tag fails)")) -> None:
    """Check a line config and print what it describes; with --connect, reach every PLC too."""
    cfg = _load(config)
    probes = asyncio.run(_probe(cfg)) if connect else {}
    table = Table(title=f"{config}: OK")
    for col in ("PLC", "protocol", "endpoint", "tags", "writable", *(("reachable",) if connect else ())):
        table.add_column(col)
    for (proto, _), plc in cfg.plcs():
        d = plc.driver
        row = [plc.name, proto, d.endpoint, str(len(d.tags)), str(sum(t.writable for t in d.tags))]
        table.add_row(*row, *((probes[plc.name].summary,) if connect else ()))
    console.print(table)
    console.print(f"detector: {len(cfg.detector_tags())} tags, model {cfg.detector.model or 'none'}; "
                  f"{len(cfg.alarms)} alarms, {len(cfg.actions)} actions; "
                  f"cloud sync {'on' if cfg.sync and cfg.sync.enabled else 'off'}")
    # One line per bad tag, never wrapped or cut (piped output is 80 columns wide otherwise).
    lines = [f"cannot reach {name}: {p.error}" for name, p in probes.items() if p.error]
    for name, probe in probes.items():
        lines += [f"bad tag {name}.{tag}: {reason}" for tag, reason in probe.bad]
        lines += [f"hint: {probe.hint}"] if probe.hint else []
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    unreachable = [name for name, probe in probes.items() if not probe.reached]
    if unreachable:
        raise fail(f"cannot reach PLC(s) {', '.join(unreachable)}: see the lines above", EXIT_RUNTIME)
    bad = sum(len(p.bad) for p in probes.values())
    if bad:
        plcs = ", ".join(name for name, p in probes.items() if p.bad)
        raise fail(f"{bad} tag(s) not good on PLC(s) {plcs}: see the lines above", EXIT_RUNTIME)


class _Probe:
    """What `validate --connect` found on one PLC."""

    def __init__(self, summary: str, reached: bool, bad: list[tuple[str, str]] | None = None,
                 hint: str = "", error: str = "") -> None:
        self.summary, self.reached, self.bad, self.hint, self.error = summary, reached, bad or [], hint, error


async def _probe(cfg) -> dict[str, _Probe]:
    """Connect to every PLC at once and read all its tags once, through the driver interface."""
    from controller.runtime import make_driver
    from drivers.base import Quality

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the drivers report every failure themselves

    async def one(proto: str, plc) -> tuple[str, _Probe]:
        driver = make_driver(plc)
        try:
            await asyncio.wait_for(driver.connect(), plc.driver.timeout_s + 5)
            batch = await asyncio.wait_for(driver.read(), plc.driver.timeout_s + 5)
        except Exception as exc:  # any failure to reach a PLC is a finding to report, not a crash
            return plc.name, _Probe("no", reached=False, bad=[], hint="",
                                    error=(str(exc) or type(exc).__name__).removeprefix(f"{plc.name}: "))
        finally:
            with contextlib.suppress(Exception):
                await driver.close()
        reasons = driver.stats.tag_errors
        bad = [(driver.tag_names[i], reasons.get(driver.tag_names[i]) or f"quality {Quality(q).name}")
               for i, q in zip(batch.index.tolist(), batch.quality.tolist(), strict=True)
               if q != Quality.GOOD]
        hint = ""
        if proto == "modbus" and bad and len(bad) == len(batch):
            hint = (f"no tag of {plc.name} could be read: check device_id (the unit id, now "
                    f"{plc.driver.device_id}; behind a gateway or on a serial line it is the device's own "
                    "address) and that addresses are zero-based (a manual's 40001 is holding_register "
                    "address 0; modicon_addresses = true converts such numbers)")
        good = len(batch) - len(bad)
        return plc.name, _Probe(f"yes ({good} of {len(batch)} tags good)", reached=True, bad=bad, hint=hint)

    return dict(await asyncio.gather(*(one(proto, p) for (proto, _), p in cfg.plcs())))


@app.command()
def record(config: Path = typer.Argument(..., help="line config (TOML)"),
           minutes: float = typer.Option(10.0, help="how long to record"),
           out: Path = typer.Option(..., "-o", "--out", help="CSV file to write")) -> None:
    """Record live detector-tag values from the PLCs (normal operation, for `fit`)."""
    from controller.record import Gaps, write_csv
    from controller.record import record as do_record

    cfg = _load(config)
    gaps = Gaps()
    with console.status(f"recording {minutes:g} min from {len(list(cfg.plcs()))} PLC(s)..."):
        times, values, tags = asyncio.run(do_record(cfg, minutes * 60.0, gaps=gaps))
    if len(times) == 0:
        why = f"incomplete because of {gaps.summary()}" if gaps.rows else "no data arrived"
        raise fail(f"no complete rows recorded: {why}", EXIT_RUNTIME)
    write_csv(out, times, values, tags)
    console.print(f"wrote {len(times)} rows x {len(tags)} tags to {out}")
    if gaps.dropped:
        console.print(f"left out {gaps.dropped} incomplete rows, because of {gaps.summary()}",
                      soft_wrap=True, highlight=False, markup=False)


@app.command()
def fit(config: Path = typer.Argument(..., help="line config (TOML)"),
        data: Path = typer.Argument(..., help="CSV of normal operation: time,<tag>,..."),
        out: Path = typer.Option(None, "-o", "--out", help="model file (default: [detector] model)")) -> None:
    """Fit the detector's models and thresholds on normal data and write the model artifact."""
    import numpy as np

    from models import StreamingDetector

    cfg = _load(config)
    target = out or cfg.detector.model
    if target is None:
        raise fail("no model path: pass -o model.npz or set [detector] model in the config")
    tags = cfg.detector_tags()
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
    console.print(table)
    if not np.isfinite(s["threshold_on"]):
        raise fail("the calibrated threshold is not finite: the data is too short or constant")


def _read_csv(path: Path, tags: list[str]):
    from controller.replay import ReplayError, read_csv

    try:
        return read_csv(path, tags)
    except ReplayError as exc:
        raise fail(str(exc)) from None


# ---------------------------------------------------------------- talking to a running service
class ApiError(Exception):
    """A failed API call: a one-line message and the exit code it maps to."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.code = code


def _request(cfg, method: str, path: str, body: dict | None = None, timeout: float = 5.0):
    """Open an API request (a response object); ApiError for every failure, never a traceback."""
    import urllib.error
    import urllib.request

    from controller.statedir import READ_TOKEN_FILE, TOKEN_FILE

    c = cfg.controller
    url = f"http://{c.api_host}:{c.api_port}/api/v1{path}"
    headers = {"Content-Type": "application/json"}
    if method == "POST" or c.reads_need_token:  # reads need a token on binds beyond loopback
        names = (TOKEN_FILE,) if method == "POST" else (READ_TOKEN_FILE, TOKEN_FILE)
        for name in names:
            token_path = Path(c.state_dir) / name
            with contextlib.suppress(OSError):
                headers["Authorization"] = f"Bearer {token_path.read_text().strip()}"
                break
        else:
            raise ApiError(f"cannot read the API token {token_path}: run this on the controller host "
                           "as the service user", EXIT_USAGE)
    request = urllib.request.Request(url, method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        message = f"{url}: HTTP {exc.code}"
        with contextlib.suppress(Exception):  # the API's one-line {"error": ...} when it sent one
            message = str(json.loads(exc.read())["error"])
        raise ApiError(message) from None
    except (urllib.error.URLError, OSError):
        raise ApiError(f"the controller is not running (nothing answers on {c.api_host}:{c.api_port})"
                       ) from None


def _call(cfg, method: str, path: str, body: dict | None = None):
    try:
        with _request(cfg, method, path, body) as response:
            return json.loads(response.read())
    except ApiError:
        raise
    except (OSError, ValueError) as exc:  # a reset connection or a reply that is not JSON
        raise ApiError(f"bad reply from the controller on {path}: {exc}") from None


def _api(config: Path, method: str, path: str, body: dict | None = None):
    cfg = _load(config)
    try:
        return _call(cfg, method, path, body)
    except ApiError as exc:
        raise fail(str(exc), exc.code) from None


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m', '45' (seconds) -> seconds; ValueError when not a positive duration."""
    import re

    t = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh])", t)
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        seconds = float(t)
    elif parts and re.fullmatch(r"(?:\d+(?:\.\d+)?\s*[smh]\s*)+", t):
        seconds = sum(float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    else:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 30m, 2h or 1h30m")
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be more than 0")
    return seconds


def _status_view(s: dict):
    from rich.console import Group
    from rich.text import Text

    table = Table(title=f"{s['controller']['line']} / {s['controller']['name']}")
    for col in ("PLC", "state", "reads", "errors", "last error"):
        table.add_column(col)
    for p in s["plcs"]:
        table.add_row(p["name"], p["state"], str(p["reads"]), str(p["read_errors"]), p["last_error"])
    d = s["detector"]
    line = Text(f"line score {d['score']:.3f} (alarm: {d['alarm']}); step p99 {d['step_p99_us']:.1f} µs; "
                f"active alarms: {', '.join(s['alarms']['active']) or 'none'}; "
                f"outbox {s['outbox']['points']} points")
    parts = [table, line, *_protection_lines(s)]
    return Group(*parts)


def _protection_lines(s: dict) -> list:
    """The standing indication: every protection that will not act now, and what the last start
    restored (older services without these keys show nothing)."""
    from rich.text import Text

    if "protections_disabled" not in s:
        return []
    disabled = s["protections_disabled"]
    lines = []
    if disabled:
        lines.append(Text(f"PROTECTIONS DISABLED: {len(disabled)}", style="bold red"))
        lines += [Text(f"  {p['message']}", style="red") for p in disabled]
    else:
        lines.append(Text("protections: all armed", style="green"))
    lines += [Text(r, style="yellow") for r in s.get("restored") or []]
    return lines


@app.command()
def status(config: Path = typer.Argument(..., help="line config (TOML)"),
           as_json: bool = typer.Option(False, "--json", help="print JSON"),
           watch: bool = typer.Option(False, "--watch", "-w", help="refresh every second until Ctrl-C")
           ) -> None:
    """PLCs, detector, active alarms and outbox of a running controller."""
    if watch and as_json:
        raise fail("--watch and --json cannot be combined")
    if not watch:
        s = _api(config, "GET", "/status")
        if as_json:
            console.print_json(data=s)
        else:
            console.print(_status_view(s))
        return
    import time

    from rich.live import Live

    cfg = _load(config)
    try:
        view = _status_view(_call(cfg, "GET", "/status"))
        with Live(view, console=console, auto_refresh=False) as live:
            while True:
                time.sleep(1.0)
                live.update(_status_view(_call(cfg, "GET", "/status")), refresh=True)
    except KeyboardInterrupt:
        return
    except ApiError as exc:
        raise fail(str(exc), exc.code) from None


ALARM_STATES = ("NORMAL", "UNACK", "ACKED", "RTN_UNACK", "SHELVED", "SUPPRESSED", "OUT_OF_SERVICE")
PRIORITIES = ("critical", "high", "medium", "low")


def _choices(value: str | None, allowed: tuple[str, ...], option: str, upper: bool) -> set[str] | None:
    if value is None:
        return None
    picked = {(v.strip().upper() if upper else v.strip().lower()) for v in value.split(",") if v.strip()}
    bad = sorted(picked - set(allowed))
    if bad or not picked:
        raise fail(f"{option}: unknown value {', '.join(bad) or repr(value)} (choose from "
                   f"{', '.join(allowed)}; comma-separate several)")
    return picked


@app.command()
def alarms(config: Path = typer.Argument(..., help="line config (TOML)"),
           as_json: bool = typer.Option(False, "--json", help="print JSON"),
           state: str = typer.Option(None, "--state", help="only these states, e.g. UNACK or UNACK,ACKED"),
           priority: str = typer.Option(None, "--priority", help="only these priorities, e.g. critical")
           ) -> None:
    """Every alarm of a running controller and its ISA-18.2 state."""
    states = _choices(state, ALARM_STATES, "--state", upper=True)
    priorities = _choices(priority, PRIORITIES, "--priority", upper=False)
    rows = [a for a in _api(config, "GET", "/alarms")
            if (states is None or str(a.get("state", "")).upper() in states)
            and (priorities is None or str(a.get("priority", "")).lower() in priorities)]
    if as_json:
        console.print_json(data=rows)
        return
    table = Table()
    for col in ("alarm", "state", "priority", "message"):
        table.add_column(col)
    for a in rows:
        table.add_row(a["name"], a["state"], a["priority"], a["message"])
    console.print(table)


REASON_HELP = "why (required; kept with the change and shown in status and events)"


@app.command()
def ack(config: Path = typer.Argument(..., help="line config (TOML)"),
        alarm: str = typer.Argument(..., help="alarm name"),
        user: str = typer.Option("operator", help="who acknowledges")) -> None:
    """Acknowledge an alarm."""
    _api(config, "POST", f"/alarms/{alarm}/ack", {"user": user})
    console.print(f"{alarm} acknowledged")


@app.command()
def shelve(config: Path = typer.Argument(..., help="line config (TOML)"),
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
    answer = _api(config, "POST", f"/alarms/{alarm}/shelve", {"user": user, "seconds": seconds,
                                                               "reason": reason})
    _done(f"{alarm} shelved for {_human(seconds)}", answer)


def _need_reason(reason: str | None, what: str) -> None:
    if reason is None or not reason.strip():
        raise fail(f"a reason is required to {what}: add --reason TEXT")


def _done(text: str, answer: dict) -> None:
    """What the request did, then (yellow) what protection it disables, if any."""
    console.print(text, highlight=False)
    if answer.get("warning"):
        console.print(f"[yellow]warning:[/] {escape(answer['warning'])}", soft_wrap=True, highlight=False)


def _human(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


@app.command()
def unshelve(config: Path = typer.Argument(..., help="line config (TOML)"),
             alarm: str = typer.Argument(..., help="alarm name"),
             user: str = typer.Option("operator", help="who unshelves")) -> None:
    """Return a shelved alarm to service now."""
    _api(config, "POST", f"/alarms/{alarm}/unshelve", {"user": user})
    console.print(f"{alarm} unshelved")


@app.command()
def reset(config: Path = typer.Argument(..., help="line config (TOML)"),
          action: str = typer.Argument(..., help="action name"),
          user: str = typer.Option("operator", help="who resets"),
          reason: str = typer.Option(None, "--reason", help=REASON_HELP)) -> None:
    """Reset a latched or failed action (it can fire again on its alarm's next activation)."""
    _need_reason(reason, f"reset {action}")
    answer = _api(config, "POST", f"/actions/{action}/reset", {"user": user, "reason": reason})
    _done(answer.get("message") or f"{action} reset", answer)


@app.command()
def inhibit(config: Path = typer.Argument(..., help="line config (TOML)"),
            action: str = typer.Argument(..., help="action name"),
            off: bool = typer.Option(False, "--off", help="lift the inhibit"),
            user: str = typer.Option("operator", help="who inhibits"),
            reason: str = typer.Option(None, "--reason", help=REASON_HELP + " (not with --off)")) -> None:
    """Inhibit an action (it decides but does not write), or lift the inhibit with --off."""
    if not off:
        _need_reason(reason, f"inhibit {action}")
    answer = _api(config, "POST", f"/actions/{action}/inhibit",
                  {"user": user, "enabled": not off, "reason": reason or ""})
    _done(f"{action} {'no longer inhibited' if off else 'inhibited'}", answer)


def _when(e: dict) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(float(e.get("time", 0))).isoformat(sep=" ", timespec="milliseconds")


def _event_line(e: dict) -> str:
    when = _when(e)
    extra = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("id", "time", "kind", "source", "message"))
    return f"{e.get('id')} {when} {e.get('kind')} {e.get('source')}: {e.get('message')}" + (
        f" [{extra}]" if extra else "")


def _print_event(e: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(e), flush=True)  # one compact object per line (jq-friendly)
    else:
        console.print(_event_line(e), highlight=False, markup=False, soft_wrap=True)


@app.command()
def events(config: Path = typer.Argument(..., help="line config (TOML)"),
           follow: bool = typer.Option(False, "--follow", "-f", help="stream new events until Ctrl-C"),
           since: int = typer.Option(0, "--since", min=0, help="only events after this id"),
           as_json: bool = typer.Option(False, "--json", help="one JSON object per line")) -> None:
    """Alarm, action, driver and model events of a running controller (one page, or --follow)."""
    cfg = _load(config)
    if not follow:
        try:
            page = _call(cfg, "GET", f"/events?since={since}")
        except ApiError as exc:
            raise fail(str(exc), exc.code) from None
        if as_json:
            for e in page:
                _print_event(e, True)
            return
        table = Table()
        for col in ("id", "time", "kind", "source", "message"):
            table.add_column(col)
        for e in page:
            table.add_row(str(e["id"]), _when(e), e["kind"], e["source"], e["message"])
        console.print(table)
        return
    try:
        # The server sends a keep-alive every 15 s: 60 s of silence means it is gone.
        with _request(cfg, "GET", f"/events/stream?since={since}", timeout=60.0) as response:
            data: list[str] = []
            for raw in response:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    _print_event(json.loads("\n".join(data)), as_json)
                    data = []
    except KeyboardInterrupt:
        return
    except ApiError as exc:
        raise fail(str(exc), exc.code) from None
    except (OSError, ValueError) as exc:
        raise fail(f"lost the event stream: {exc}", EXIT_RUNTIME) from None
    raise fail("the controller closed the event stream (stopped?)", EXIT_RUNTIME)


# ---------------------------------------------------------------- offline tools
@app.command()
def replay(config: Path = typer.Argument(..., help="line config (TOML)"),
           data: Path = typer.Argument(..., help="CSV time,<tag>,... (as written by `linesentry record`)"),
           out: Path = typer.Option(None, "-o", "--out", help="write time,score,alarm,<tag>_flags,... CSV"),
           plot_to: Path = typer.Option(None, "--plot", help="draw tags, line score and alarms to a PNG"),
           model: Path = typer.Option(None, "--model", help="model file (default: [detector] model)")
           ) -> None:
    """Replay recorded data through a fitted model offline: scores, flags, alarms and a plot."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from controller import replay as rp
    from models import ModelError, load_model

    if plot_to is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise fail(rp.PLOT_EXTRA_HINT) from None
    cfg = _load(config)
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
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task("replay", total=len(times))
        result = rp.replay(det, times, values, progress=lambda n: progress.advance(task, n))
    s = rp.summarize(times, result, tags)
    try:
        if out is not None:
            rp.write_scores(out, times, result, tags)
        if plot_to is not None:
            rp.plot(plot_to, times, values, tags, result, det.threshold, dict(cfg.detector.units))
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
    console.print(table)
    for what, target in (("scores", out), ("plot", plot_to)):
        if target is not None:
            console.print(f"{what} written to {target}")


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
    console.print(f"certificate {cert}\nprivate key {key} (mode 0600)\napplication URI {uri}, host {host}, "
                  f"valid {days} days", highlight=False)
    console.print("set security.client_certificate / client_private_key to these paths and trust the "
                  "certificate on the PLC", highlight=False)


@certs_app.command("fetch")
def certs_fetch(endpoint: str = typer.Argument(..., help="opc.tcp://host:port[/path] of the PLC"),
                out: Path = typer.Option(None, "--out", help="write the server certificate here (DER)"),
                timeout: float = typer.Option(5.0, min=0.1, help="seconds to wait for the server")) -> None:
    """Get a PLC's server certificate (GetEndpoints) and print its SHA-256 fingerprint for pinning."""
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
    console.print(f"sha256 Fingerprint={fingerprint(der)}", highlight=False, soft_wrap=True)
    if out is not None:
        console.print(f"written to {out}: set security.server_certificate = \"{out}\" (or "
                      "security.server_certificate_sha256 to the fingerprint) after checking it on the PLC",
                      highlight=False, soft_wrap=True)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as dist_version

    console.print(dist_version("linesentry"))
