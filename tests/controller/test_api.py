"""The HTTP layer of the local API over a real socket, with a stand-in for the controller's operations.

(The full controller behind the same API is exercised by the integration tests.)
"""

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from controller.api import create_app
from controller.errors import NotFound, Refused
from controller.events import EventLog

TOKEN = "s3cret-token"
ENGINEER = "engineer-s3cret"


class Ops:
    def __init__(self) -> None:
        self.events = EventLog()
        self.registry = CollectorRegistry()
        self.steps = Counter("linesentry_steps", "detector steps", registry=self.registry)
        self.calls: list[tuple] = []
        self.alarm_names = {"line_anomaly"}

    def status(self) -> dict:
        return {"state": "running"}

    def tags(self) -> list[dict]:
        return [{"tag": "a", "value": 1.0, "quality": "good"}]

    def alarm_list(self) -> list[dict]:
        return [{"name": "line_anomaly", "state": "unack"}]

    def _alarm(self, name: str) -> None:
        if name not in self.alarm_names:
            raise NotFound(f"no alarm named {name!r}")

    def ack(self, name, user, reason="", *, role="operator"):
        self._alarm(name)
        self.calls.append(("ack", name, user, role))
        return {"ok": True}

    def shelve(self, name, user, seconds, reason, *, role="operator"):
        self._alarm(name)
        self.calls.append(("shelve", name, user, seconds, reason))
        return {"ok": True, "disables": ["stop_line"]}

    def unshelve(self, name, user, reason="", *, role="operator"):
        self._alarm(name)
        return {"ok": True}

    def set_out_of_service(self, name, user, enabled, reason="", *, role="operator"):
        self._alarm(name)
        self.calls.append(("oos", name, enabled))
        return {"ok": True}

    def reset_action(self, name, user, reason, *, role="operator"):
        raise Refused(f"action {name!r} is not latched")

    def inhibit_action(self, name, user, enabled, reason="", *, role="operator"):
        self.calls.append(("inhibit", name, enabled, reason, role))
        return {"ok": True}

    async def persist(self):
        self.calls.append(("persist",))

    async def reload_model(self, user, path, *, role="operator"):
        return {"model": path or "current.npz"}


@pytest.fixture
async def client():
    ops = Ops()
    async with TestClient(TestServer(create_app(ops, TOKEN, engineer_token=ENGINEER), host="127.0.0.1")) as c:
        c.ops = ops
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENGINEER_AUTH = {"Authorization": f"Bearer {ENGINEER}"}


async def test_reads_are_open_and_return_json(client):
    assert (await (await client.get("/api/v1/status")).json()) == {"state": "running"}
    assert (await (await client.get("/api/v1/tags")).json())[0]["tag"] == "a"
    assert (await (await client.get("/api/v1/alarms")).json())[0]["state"] == "unack"


async def test_mutations_need_the_token(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = await client.post("/api/v1/alarms/line_anomaly/ack", json={"user": "ann"}, headers=headers)
        assert r.status == 401
        assert "token" in (await r.json())["error"]
    assert client.ops.calls == []
    r = await client.post("/api/v1/alarms/line_anomaly/ack", json={"user": "ann"}, headers=AUTH)
    assert r.status == 200
    assert client.ops.calls == [("ack", "line_anomaly", "ann", "operator"), ("persist",)]  # on disk first


async def test_errors_are_one_line_json_with_the_right_status(client):
    cases = [
        ("/api/v1/alarms/nope/ack", {"user": "ann"}, 404, "no alarm named 'nope'"),
        ("/api/v1/alarms/line_anomaly/shelve", {"user": "ann", "seconds": -5}, 400, "positive"),
        ("/api/v1/alarms/line_anomaly/out-of-service", {"user": "ann"}, 400, "true or false"),
        ("/api/v1/actions/stop_line/reset", {"user": "ann"}, 409, "not latched"),
        ("/api/v1/alarms/line_anomaly/ack", {"user": ""}, 400, "non-empty"),
        ("/api/v1/alarms/line_anomaly/shelve", {"seconds": 60, "reason": 5}, 400, "must be a string"),
    ]
    for path, body, status, text in cases:
        r = await client.post(path, json=body, headers=ENGINEER_AUTH)  # the engineer may do everything
        assert r.status == status, path
        message = (await r.json())["error"]
        assert text in message and "\n" not in message
    r = await client.post("/api/v1/alarms/line_anomaly/ack", data="{not json", headers=AUTH)
    assert r.status == 400


async def test_shelve_inhibit_and_model_reload_reach_the_controller(client):
    r = await client.post("/api/v1/alarms/line_anomaly/shelve",
                          json={"user": "bo", "seconds": 1800, "reason": " swap "}, headers=AUTH)
    assert (await r.json())["disables"] == ["stop_line"]  # the controller's answer, passed through
    await client.post("/api/v1/actions/stop_line/inhibit", json={"user": "bo", "enabled": True},
                      headers=ENGINEER_AUTH)
    r = await client.post("/api/v1/model/reload", json={"user": "bo", "path": "new.npz"},
                          headers=ENGINEER_AUTH)
    assert await r.json() == {"model": "new.npz"}
    assert ("shelve", "line_anomaly", "bo", 1800.0, "swap") in client.ops.calls
    assert ("inhibit", "stop_line", True, "", "engineer") in client.ops.calls


async def test_events_since_and_stream(client):
    ops = client.ops
    first = ops.events.add("alarm", "line_anomaly", "normal -> unack")
    assert [e["id"] for e in await (await client.get("/api/v1/events")).json()] == [first["id"]]
    assert await (await client.get(f"/api/v1/events?since={first['id']}")).json() == []
    assert (await client.get("/api/v1/events?since=x")).status == 400

    response = await client.get(f"/api/v1/events/stream?since={first['id']}")
    ops.events.add("action", "stop_line", "wrote line_stop=1")
    line = b""
    while not line.startswith(b"data: "):
        line = await asyncio.wait_for(response.content.readline(), 5.0)
    assert json.loads(line[6:])["source"] == "stop_line"
    response.close()


async def test_metrics_are_scrapeable(client):
    client.ops.steps.inc(3)
    r = await client.get("/metrics")
    assert r.status == 200
    assert "linesentry_steps_total 3.0" in await r.text()
