"""The rig's commands in the `linesentry` CLI: `demo`, `sim`, `hil`.

Registered through the entry-point group `linesentry.cli` (pyproject.toml:
`rig = "hil_tests.rig.cli:register"`), so the product's CLI never imports the rig. Loading this
module costs only typer: everything else is imported inside the command that needs it, which keeps
operator commands such as `linesentry status` fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

PORT = {"min": 1, "max": 65535}  # a TCP port; 99999 is a usage error, not an OverflowError from bind()
STATE_DIR_HELP = ("where the demo keeps its state and fitted model "
                  "(default: $XDG_STATE_HOME/linesentry/demo, i.e. ~/.local/state/linesentry/demo)")


def register(app: typer.Typer) -> None:
    """Add the rig's commands to `app`."""
    app.command()(demo)
    app.command()(sim)
    app.command()(hil)


def demo(config: Path = typer.Option(None, help="line config (default: the shipped demo config, with its "
                                     "state in --state-dir)"),
         state_dir: Path = typer.Option(None, help=STATE_DIR_HELP),
         opcua_port: int = typer.Option(None, **PORT,
                                        help="OPC UA port of the simulated conveyor (default 4840)"),
         modbus_port: int = typer.Option(None, **PORT,
                                         help="Modbus TCP port of the simulated press (default 5020)"),
         api_port: int = typer.Option(None, **PORT, help="the controller's HTTP API port (default 8470)"),
         seconds: float = typer.Option(None, min=0.0, help="stop after this many seconds (default: Ctrl-C)"),
         live: bool = typer.Option(None, help="live terminal view (default on a terminal; --no-live, the "
                                   "default when piped: one line per event)"),
         fault_every: float = typer.Option(20.0, min=1.0, help="seconds between injected faults"),
         mqtt: str = typer.Option(None, metavar="HOST:PORT", help="also publish the line as a Sparkplug B "
                                  "edge node to this MQTT broker (docs/sparkplug.md)")) -> None:
    """The demo line: simulated plant + controller on the demo config, with injected faults.

    The port and --mqtt options apply to the shipped demo config only (with --config, its own are used)."""
    import asyncio
    import logging

    from rich.table import Table

    from controller.cli import EXIT_RUNTIME, console, fail, load_or_exit
    from hil_tests.rig.demo import run_demo
    from hil_tests.rig.demo_config import default_state_dir, write_demo_config

    broker = None
    if mqtt is not None:
        host, _, port = mqtt.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise fail(f"--mqtt {mqtt!r}: expected HOST:PORT of an MQTT broker, e.g. 127.0.0.1:1883")
        broker = (host, int(port))
    if config is None:
        config = write_demo_config(state_dir or default_state_dir(), opcua_port=opcua_port,
                                   modbus_port=modbus_port, api_port=api_port, mqtt=broker)
        console.print(f"demo state and model in {config.parent} (--state-dir to change)")
    load_or_exit(config)  # a bad config is a one-line usage error, like everywhere else
    logging.basicConfig(level=logging.ERROR)
    try:
        live = sys.stdout.isatty() if live is None else live  # `make run | tee log` gets lines as they come
        log = asyncio.run(run_demo(config, seconds=seconds, live=live, fault_every_s=fault_every,
                                   console=console))
    except KeyboardInterrupt:
        return
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: is another demo or simulator using its ports? "
                   "(--opcua-port, --modbus-port, --api-port)", EXIT_RUNTIME) from None
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


def sim(opcua_port: int = typer.Option(4840, **PORT, help="OPC UA port on 127.0.0.1"),
        modbus_port: int = typer.Option(5020, **PORT, help="Modbus TCP port on 127.0.0.1"),
        seed: int = typer.Option(0, help="noise seed of the simulated plant"),
        scenario: Path = typer.Option(None, help="play the faults of this scenario TOML"),
        secure_dir: Path = typer.Option(None, help="serve OPC UA Basic256Sha256 SignAndEncrypt only, "
                                        "with a certificate generated into this directory")) -> None:
    """Serve the simulated plant (OPC UA 4840, Modbus 5020 on 127.0.0.1) until Ctrl-C."""
    import asyncio
    import contextlib

    from controller.cli import EXIT_RUNTIME, fail
    from hil_tests.rig.scenario import ScenarioError
    from hil_tests.rig.simulator import serve

    if scenario is not None and not scenario.is_file():
        raise fail(f"--scenario {scenario}: no such file")
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop the simulator
            asyncio.run(serve(opcua_port=opcua_port, modbus_port=modbus_port, seed=seed, scenario=scenario,
                              secure_dir=secure_dir))
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{exc.strerror or exc}: is another demo or simulator using ports "
                   f"{opcua_port}/{modbus_port}?", EXIT_RUNTIME) from None


def hil(scenario: Path = typer.Argument(..., help="scenario file (hil_tests/rig/scenarios/*.toml)"),
        runs: int = typer.Option(None, min=1, help="repeat count (default: the scenario's `repeat`)"),
        json_out: Path = typer.Option(None, "--json", help="write the report as JSON"),
        state_dir: Path = typer.Option(None, help=STATE_DIR_HELP)) -> None:
    """Run a HIL scenario against the simulated plant and the controller on the demo config."""
    import asyncio
    import logging

    from controller.cli import console, fail, load_or_exit
    from hil_tests.rig.controller_run import run_with_controller
    from hil_tests.rig.demo import ensure_model
    from hil_tests.rig.demo_config import default_state_dir, write_demo_config
    from hil_tests.rig.scenario import ScenarioError, load_scenario

    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    config = load_or_exit(write_demo_config(state_dir or default_state_dir()))
    ensure_model(config, console)
    logging.basicConfig(level=logging.ERROR)
    with console.status(f"running {sc.name}: {runs or sc.repeat} x {sc.duration_s:g} s"):
        report = asyncio.run(run_with_controller(sc, config.detector.model, runs))
    report.print(console)
    if json_out is not None:
        report.to_json(json_out)
