"""An independent Sparkplug B host application: what a SCADA or historian sees of the edge node.

It shares no code with the controller's node (controller/sparkplug/): the MQTT client is paho-mqtt
used directly, the payloads are decoded with pysparkplug (its own compiled copy of the Eclipse Tahu
schema and its own datatype decoders). Were both sides built on one encoder, a mistake in it would
pass every test; here the node has to be readable by somebody else's code.

`SparkplugHost` subscribes to ``spBv1.0/<group>/#``, records every message (`Received`), resolves
aliases from the births, keeps the host's view of each metric's current value, and checks the
Sparkplug rules as the messages arrive (`SparkplugRules`; each broken rule is one line in
`violations`):

- NBIRTH carries ``seq`` 0 and a ``bdSeq`` metric (Int64, 0..255); every birth metric has a name
  and a datatype; an alias is used by one metric only across the node and its devices;
- ``seq`` goes +1 (mod 256) across NBIRTH, DBIRTH, NDATA, DDATA and DDEATH of one node;
- no NDATA before the NBIRTH, no DDATA/DDEATH before the DBIRTH of the device (or after its DDEATH);
- every DATA metric names a metric, or an alias, that the current birth defined, with a value its
  datatype can decode; no Sparkplug message (other than STATE) is retained;
- an NDEATH whose bdSeq is the current NBIRTH's ends the session; one with another bdSeq is a
  stale will of an earlier session, which a host must ignore (kept in `stale_deaths`).

It can also command the node (NCMD/DCMD: Rebirth, an alarm's Ack or Shelve with a ``Host`` metric)
and act as a primary host (retained ``spBv1.0/STATE/<host_id>``, with an offline will).

The paho network loop runs in its own thread, so the host records whatever the test's event loop
is busy with; every reader takes a copy under a lock.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pysparkplug import DataType, Metric

# pysparkplug's public payload classes drop the metrics' PropertySets (engUnit, Quality); its bundled
# compiled schema is the one place they can be read without a second copy of the .proto.
from pysparkplug._protobuf import Payload as PbPayload

NAMESPACE = "spBv1.0"
SEQ_KINDS = frozenset({"NBIRTH", "DBIRTH", "NDATA", "DDATA", "DDEATH"})  # the messages carrying seq
BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"


@dataclass(frozen=True)
class HostMetric:
    """One decoded metric. `name` is resolved from the birth when the message only carried an alias."""

    name: str | None
    alias: int | None
    datatype: DataType
    value: Any
    timestamp: int | None
    is_historical: bool
    is_null: bool
    properties: dict[str, Any]


@dataclass(frozen=True)
class Received:
    """One message as the host received it; `arrived` is time.time() at the paho callback."""

    index: int
    arrived: float
    topic: str
    kind: str  # NBIRTH, NDATA, ..., STATE
    edge_node: str | None
    device: str | None
    seq: int | None
    timestamp: int | None
    metrics: tuple[HostMetric, ...]
    retained: bool
    qos: int

    def metric(self, name: str) -> HostMetric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @property
    def values(self) -> dict[str | None, Any]:
        return {m.name: m.value for m in self.metrics}

    @property
    def historical(self) -> bool:
        """Every metric flagged is_historical (a store-and-forward replay)."""
        return bool(self.metrics) and all(m.is_historical for m in self.metrics)


def stored_message(record: Any) -> tuple:
    """(kind, device, timestamp, ((alias, raw value), ...)) of an outbox row's Sparkplug record, to
    compare what the node stored with what this host received."""
    pb = PbPayload.FromString(base64.b64decode(record.fields["payload"]))
    metrics = tuple((m.alias, getattr(m, m.WhichOneof("value")) if m.WhichOneof("value") else None)
                    for m in pb.metrics)
    return record.tags["type"], record.tags["device"] or None, pb.timestamp, metrics


def decode_properties(pb_metric: Any) -> dict[str, Any]:
    """A metric's PropertySet as {key: value} (nested sets are not used by the contract)."""
    props = pb_metric.properties
    out: dict[str, Any] = {}
    for key, pv in zip(props.keys, props.values, strict=False):
        which = pv.WhichOneof("value")
        out[key] = None if pv.is_null or which is None else DataType(pv.type).decode(getattr(pv, which))
    return out


@dataclass
class _Device:
    alive: bool = False
    aliases: dict[int, tuple[str, DataType]] = field(default_factory=dict)
    datatypes: dict[str, DataType] = field(default_factory=dict)


@dataclass
class _Node:
    alive: bool = False
    bd_seq: int | None = None
    last_seq: int | None = None
    node: _Device = field(default_factory=_Device)
    devices: dict[str, _Device] = field(default_factory=dict)

    def alias_owner(self, alias: int) -> tuple[str | None, str] | None:
        """(device or None for the node, metric name) that the current births gave `alias`."""
        if alias in self.node.aliases:
            return None, self.node.aliases[alias][0]
        for device_id, device in self.devices.items():
            if alias in device.aliases:
                return device_id, device.aliases[alias][0]
        return None


class SparkplugRules:
    """Decodes one group's messages against the births seen so far and checks the Sparkplug rules.

    Pure logic over (topic, payload) pairs, so it can be fed recorded traffic as well as live."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.violations: list[str] = []
        self.stale_deaths: list[Received] = []
        self.messages: list[Received] = []
        # the host's current value of every metric: (edge node, device or None, name) -> metric
        self.current: dict[tuple[str, str | None, str], HostMetric] = {}

    def _violate(self, rec: Received, what: str) -> None:
        where = rec.edge_node + (f"/{rec.device}" if rec.device else "")
        self.violations.append(f"#{rec.index} {rec.kind} {where} seq={rec.seq}: {what}")

    def receive(self, topic: str, payload: bytes, *, retained: bool = False, qos: int = 0,
                arrived: float | None = None) -> Received:
        arrived = time.time() if arrived is None else arrived
        parts = topic.split("/")
        index = len(self.messages)
        if len(parts) == 3 and parts[0] == NAMESPACE and parts[1] == "STATE":
            rec = Received(index, arrived, topic, "STATE", None, parts[2], None, None, (), retained, qos)
            self.messages.append(rec)
            return rec
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
            raise ValueError(f"not a Sparkplug B topic: {topic}")
        kind, edge = parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else None
        node = self.nodes.setdefault(edge, _Node())
        pb = PbPayload.FromString(payload)
        problems: list[str] = []
        scope = self._scope(node, kind, device)
        metrics = tuple(self._metric(pb_m, kind, scope, problems) for pb_m in pb.metrics)
        rec = Received(index, arrived, topic, kind, edge, device, pb.seq if pb.HasField("seq") else None,
                       pb.timestamp if pb.HasField("timestamp") else None, metrics, retained, qos)
        self.messages.append(rec)
        for problem in problems:
            self._violate(rec, problem)
        if retained:
            self._violate(rec, "retained (only STATE may be)")
        if kind in SEQ_KINDS:
            self._check_seq(node, rec)
        handler = getattr(self, f"_on_{kind.lower()}", None)
        if handler is not None:
            handler(node, rec)
        return rec

    @staticmethod
    def _scope(node: _Node, kind: str, device: str | None) -> _Device | None:
        """Whose alias table decodes this message: None for births and commands (self-describing)."""
        if kind in ("NDATA",):
            return node.node
        if kind in ("DDATA",):
            return node.devices.get(device or "")
        return None

    @staticmethod
    def _metric(pb_m: Any, kind: str, scope: _Device | None, problems: list[str]) -> HostMetric:
        """Decode one metric with pysparkplug, its name and datatype taken from the birth if absent."""
        name = pb_m.name if pb_m.HasField("name") else None
        alias = pb_m.alias if pb_m.HasField("alias") else None
        if kind.endswith("BIRTH") and (name is None or pb_m.datatype == DataType.UNKNOWN):
            problems.append(f"birth metric {name or alias!r} without a name or a datatype")
        if scope is not None:
            if name is None and alias is not None:
                if alias in scope.aliases:
                    name = scope.aliases[alias][0]
                    pb_m.name = name
                else:
                    problems.append(f"alias {alias} is not defined by the current birth")
            elif name is None:
                problems.append("metric with neither a name nor an alias")
            elif name not in scope.datatypes:
                problems.append(f"metric {name!r} is not defined by the current birth")
            if name is not None and pb_m.datatype == DataType.UNKNOWN and name in scope.datatypes:
                pb_m.datatype = scope.datatypes[name]
        try:
            m = Metric.from_pb(pb_m)
            value, datatype = m.value, m.datatype
        except (ValueError, OverflowError) as exc:
            problems.append(f"metric {name or alias!r} does not decode: {exc}")
            value, datatype = None, DataType.UNKNOWN
        stamp = pb_m.timestamp if pb_m.HasField("timestamp") else None
        return HostMetric(name, alias, datatype, value, stamp, pb_m.is_historical, pb_m.is_null,
                          decode_properties(pb_m))

    def _check_seq(self, node: _Node, rec: Received) -> None:
        if rec.timestamp is None:
            self._violate(rec, "no payload timestamp")
        if rec.seq is None:
            self._violate(rec, "no seq")
            return
        if rec.kind == "NBIRTH":
            if rec.seq != 0:
                self._violate(rec, "NBIRTH seq is not 0")
        elif not node.alive:
            self._violate(rec, "before the NBIRTH of its node (or after its NDEATH)")
        elif node.last_seq is not None and rec.seq != (node.last_seq + 1) % 256:
            self._violate(rec, f"seq {rec.seq} after {node.last_seq} (expected {(node.last_seq + 1) % 256})")
        node.last_seq = rec.seq

    def _define(self, node: _Node, table: _Device, rec: Received) -> None:
        """A birth replaces its scope's alias table; an alias another scope of the node uses is a
        violation."""
        table.aliases, table.datatypes = {}, {}
        for m in rec.metrics:
            if m.name is None:
                continue
            table.datatypes[m.name] = m.datatype
            if m.alias is None:
                continue
            owner = node.alias_owner(m.alias)
            if m.alias in table.aliases or (owner is not None and owner != (rec.device, m.name)):
                self._violate(rec, f"alias {m.alias} of {m.name!r} is already used by another metric")
            table.aliases[m.alias] = (m.name, m.datatype)
        self._update_values(rec)

    def _update_values(self, rec: Received) -> None:
        for m in rec.metrics:
            if m.name is not None and not m.is_historical:
                self.current[(rec.edge_node, rec.device, m.name)] = m

    def _on_nbirth(self, node: _Node, rec: Received) -> None:
        bd = rec.metric(BD_SEQ)
        if bd is None:
            self._violate(rec, "NBIRTH without a bdSeq metric")
        elif bd.datatype != DataType.INT64 or not isinstance(bd.value, int) or not 0 <= bd.value <= 255:
            self._violate(rec, f"bdSeq must be an Int64 in 0..255, got {bd.datatype.name} {bd.value!r}")
        node.alive, node.bd_seq = True, None if bd is None else bd.value
        node.devices = {}  # every device must be born again after a node birth
        node.node = _Device(alive=True)
        self._define(node, node.node, rec)

    def _on_dbirth(self, node: _Node, rec: Received) -> None:
        device = node.devices.setdefault(rec.device or "", _Device())
        device.alive = True
        device.aliases = {}
        self._define(node, device, rec)

    def _on_ndata(self, node: _Node, rec: Received) -> None:
        self._update_values(rec)

    def _on_ddata(self, node: _Node, rec: Received) -> None:
        device = node.devices.get(rec.device or "")
        if node.alive and (device is None or not device.alive):
            self._violate(rec, "DDATA before the DBIRTH of its device (or after its DDEATH)")
        self._update_values(rec)

    def _on_ddeath(self, node: _Node, rec: Received) -> None:
        device = node.devices.get(rec.device or "")
        if node.alive and (device is None or not device.alive):
            self._violate(rec, "DDEATH of a device that is not born")
        if device is not None:
            device.alive = False

    def _on_ndeath(self, node: _Node, rec: Received) -> None:
        bd = rec.metric(BD_SEQ)
        if bd is None:
            self._violate(rec, "NDEATH without a bdSeq metric")
            return
        if node.bd_seq is not None and bd.value != node.bd_seq:
            self.stale_deaths.append(rec)  # the will of an earlier session: a host ignores it
            return
        node.alive = False
        for device in node.devices.values():
            device.alive = False


@dataclass(frozen=True)
class HostTls:
    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


class SparkplugHost:
    """The host application on a real broker: a paho client in its own thread feeding `SparkplugRules`.

    `start()` returns once subscribed (nothing the node publishes after that is missed). After a
    broker restart it reconnects within `reconnect_max_s` and subscribes again; what was published
    while it was away is not seen (a test orders its reconnect before the node's).
    """

    def __init__(self, host: str, port: int, group_id: str, *, host_id: str = "linesentry-test-host",
                 client_id: str | None = None, tls: HostTls | None = None, username: str | None = None,
                 password: str | None = None, protocol: int = mqtt.MQTTv5, primary: bool = False,
                 reconnect_max_s: float = 0.2) -> None:
        self.host, self.port, self.group_id, self.host_id = host, port, group_id, host_id
        self.primary = primary
        self.rules = SparkplugRules()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.connects = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"{host_id}-{id(self):x}", protocol=protocol)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=reconnect_max_s)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
        if primary:
            self.client.will_set(self.state_topic, self._state_payload(False), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    @property
    def state_topic(self) -> str:
        return f"{NAMESPACE}/STATE/{self.host_id}"

    @staticmethod
    def _state_payload(online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": int(time.time() * 1000)}).encode()

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> SparkplugHost:
        self.client.connect_async(self.host, self.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"host application: not subscribed to {self.host}:{self.port} "
                               f"after {timeout} s")
        return self

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        """After a broker restart: until the host is connected and subscribed again."""
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"host application not subscribed again after {timeout} s")

    def stop(self) -> None:
        if self.primary and self.client.is_connected():
            info = self.client.publish(self.state_topic, self._state_payload(False), qos=1, retain=True)
            info.wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> SparkplugHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.connects += 1
        client.subscribe(f"{NAMESPACE}/{self.group_id}/#", qos=1)
        if self.primary:
            client.publish(self.state_topic, self._state_payload(True), qos=1, retain=True)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if all(not rc.is_failure for rc in reason_codes):
            self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._subscribed.clear()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        with self._lock:
            self.rules.receive(message.topic, message.payload, retained=bool(message.retain), qos=message.qos,
                               arrived=arrived)

    # ---- what was received ------------------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.rules.messages)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self.rules.violations)

    @property
    def stale_deaths(self) -> list[Received]:
        with self._lock:
            return list(self.rules.stale_deaths)

    def mark(self) -> int:
        """The index the next message will get: `of(..., since=mark)` is what came after this point."""
        with self._lock:
            return len(self.rules.messages)

    def of(self, *kinds: str, device: Any = ..., since: int = 0,
           edge_node: str | None = None) -> list[Received]:
        """Messages of `kinds` (all if none) from index `since`, of `device` (None: the node's own;
        left out: any)."""
        return [r for r in self.messages[since:]
                if (not kinds or r.kind in kinds) and (device is ... or r.device == device)
                and (edge_node is None or r.edge_node == edge_node)]

    def last_birth(self, edge_node: str, device: str | None = None) -> Received | None:
        births = self.of("DBIRTH" if device else "NBIRTH", device=device, edge_node=edge_node)
        return births[-1] if births else None

    def value(self, edge_node: str, name: str, device: str | None = None) -> Any:
        """The host's current (non-historical) value of a metric, or None if never received."""
        with self._lock:
            m = self.rules.current.get((edge_node, device, name))
        return None if m is None else m.value

    def alive(self, edge_node: str, device: str | None = None) -> bool:
        with self._lock:
            node = self.rules.nodes.get(edge_node)
            if node is None or not node.alive:
                return False
            return device is None or (device in node.devices and node.devices[device].alive)

    # ---- commands ---------------------------------------------------------------------------------

    def command(self, edge_node: str, metrics: Sequence[tuple[str, DataType, Any]], device: str | None = None,
                timeout: float = 5.0) -> None:
        """Publish an NCMD (or a DCMD to `device`) with `metrics` by name (qos 1, returns after PUBACK)."""
        pb = PbPayload()
        pb.timestamp = int(time.time() * 1000)
        for name, datatype, value in metrics:
            pb.metrics.append(Metric(timestamp=pb.timestamp, name=name, datatype=datatype, value=value)
                              .to_pb(include_dtype=True))
        kind = "DCMD" if device else "NCMD"
        topic = f"{NAMESPACE}/{self.group_id}/{kind}/{edge_node}" + (f"/{device}" if device else "")
        self.client.publish(topic, pb.SerializeToString(), qos=1).wait_for_publish(timeout)

    def rebirth(self, edge_node: str) -> None:
        self.command(edge_node, [(REBIRTH, DataType.BOOLEAN, True)])

    def alarm_command(self, edge_node: str, alarm: str, verb: str, text: str,
                      host: str | None = None) -> None:
        """`verb` = "Ack" (text: reason) or "Shelve" (text: "<seconds> <reason>"), from Host `host`."""
        self.command(edge_node, [(f"Alarms/{alarm}/{verb}", DataType.STRING, text),
                                 ("Host", DataType.STRING, host or self.host_id)])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, str | list):
        return json.dumps(v)
    return repr(v)


def mqtt_tables(broker_url: str, *, mqtt_keys: dict[str, Any] | None = None,
                sparkplug: dict[str, Any] | None = None) -> str:
    """The [mqtt] and [mqtt.sparkplug] tables of a node for the host to watch, appended to a line's TOML
    (keys as in docs/configuration.md; a test's short intervals keep it to seconds)."""
    lines = ["", "[mqtt]", f"broker = {_toml_value(broker_url)}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in (mqtt_keys or {}).items()]
    lines += ["", "[mqtt.sparkplug]"] + [f"{k} = {_toml_value(v)}" for k, v in (sparkplug or {}).items()]
    return "\n".join(lines) + "\n"
