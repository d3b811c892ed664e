"""The `linesentry` command line (typer + rich).

Exit codes: 0 success; 1 a runtime failure (service not reachable, PLC error);
2 a user mistake (bad config, bad arguments, missing file). Errors are one line
on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="linesentry: industrial anomaly detection controller.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)

EXIT_RUNTIME, EXIT_USAGE = 1, 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _load(config: Path):
    from controller.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        for line in exc.problems:
            err.print(f"[red]error:[/] {line}", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def run(config: Path = typer.Argument(..., help="line config (TOML)"),
        log_level: str = typer.Option(None, help="override [controller] log_level")) -> None:
    """Run the controller service until SIGTERM or Ctrl-C."""
    from controller.runtime import Controller
    from models import ModelError

    cfg = _load(config)
    logging.basicConfig(level=(log_level or cfg.controller.log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        controller = Controller(cfg)
    except (ModelError, OSError) as exc:
        raise fail(str(exc)) from None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, controller.stop)
        await controller.run(on_ready=lambda c: console.print(
            f"linesentry running: API http://{cfg.controller.api_host}:{c.api_port}"))

    try:
        asyncio.run(main())
    except OSError as exc:
        raise fail(str(exc), EXIT_RUNTIME) from None


@app.command()
def demo(config: Path = typer.Option(None, help="line config (default: configs/demo_line.toml)"),
         seconds: float = typer.Option(None, help="stop after this many seconds (default: Ctrl-C)"),
         live: bool = typer.Option(True, help="live terminal view (--no-live: one line per event)"),
         fault_every: float = typer.Option(20.0, help="seconds between injected faults")) -> None:
    """The demo line: simulated plant + controller on configs/demo_line.toml, with injected faults."""
    from controller.demo import DEMO_CONFIG, run_demo

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
    for col in ("fault injected", "line stopped after"):
        table.add_column(col)
    for i, (t, what) in enumerate(log.faults):
        until = log.faults[i + 1][0] if i + 1 < len(log.faults) else float("inf")
        stop = log.first_after(t, until)
        table.add_row(what, "-" if stop is None else f"{(stop - t) * 1000:.0f} ms")
    console.print(table)


@app.command()
def sim() -> None:
    """Serve the simulated plant (OPC UA 4840, Modbus 5020 on 127.0.0.1) until Ctrl-C."""
    from hil_tests.plant import main as serve

    serve()


@app.command()
def hil(scenario: Path = typer.Argument(..., help="scenario file (hil_tests/scenarios/*.toml)"),
        runs: int = typer.Option(None, help="repeat count (default: the scenario's `repeat`)"),
        json_out: Path = typer.Option(None, "--json", help="write the report as JSON")) -> None:
    """Run a HIL scenario against the simulated plant and the controller on the demo config."""
    from controller.demo import DEMO_CONFIG, ensure_model
    from hil_tests.controller_run import run_with_controller
    from hil_tests.scenario import ScenarioError, load_scenario

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
def validate(config: Path = typer.Argument(..., help="line config (TOML)")) -> None:
    """Check a line config and print what it describes."""
    cfg = _load(config)
    table = Table(title=f"{config}: OK")
    for col in ("PLC", "protocol", "endpoint", "tags", "writable"):
        table.add_column(col)
    for (proto, _), plc in cfg.plcs():
        d = plc.driver
        endpoint = d.endpoint if proto == "opcua" else f"{d.host}:{d.port}"
        table.add_row(plc.name, proto, endpoint, str(len(d.tags)), str(sum(t.writable for t in d.tags)))
    console.print(table)
    console.print(f"detector: {len(cfg.detector_tags())} tags, model {cfg.detector.model or 'none'}; "
                  f"{len(cfg.alarms)} alarms, {len(cfg.actions)} actions; "
                  f"cloud sync {'on' if cfg.sync and cfg.sync.enabled else 'off'}")


@app.command()
def record(config: Path = typer.Argument(..., help="line config (TOML)"),
           minutes: float = typer.Option(10.0, help="how long to record"),
           out: Path = typer.Option(..., "-o", "--out", help="CSV file to write")) -> None:
    """Record live detector-tag values from the PLCs (normal operation, for `fit`)."""
    from controller.record import record as do_record
    from controller.record import write_csv

    cfg = _load(config)
    with console.status(f"recording {minutes:g} min from {len(list(cfg.plcs()))} PLC(s)..."):
        times, values, tags = asyncio.run(do_record(cfg, minutes * 60.0))
    if len(times) == 0:
        raise fail("no complete rows recorded: are the PLCs reachable and their tags GOOD?", EXIT_RUNTIME)
    write_csv(out, times, values, tags)
    console.print(f"wrote {len(times)} rows x {len(tags)} tags to {out}")


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
    except ValueError as exc:
        raise fail(f"{data}: {exc}") from None
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
    import csv

    import numpy as np

    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    if not rows or rows[0][:1] != ["time"]:
        raise fail(f"{path}: expected a header 'time,<tag>,...' (as written by `linesentry record`)")
    header = rows[0]
    missing = [t for t in tags if t not in header]
    if missing:
        raise fail(f"{path}: no column for detector tag(s) {', '.join(missing)}")
    cols = [header.index(t) for t in tags]
    try:
        data = np.array([[float(r[0])] + [float(r[c]) for c in cols] for r in rows[1:] if r])
    except (ValueError, IndexError) as exc:
        raise fail(f"{path}: a row is not numeric ({exc})") from None
    if data.size == 0:
        raise fail(f"{path}: no data rows")
    return data[:, 0], data[:, 1:]


# ---------------------------------------------------------------- talking to a running service
def _api(config: Path, method: str, path: str, body: dict | None = None):
    import urllib.error
    import urllib.request

    from controller.statedir import TOKEN_FILE

    cfg = _load(config)
    c = cfg.controller
    url = f"http://{c.api_host}:{c.api_port}/api/v1{path}"
    headers = {"Content-Type": "application/json"}
    if method == "POST":
        token_path = Path(c.state_dir) / TOKEN_FILE
        try:
            headers["Authorization"] = f"Bearer {token_path.read_text().strip()}"
        except OSError:
            raise fail(f"cannot read the API token {token_path}: run this on the controller host "
                       "as the service user") from None
    request = urllib.request.Request(url, method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            raise fail(json.loads(exc.read())["error"], EXIT_RUNTIME) from None
        raise fail(f"{url}: HTTP {exc.code}", EXIT_RUNTIME) from None
    except (urllib.error.URLError, OSError):
        raise fail(f"the controller is not running (nothing answers on {c.api_host}:{c.api_port})",
                   EXIT_RUNTIME) from None


@app.command()
def status(config: Path = typer.Argument(..., help="line config (TOML)"),
           as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """PLCs, detector, active alarms and outbox of a running controller."""
    s = _api(config, "GET", "/status")
    if as_json:
        console.print_json(data=s)
        return
    table = Table(title=f"{s['controller']['line']} / {s['controller']['name']}")
    for col in ("PLC", "state", "reads", "errors", "last error"):
        table.add_column(col)
    for p in s["plcs"]:
        table.add_row(p["name"], p["state"], str(p["reads"]), str(p["read_errors"]), p["last_error"])
    console.print(table)
    d = s["detector"]
    console.print(f"line score {d['score']:.3f} (alarm: {d['alarm']}); step p99 {d['step_p99_us']:.1f} µs; "
                  f"active alarms: {', '.join(s['alarms']['active']) or 'none'}; "
                  f"outbox {s['outbox']['points']} points")


@app.command()
def alarms(config: Path = typer.Argument(..., help="line config (TOML)"),
           as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Every alarm of a running controller and its ISA-18.2 state."""
    rows = _api(config, "GET", "/alarms")
    if as_json:
        console.print_json(data=rows)
        return
    table = Table()
    for col in ("alarm", "state", "priority", "message"):
        table.add_column(col)
    for a in rows:
        table.add_row(a["name"], a["state"], a["priority"], a["message"])
    console.print(table)


@app.command()
def ack(config: Path = typer.Argument(..., help="line config (TOML)"),
        alarm: str = typer.Argument(..., help="alarm name"),
        user: str = typer.Option("operator", help="who acknowledges")) -> None:
    """Acknowledge an alarm."""
    _api(config, "POST", f"/alarms/{alarm}/ack", {"user": user})
    console.print(f"{alarm} acknowledged")


@app.command()
def reset(config: Path = typer.Argument(..., help="line config (TOML)"),
          action: str = typer.Argument(..., help="action name"),
          user: str = typer.Option("operator", help="who resets")) -> None:
    """Reset a latched or failed action."""
    _api(config, "POST", f"/actions/{action}/reset", {"user": user})
    console.print(f"{action} reset")


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as dist_version

    console.print(dist_version("linesentry"))
