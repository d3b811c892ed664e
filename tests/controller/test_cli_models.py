"""`linesentry model push/list/promote/rollback` run as the real CLI (typer's runner, in process)
against a real mosquitto; a test-side paho client plays the lines' shadow agents (it answers a
desired model_version with a reported document, as controller/shadow does: docs/shadow.md)."""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.registry import log_deployment, read_deployments
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import free_port
from models import artifact

runner = CliRunner()
PREFIX = "linesentry/{}/{}/shadow"
BIG = 9_000_000_000_000  # a version far above now in ms: the edge's own decisions can be there


def cli(*args: str, registry: Path | None = None):
    env = {"COLUMNS": "200", "LINESENTRY_USER": "ann"}
    if registry is not None:
        env["LINESENTRY_REGISTRY"] = str(registry)
    return runner.invoke(app, list(args), env=env)


def _model(path: Path, seed: int) -> Path:
    artifact.write(path, {"a": np.arange(4.0) * seed}, {"tags": ["x"], "summary": {"threshold_on": 0.5}})
    return path


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path) as b:
        yield b


@pytest.fixture
def registry(tmp_path) -> tuple[Path, list[str]]:
    reg = tmp_path / "registry"
    ids = []
    for i in (1, 2):
        result = cli("model", "push", str(_model(tmp_path / f"m{i}.npz", i)), "--note", f"n{i}", registry=reg)
        assert result.exit_code == 0, result.output
        ids.append(result.output.split()[0])
    return reg, ids


def _client(broker: Mosquitto, name: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def publish_retained(broker: Mosquitto, topic: str, doc: dict) -> None:
    c = _client(broker, "seed")
    c.publish(topic, json.dumps(doc), qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def retained(broker: Mosquitto, topic: str, timeout: float = 5.0) -> dict:
    got: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reader")
    c.on_message = lambda client, userdata, msg: got.put(json.loads(msg.payload))
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.subscribe(topic, qos=1)
    try:
        return got.get(timeout=timeout)
    finally:
        c.disconnect()
        c.loop_stop()


class Lines:
    """Shadow agents of some lines: a desired model_version is accepted (reported model.id, previous)
    or, when `refuse` names the line, reported rejected with a reason."""

    def __init__(self, broker: Mosquitto, lines: dict[str, str], refuse: set[str] = frozenset()) -> None:
        self.models = dict(lines)  # prefix -> running id
        self.refuse = refuse
        self.seen: list[dict] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lines")
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe([(f"{p}/desired/model_version", 1) for p in lines])
        assert self.ready.wait(5)

    def _on_message(self, client, userdata, msg) -> None:
        prefix = msg.topic.removesuffix("/desired/model_version")
        want = json.loads(msg.payload)
        self.seen.append(want)
        old = self.models[prefix]
        if prefix in self.refuse:
            doc = {"version": 2, "state": {"model": {"id": old}}, "rejected": {"model_version": {
                "version": want["version"], "by": want["by"], "reason": "config tags not in the model: x"}}}
        else:
            self.models[prefix] = want["value"]
            doc = {"version": 2, "state": {"model": {"id": want["value"], "previous": old}},
                   "desired": {"model_version": want}, "rejected": {}}
        client.publish(f"{prefix}/reported", json.dumps(doc), qos=1, retain=True)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_push_list_and_history(tmp_path, registry):
    reg, ids = registry
    again = cli("model", "push", str(tmp_path / "m1.npz"), registry=reg)
    assert again.exit_code == 0 and again.output.split()[0] == ids[0]
    assert "already in the registry" in again.output
    listed = cli("model", "list", registry=reg)
    assert listed.exit_code == 0, listed.output
    rows = listed.output.splitlines()[2:]
    assert [r.split()[0] for r in rows] == [i[:16] for i in ids] and "n1" in rows[0] and "0.5000" in rows[0]
    log_deployment(reg, "p1", "l1", {"at": 1.0, "by": "ann", "action": "promote", "id": ids[0], "version": 7})
    history = cli("model", "list", "--line", "p1/l1", registry=reg)
    assert history.exit_code == 0 and "promote" in history.output and ids[0][:16] in history.output


def test_user_mistakes_are_one_line_without_a_traceback(tmp_path, registry, broker):
    reg, ids = registry
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes((tmp_path / "m1.npz").read_bytes()[:100])
    cases = [
        (cli("model", "push", str(damaged), registry=reg), 2, "unreadable or truncated"),
        (cli("model", "list"), 2, "no model registry: pass --registry"),
        (cli("model", "list", "--registry", str(tmp_path / "nope")), 2, "not found"),
        (cli("model", "promote", "0" * 12, "--line", "p/l", "--broker", broker.url, registry=reg), 2,
         "is not in registry"),
        (cli("model", "promote", ids[0], "--line", "p", "--broker", broker.url, registry=reg), 2,
         "is not SITE/LINE"),
        (cli("model", "promote", ids[0], "--line", "p/l", "--broker", "nohostport:x", registry=reg), 2,
         "is not HOST:PORT"),
        (cli("model", "promote", ids[0], "--line", "p/l", "--broker", f"127.0.0.1:{free_port()}",
             registry=reg), 1, "cannot reach the MQTT broker"),
        (cli("model", "rollback", "--line", "p/l", "--broker", broker.url), 2, "no previous model known"),
    ]
    for result, code, text in cases:
        assert result.exit_code == code, result.output
        assert text in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert read_deployments(reg, "p", "l") == []  # nothing refused was logged as deployed


def test_promote_to_two_lines_publishes_above_the_retained_version_and_waits(broker, registry):
    reg, ids = registry
    a, b = PREFIX.format("p1", "l1"), PREFIX.format("p1", "l2")
    publish_retained(broker, f"{a}/reported", {"version": 1, "state": {"model": {"id": ids[1]}},
                                               "desired": {"model_version": {"value": ids[1], "version": BIG,
                                                                             "by": "edge:rollback"}}})
    lines = Lines(broker, {a: ids[1], b: "stem"})
    try:
        before_ms = int(time.time() * 1000)
        result = cli("model", "promote", ids[0][:12], "--line", "p1/l1", "--line", "p1/l2",
                     "--broker", f"127.0.0.1:{broker.port}", "--wait", "20", registry=reg)
    finally:
        lines.close()
    assert result.exit_code == 0, result.output
    assert f"p1/l1: reports {ids[0][:16]} after" in result.output
    assert f"p1/l2: reports {ids[0][:16]} after" in result.output
    sent_a = retained(broker, f"{a}/desired/model_version")
    sent_b = retained(broker, f"{b}/desired/model_version")
    assert sent_a == {"value": ids[0], "version": BIG + 1, "by": "ann"}
    assert sent_b["value"] == ids[0] and sent_b["version"] >= before_ms
    (entry,) = read_deployments(reg, "p1", "l1")
    assert (entry["action"], entry["id"], entry["previous"], entry["version"]) == (
        "promote", ids[0], ids[1], BIG + 1)


def test_wait_fails_with_the_lines_rejection_reason(broker, registry):
    reg, ids = registry
    a, b = PREFIX.format("p1", "l1"), PREFIX.format("p1", "l2")
    lines = Lines(broker, {a: ids[1], b: ids[1]}, refuse={b})
    try:
        result = cli("model", "promote", ids[0], "--line", "p1/l1", "--line", "p1/l2",
                     "--broker", broker.url, "--wait", "20", registry=reg)
    finally:
        lines.close()
    assert result.exit_code == 1, result.output
    assert f"p1/l1: reports {ids[0][:16]}" in result.output
    assert "p1/l2: rejected: config tags not in the model: x" in result.output
    assert "1 of 2 line(s) did not take the model" in result.output


def test_wait_without_an_answer_ends_at_its_deadline(broker, registry):
    reg, ids = registry
    result = cli("model", "promote", ids[0], "--line", "p1/l9", "--broker", broker.url, "--wait", "0.5",
                 registry=reg)
    assert result.exit_code == 1 and "p1/l9: not reached within 0.5 s (reports nothing)" in result.output


def test_rollback_uses_the_reported_previous_else_the_deployment_log(broker, registry):
    reg, ids = registry
    a, b = PREFIX.format("p1", "l1"), PREFIX.format("p1", "l2")
    publish_retained(broker, f"{a}/reported", {"version": 1, "state": {"model": {"id": ids[0],
                                                                                 "previous": ids[1]}}})
    publish_retained(broker, f"{b}/reported", {"version": 1, "state": {"model": {"id": ids[0],
                                                                                 "previous": None}}})
    log_deployment(reg, "p1", "l2", {"at": 1.0, "by": "x", "action": "promote", "id": ids[1], "version": 1})
    log_deployment(reg, "p1", "l2", {"at": 2.0, "by": "x", "action": "promote", "id": ids[0], "version": 2})
    lines = Lines(broker, {a: ids[0], b: ids[0]})
    try:
        result = cli("model", "rollback", "--line", "p1/l1", "--line", "p1/l2", "--broker", broker.url,
                     "--wait", "20", registry=reg)
    finally:
        lines.close()
    assert result.exit_code == 0, result.output
    assert retained(broker, f"{a}/desired/model_version")["value"] == ids[1]  # reported previous
    assert retained(broker, f"{b}/desired/model_version")["value"] == ids[1]  # from the log
    assert read_deployments(reg, "p1", "l2")[-1]["action"] == "rollback"
