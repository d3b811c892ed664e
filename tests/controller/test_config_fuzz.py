"""Fuzzing the config loader and the API with hypothesis (bounded: max_examples and a deadline).

Every rejected config is exit code 2 with one `error:` line per problem and never a traceback;
every accepted one loads, and a sample of accepted ones starts and stops cleanly against PLCs
that are not there. API bodies: never a 500, always strict JSON with a one-line error.
The issue's own attacks run through the real `linesentry` executable (one line, exit code).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from controller.cli import app
from controller.config import ConfigError, load_config
from controller.statedir import ENGINEER_TOKEN_FILE

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo_line.toml"
LINESENTRY = Path(sys.executable).with_name("linesentry")
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
runner = CliRunner()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_config(state_dir: Path) -> dict[str, Any]:
    """The demo config without a model (so it starts anywhere), its PLCs on ports nobody serves."""
    data = tomllib.loads(DEMO.read_text())
    data["controller"]["state_dir"] = str(state_dir)
    data["opcua"][0]["endpoint"] = f"opc.tcp://127.0.0.1:{closed_port()}/linesentry/"
    data["modbus"][0]["port"] = closed_port()
    del data["detector"]["model"]
    model_free = {"invalid", "limit"}
    data["alarms"] = [a for a in data["alarms"] if a["source"] != "line" and not (
        a["source"].startswith("tag:") and a["source"].rsplit(":", 1)[1] not in model_free)]
    data["actions"][0]["alarm"] = "motor_current_limit"
    return data


def to_toml(data: dict[str, Any]) -> str:
    """A minimal TOML writer (every table inline): enough for what tomllib gives back."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))
    return "\n".join(f"{json.dumps(k)} = {value(v)}" for k, v in data.items()) + "\n"


def leaf_paths(data: Any, path: tuple = ()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += leaf_paths(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += leaf_paths(v, (*path, i))
    return out


def nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


HOSTILE = [math.inf, -math.inf, math.nan, 0, -1, 1e-9, 1e-4, 1e9, 2**63, 2**70, 0.5, 1, 65536,
           "8470", "yes", "true", "", " ", "x" * 5000, "é\u202e", "\u0000", "0.0.0.0", "../..", True, False,
           [], {}, [1, "a"], {"bogus": 1}, nested(40), nested(5)]


def mutate(data: Any, path: tuple, new: Any) -> Any:
    """A copy of `data` with the value at `path` replaced (new is None: the key deleted)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        copy = dict(data)
        if rest:
            copy[head] = mutate(data[head], rest, new)
        elif new is None:
            copy.pop(head)
        else:
            copy[head] = new
        return copy
    copy = list(data)
    copy[head] = mutate(data[head], rest, new if new is not None or rest else 0)
    return copy


@st.composite
def mutated_configs(draw, base: dict, skip: tuple[str, ...] = ()) -> dict:
    paths = [p for p in leaf_paths(base) if not any(str(p[-1 - i]) in skip for i in range(min(2, len(p))))]
    data = base
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["value", "value", "value", "delete", "extra"]))
        if kind == "extra":
            path = (*path[:-1], draw(st.sampled_from(["bogus", "timeout", "password", "token_env"])))
            if _parent_is_table(data, path):
                data = mutate(data, path, draw(st.sampled_from(HOSTILE)))
        else:
            with contextlib.suppress(KeyError, IndexError, TypeError):  # a parent removed earlier
                data = mutate(data, path, None if kind == "delete" else draw(st.sampled_from(HOSTILE)))
    return data


def _parent_is_table(data: Any, path: tuple) -> bool:
    for part in path[:-1]:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(data, dict)


def check_validate(path: Path) -> int:
    """`linesentry validate` on `path`: exit 0, or 2 with only one-line `error:` problems."""
    result = runner.invoke(app, ["validate", str(path)], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{path.read_bytes()[:2000]!r}")
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = result.output.strip().splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), result.output
        assert "Traceback" not in result.output
        with pytest.raises(ConfigError):
            load_config(path)
    else:
        load_config(path)  # every accepted config loads
    return result.exit_code


def test_the_fuzz_base_config_is_valid(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text(to_toml(base_config(tmp_path / "state")))
    assert check_validate(path) == 0


@FUZZ
@given(data=st.data())
def test_mutated_configs_are_accepted_or_one_line_errors(tmp_path, data):
    base = base_config(tmp_path / "state")
    path = tmp_path / "line.toml"
    path.write_text(to_toml(data.draw(mutated_configs(base))), encoding="utf-8")
    check_validate(path)


@FUZZ
@given(cut=st.integers(0, 20_000), junk=st.binary(max_size=64),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "utf-32"]))
def test_mangled_bytes_are_accepted_or_one_line_errors(tmp_path, cut, junk, encoding):
    text = DEMO.read_text().replace("state_dir = \"../state/demo_line\"", f"state_dir = \"{tmp_path}/s\"")
    raw = text.replace("é", "e").encode(encoding, "replace")
    cut = cut % (len(raw) + 1)
    path = tmp_path / "line.toml"
    path.write_bytes(raw[:cut] + junk + raw[cut + len(junk):])
    check_validate(path)


@settings(max_examples=6, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_accepted_configs_start_and_stop_cleanly_without_plcs(tmp_path, data):
    from controller.runtime import Controller

    base = base_config(tmp_path / "state")
    mutant = data.draw(mutated_configs(base, skip=("state_dir", "api_host", "api_port", "endpoint", "port")))
    path = tmp_path / "line.toml"
    path.write_text(to_toml(mutant))
    try:
        cfg = load_config(path)
    except ConfigError:
        return  # rejected: the other tests check how
    controller = Controller(cfg, api_port=0)
    ready: list[bool] = []

    async def run() -> None:
        await asyncio.wait_for(controller.run(on_ready=lambda c: (ready.append(True), c.stop())), 20)

    asyncio.run(run())
    assert ready == [True]
    assert [e["message"] for e in controller.events.since()][-1] == "stopped"


# ---------------------------------------------------------------- API bodies against the real controller

@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    """The real controller (no PLCs reachable) in a thread of its own; yields (base URL, token)."""
    from controller.runtime import Controller

    tmp = tmp_path_factory.mktemp("api")
    path = tmp / "line.toml"
    path.write_text(to_toml(base_config(tmp / "state")))
    controller = Controller(load_config(path), api_port=0)
    started = threading.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(controller.run(on_ready=lambda c: started.set()),), daemon=True)
    thread.start()
    assert started.wait(20), "the controller did not start"
    yield f"http://127.0.0.1:{controller.api_port}/api/v1", controller.state_dir.token(ENGINEER_TOKEN_FILE)
    loop.call_soon_threadsafe(controller.stop)
    thread.join(20)
    assert not thread.is_alive()


def strict_json(text: str) -> Any:
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def call(url: str, body: bytes | None, token: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12)
bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"user": json_values, "seconds": json_values, "enabled": json_values,
                                        "reason": json_values}).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.sampled_from([b"[" * 100_000 + b"]" * 100_000, b'{"user": NaN}', b'{"seconds": Infinity}',
                     b"\xff\xfe"]))
routes = st.sampled_from(["alarms/{}/ack", "alarms/{}/shelve", "alarms/{}/unshelve",
                          "alarms/{}/out-of-service", "actions/{}/reset", "actions/{}/inhibit"])
names = st.sampled_from(["motor_current_limit", "press_comm_loss", "stop_line", "nope", "..%2F..", "%00",
                         "%C3%A9"])


@settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=routes, name=names, body=bodies, with_token=st.booleans())
def test_fuzzed_api_bodies_never_get_a_500_and_always_strict_json(live_api, route, name, body, with_token):
    base, token = live_api
    status, text = call(f"{base}/{route.format(name)}", body, token if with_token else None)
    assert status in (200, 400, 401, 404, 409, 413), (status, text)
    reply = strict_json(text)
    if status != 200:
        assert "\n" not in reply["error"] and reply["error"]


@settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["status", "tags", "alarms", "events"]), since=st.text(max_size=30))
def test_fuzzed_reads_are_strict_json(live_api, path, since):
    base, _ = live_api
    status, text = call(f"{base}/{path}?since={urllib.request.quote(since)}", None, None)
    assert status in (200, 400), (status, text)
    strict_json(text)


# ---------------------------------------------------------------- the issue's attacks, through the executable

def linesentry(capsys, *args: str) -> tuple[int, str]:
    """`linesentry ARGS` in this process through the real entry point (`app()`, as the console
    script calls it): (exit code, stderr)."""
    capsys.readouterr()
    try:
        app([*args], prog_name="linesentry")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def demo_variant(tmp_path: Path, name: str, old: str, new: str, *, raw: bytes | None = None) -> Path:
    path = tmp_path / f"{name}.toml"
    text = DEMO.read_text().replace('state_dir = "../state/demo_line"', f'state_dir = "{tmp_path}/state"')
    assert old in text
    path.write_bytes(raw if raw is not None else text.replace(old, new, 1).encode())
    return path


ATTACKS = {  # name: (old, new, raw-bytes builder or None, what the one line says)
    "latin1": ('site = "demo-site"', 'site = "démo"', lambda t: t.encode("latin-1"), "not UTF-8 text"),
    "utf16": ('site = "demo-site"', 'site = "demo-site"', lambda t: t.encode("utf-16"), "UTF-16"),
    "binary": ('site = "demo-site"', 'site = "demo-site"', lambda t: bytes(range(256)) * 4, "binary"),
    "deep_nesting": ("[controller]", "x = " + "[" * 5000 + "]" * 5000 + "\n[controller]", None,
                     "nested too deeply"),
    "api_port_string": ("api_port = 8470", 'api_port = "8470"', None, "valid integer"),
    "shadow_yes": ("shadow = false", 'shadow = "yes"', None, "valid boolean"),
    "timeout_inf": ("timeout_s = 2.0", "timeout_s = inf", None, "opcua[0].timeout_s"),
    "session_timeout_inf": ("timeout_s = 2.0", "timeout_s = 2.0\nsession_timeout_s = inf", None,
                            "opcua[0].session_timeout_s"),
    "poll_1e-9": ("poll_interval_s = 0.05", "poll_interval_s = 1e-9", None, "modbus[0].poll_interval_s"),
    "watchdog_1e-9": ("period_s = 1.0, wrap = 65536", "period_s = 1e-9, wrap = 65536", None,
                      "watchdog.period_s"),
    "stale_inf": ("stale_timeout_s = 1.5\n", "stale_timeout_s = inf\n", None, "stale_timeout_s"),
    "debounce_inf": ("debounce_n = 5", "debounce_n = inf", None, "debounce_n"),
    "iforest_1e9": ("debounce_n = 5", "debounce_n = 5\niforest_trees = 1e9", None, "iforest_trees"),
    "wide_open_reads": ('api_host = "127.0.0.1"', 'api_host = "0.0.0.0"\napi_require_token_for_reads = false',
                        None, "api_require_token_for_reads"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_issue_attacks_are_one_line_and_exit_2(tmp_path, capsys, name):
    old, new, raw, expected = ATTACKS[name]
    text = DEMO.read_text().replace('state_dir = "../state/demo_line"', f'state_dir = "{tmp_path}/state"')
    text = text.replace(old, new, 1)
    path = demo_variant(tmp_path, name, old, new, raw=raw(text) if raw else None)
    code, stderr = linesentry(capsys, "validate", str(path))
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr
    assert "Traceback" not in stderr


def test_a_utf8_bom_is_accepted(tmp_path, capsys):
    path = demo_variant(tmp_path, "bom", "[controller]", "[controller]",
                        raw=b"\xef\xbb\xbf" + DEMO.read_text().replace(
                            'state_dir = "../state/demo_line"', f'state_dir = "{tmp_path}/state"').encode())
    code, stderr = linesentry(capsys, "validate", str(path))
    assert code == 0, stderr


def test_run_with_sync_and_no_token_is_one_line_exit_2(tmp_path):
    """Through the installed executable, as an operator runs it."""
    text = DEMO.read_text().replace('state_dir = "../state/demo_line"', f'state_dir = "{tmp_path}/state"')
    path = tmp_path / "sync.toml"
    path.write_text(text + '\n[sync]\nurl = "http://127.0.0.1:9"\norg = "o"\nbucket = "b"\n'
                           'token_env = "LINESENTRY_TEST_UNSET_TOKEN"\n')
    env = {k: v for k, v in os.environ.items() if k != "LINESENTRY_TEST_UNSET_TOKEN"} | {"COLUMNS": "200"}
    result = subprocess.run([str(LINESENTRY), "run", str(path)], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "LINESENTRY_TEST_UNSET_TOKEN" in lines[0] and "sync.token_env" in lines[0]


def test_fit_with_absurd_model_sizes_is_one_line_exit_2(tmp_path, capsys):
    text = DEMO.read_text().replace('state_dir = "../state/demo_line"', f'state_dir = "{tmp_path}/state"')
    data = tmp_path / "normal.csv"
    data.write_text("time,motor_current\n0,1\n")
    for spec, expected in (("debounce_n = inf", "debounce_n"),
                           ("debounce_n = 5\niforest_trees = 1000000000", "iforest_trees")):
        path = tmp_path / "fit.toml"
        path.write_text(text.replace("debounce_n = 5", spec))
        code, stderr = linesentry(capsys, "fit", str(path), str(data), "-o", str(tmp_path / "m.npz"))
        assert code == 2, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], stderr
