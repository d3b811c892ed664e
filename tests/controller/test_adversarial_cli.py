"""The `linesentry` CLI used carelessly or against a hostile API: every mistake and every failure is
one line with an exit code, never a traceback, a boxed usage block, an escape code or a cut line
(issue 13.5, adversarial review)."""

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from controller.cli import app
from hil_tests.rig.net import free_port

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
CLI = [sys.executable, "-c", "from controller.cli import app; app(prog_name='linesentry')"]
LONG = "press_" + "x" * 150  # longer than any terminal


def invoke(args: list[str], **kwargs):
    return runner.invoke(app, args, prog_name="linesentry", **kwargs)


def config(tmp_path: Path, port: int = 9, plc: str = "press") -> Path:
    path = tmp_path / "line.toml"
    path.write_text(f"""
[controller]
site = "s"
line = "l"
state_dir = "{tmp_path / 'state'}"
api_port = {port}

[[modbus]]
name = "{plc}"
host = "127.0.0.1"
  [[modbus.tags]]
  name = "oil_temp"
  table = "input_register"
  address = 1
  dtype = "int16"
""")
    return path


def one_line(result) -> str:
    """The single line a failed command printed (stdout and stderr together)."""
    out = result.output
    assert out.count("\n") == 1 and "Traceback" not in out and "╭" not in out, out
    assert "internal error" not in out, out
    return out.strip()


# ---------------------------------------------------------------- rich console width (C1's report)
def test_a_table_is_never_cut_however_columns_changed_between_invokes(tmp_path):
    """The console used to be created once per process: the first invoke fixed its width for all."""
    cfg = config(tmp_path, plc=LONG)
    invoke(["validate", str(cfg)], env={"COLUMNS": "40"})  # the first console
    for columns in ("40", "80", "200"):
        result = invoke(["validate", str(cfg)], env={"COLUMNS": columns})
        assert result.exit_code == 0, result.output
        assert any(LONG in line and "modbus" in line for line in result.output.splitlines()), result.output


def test_piped_output_has_no_escape_codes_and_no_wrapping(tmp_path):
    cfg = config(tmp_path, plc=LONG)
    env = {**os.environ, "COLUMNS": "40", "TERM": "xterm-256color"}
    env.pop("FORCE_COLOR", None)
    run = subprocess.run([*CLI, "validate", str(cfg)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout and any(LONG in line for line in run.stdout.splitlines()), run.stdout
    bad = subprocess.run([*CLI, "validate", str(tmp_path / "nope.toml")], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert bad.returncode == 2 and "\x1b" not in bad.stderr and bad.stderr.startswith("error: ")


# ---------------------------------------------------------------- usage mistakes
def _commands() -> list[tuple[list[str], typer.main.TyperCommand]]:
    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out += [([name, sub], c) for sub, c in cmd.commands.items()]
        else:
            out.append(([name], cmd))
    return out


COMMANDS = _commands()


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_an_unknown_option_is_one_line_exit_2(path, cmd):
    result = invoke([*path, "--no-such-option"])
    assert result.exit_code == 2
    see = f"(see 'linesentry {' '.join(path)} --help')"
    assert one_line(result) == f"error: No such option: --no-such-option {see}"


@pytest.mark.parametrize("path,cmd", [(p, c) for p, c in COMMANDS if any(x.required for x in c.params)],
                         ids=[" ".join(p) for p, c in COMMANDS if any(x.required for x in c.params)])
def test_a_missing_argument_or_option_is_one_line_exit_2(path, cmd):
    result = invoke(path)
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("error: Missing ") and line.endswith(f"(see 'linesentry {' '.join(path)} --help')")


def test_an_unknown_command_is_one_line_and_help_still_works():
    result = invoke(["stauts"])
    assert result.exit_code == 2 and one_line(result).startswith("error: No such command 'stauts'")
    help_ = invoke(["--help"])
    assert help_.exit_code == 0 and "status" in help_.output


@pytest.mark.parametrize("duration", ["9" * 400, "9" * 400 + "h", "0s", "-5m", "1e3", "nan"])
def test_a_shelve_duration_that_is_not_a_finite_positive_time_is_one_line(tmp_path, duration):
    result = invoke(["shelve", str(config(tmp_path)), "a", "--for", duration, "--reason", "r"])
    assert result.exit_code == 2 and one_line(result).startswith("error: bad duration "), result.output


@pytest.mark.parametrize("args", [["sim", "--opcua-port", "99999"], ["sim", "--modbus-port", "0"],
                                  ["demo", "--api-port", "70000"], ["demo", "--fault-every", "0"],
                                  ["hil", "x.toml", "--runs", "-1"]], ids=" ".join)
def test_rig_options_out_of_range_are_one_line_before_anything_starts(args):
    run = subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stderr.startswith("error: Invalid value for ") and run.stderr.count("\n") == 1, run.stderr


# ---------------------------------------------------------------- dead, slow and hostile APIs
OPERATOR = [["status"], ["status", "--json"], ["alarms"], ["ack", "{cfg}", "a"], ["unshelve", "{cfg}", "a"],
            ["shelve", "{cfg}", "a", "--for", "1m", "--reason", "r"],
            ["reset", "{cfg}", "x", "--reason", "r"], ["inhibit", "{cfg}", "x", "--reason", "r"],
            ["events"], ["events", "--follow"]]


def _args(cmd: list[str], cfg: Path) -> list[str]:
    args = [a.replace("{cfg}", str(cfg)) for a in cmd]
    return args if str(cfg) in args else [args[0], str(cfg), *args[1:]]


def _post_token(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    from controller.statedir import ENGINEER_TOKEN_FILE, TOKEN_FILE

    (state / TOKEN_FILE).write_text("t0ken")
    (state / ENGINEER_TOKEN_FILE).write_text("t0ken-engineer")  # reset, inhibit need the engineer role


@pytest.mark.parametrize("cmd", OPERATOR, ids=" ".join)
def test_a_dead_api_is_one_line_naming_the_address(tmp_path, cmd):
    port = free_port()
    cfg = config(tmp_path, port)
    _post_token(tmp_path)
    result = invoke(_args(cmd, cfg))
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in one_line(result)


def test_an_api_that_accepts_but_never_answers_times_out_in_one_line(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        result = invoke(["status", str(config(tmp_path, port))])
    assert result.exit_code == 1
    line = one_line(result)
    assert "no answer within 5 s" in line and f"127.0.0.1:{port}" in line


class _Canned(BaseHTTPRequestHandler):
    """Answers every request with the server's `reply` (status, body bytes), or raw bytes."""

    def _answer(self) -> None:
        status, body = self.server.reply  # type: ignore[attr-defined]
        if status is None:  # not HTTP at all
            self.wfile.write(body)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hostile(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.reply = (200, b"{}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _post_token(tmp_path)
    yield server, config(tmp_path, server.server_address[1])
    server.shutdown()
    server.server_close()


BAD_REPLIES = {
    "not json": (200, b"<html>hello</html>"),
    "not utf-8": (200, b"\xff\xfe{"),
    "wrong top-level type": (200, b"[1, 2, 3]"),
    "wrong nested types": (200, json.dumps({"plcs": 5, "detector": [], "alarms": "x", "outbox": None,
                                            "controller": 1}).encode()),
    "a list of numbers": (200, b"[1, 2]"),
    "huge body": (200, b"[" + b"1," * (9 << 20) + b"1]"),
    "an error with escape codes and newlines": (500, json.dumps({"error": "bad\n\x1b[2Jthing"}).encode()),
    "not HTTP": (None, b"SSH-2.0-OpenSSH_9.6\r\n"),
}


@pytest.mark.parametrize("reply", BAD_REPLIES, ids=list(BAD_REPLIES))
@pytest.mark.parametrize("cmd", [c for c in OPERATOR if c != ["events", "--follow"]], ids=" ".join)
def test_a_hostile_api_answer_is_one_line_exit_1(hostile, cmd, reply):
    server, cfg = hostile
    server.reply = BAD_REPLIES[reply]
    result = invoke(_args(cmd, cfg))
    if result.exit_code == 0:  # a POST that ignores its answer body, or JSON printed as it came
        assert "Traceback" not in result.output and "\x1b" not in result.output
        return
    assert result.exit_code == 1, result.output
    line = one_line(result)
    assert "\x1b" not in line and len(line) < 1000, line


def test_an_event_stream_of_garbage_is_one_line(hostile):
    server, cfg = hostile
    server.reply = (200, b"data: [1, 2]\n\ndata: {\"id\": 1}\n\n")
    result = invoke(["events", str(cfg), "--follow"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert result.output.count("\n") <= 2, result.output


def test_names_reach_the_api_as_one_path_segment(hostile):
    server, cfg = hostile
    seen = []
    server.RequestHandlerClass = type("Spy", (_Canned,), {
        "do_POST": lambda self: (seen.append(self.path), _Canned._answer(self))[1]})
    server.reply = (200, b"{}")
    result = invoke(["ack", str(cfg), "a/../../status?x=1 y"])
    assert result.exit_code == 0, result.output
    assert seen == ["/api/v1/alarms/a%2F..%2F..%2Fstatus%3Fx%3D1%20y/ack"]


def test_api_text_with_escape_codes_is_printed_escaped(hostile):
    server, cfg = hostile
    server.reply = (200, json.dumps([{"name": "a\x1b[2J", "state": "UNACK", "priority": "high",
                                      "message": "x\u202ey"}]).encode())
    result = invoke(["alarms", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output and "a\\x1b[2J" in result.output


# ---------------------------------------------------------------- broken CLI plugins
PLUGIN_MODULE = '''
import typer

def raises(app):
    raise RuntimeError("register blew up")

def half(app):
    app.command(name="half-added")(lambda: None)
    raise ValueError("after one command")

def hijack(app):
    @app.command(name="status")
    def status(config: str) -> None:
        print("HIJACKED")

def exits(app):
    raise SystemExit(3)
'''


def test_broken_cli_plugins_leave_the_core_commands_working_with_one_warning_each(tmp_path):
    dist = tmp_path / "evil_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[linesentry.cli]\nmissing = no_such_module_here:register\nraises = evil_cli:raises\n"
        "half = evil_cli:half\nhijack = evil_cli:hijack\nexits = evil_cli:exits\n")
    (tmp_path / "evil_cli.py").write_text(PLUGIN_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    cfg = config(tmp_path, free_port())
    # linesentry's own commands do not look at plugins at all (nothing to warn about); an unknown
    # command and --help load them: one warning per broken plugin, the core still answers
    for args, code, n_warnings in ((["version"], 0, 0), (["status", str(cfg)], 1, 0),
                                   (["half-added"], 2, 5), (["--help"], 0, 5)):
        run = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=ROOT)
        assert run.returncode == code, (args, run.stdout, run.stderr)
        assert "HIJACKED" not in run.stdout and "Traceback" not in run.stderr, run.stderr
        warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: CLI plugin")]
        assert len(warnings) == n_warnings, run.stderr
        for name in ("missing", "raises", "half", "hijack", "exits") if n_warnings else ():
            assert sum(f"plugin {name!r}" in w for w in warnings) == 1, warnings
    help_ = subprocess.run([*CLI, "--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert "demo" in help_.stdout and "half-added" not in help_.stdout  # the rig's plugin still loads


# ---------------------------------------------------------------- what the operator path imports
HEAVY = ("numba", "scipy", "sklearn", "asyncua", "pymodbus", "influxdb_client")


def _imported(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_the_schema_and_validate_import_no_heavy_library():
    assert _imported("import controller.config") == []
    assert _imported("from controller.config import load_config; load_config('configs/demo_line.toml')") == []


@pytest.mark.parametrize("cmd", OPERATOR, ids=" ".join)
def test_an_operator_command_imports_no_heavy_library(tmp_path, cmd):
    cfg = config(tmp_path, free_port())
    _post_token(tmp_path)
    code = (f"from controller.cli import app\ntry:\n    app(args={_args(cmd, cfg)!r}, "
            "prog_name='linesentry')\nexcept SystemExit:\n    pass")
    assert _imported(code) == []
