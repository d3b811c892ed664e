"""The controller as a Sparkplug B edge node: births, data by exception, deaths, commands, store and forward.

Topics (namespace spBv1.0, group = group_id, node = edge_node_id, one device per PLC, docs/sparkplug.md):
NBIRTH/NDATA/NDEATH/NCMD ``spBv1.0/<group>/<KIND>/<node>``, DBIRTH/DDATA/DDEATH/DCMD with ``/<plc>``.

Sessions. Before each MQTT CONNECT the node takes the next bdSeq (persisted, `BdSeqStore`) and gives
the link its NDEATH as the will. After the connect: NBIRTH (seq 0, every node metric with its alias,
the bdSeq of that will), one DBIRTH per PLC that delivers data, then the replay of the backlog. A PLC
lost is a DDEATH, its return a DBIRTH. `Node Control/Rebirth` repeats the births with the same bdSeq.
A clean stop publishes the NDEATH itself before disconnecting (a clean DISCONNECT drops the will).

Data. The node wakes on every new journal event (alarm and action transitions go out at once, as
NDATA, each transition with its own timestamp) and every tag_interval_s (Line/Score and Threshold as
NDATA; tag values, their quality and the PLC's health as one DDATA per PLC), always by exception
(`ChangeFilter`, with the deadbands). Nothing is reported before the run's first NBIRTH: the births
are the baseline the exceptions are measured from.

Store and forward. A DATA message that cannot be published (not connected, not born in this session,
the publish raised, the primary host offline) is committed to the outbox for the "sparkplug" sink only
(no seq: it gets one when replayed). After the births the backlog is published in commit order, every
metric is_historical, at most replay_per_s, each row acked once its PUBACK came; live messages do not
wait for it (they take turns on one lock, which keeps seq in publish order). A stored DDATA of a PLC
not born in this session waits for that PLC's DBIRTH while it is coming up, and is passed over (kept
pending, the rest goes on) while it is lost; its DBIRTH sends the replay back to the oldest row.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.errors import BadRequest, LinesentryError
from controller.mqtt.session import MqttLink, MqttUnavailable, WillMessage
from controller.records import Record
from controller.sparkplug import SINK
from controller.sparkplug.catalogue import (
    BDSEQ,
    CONFIG_HASH,
    LINE_ALARM,
    LINE_SCORE,
    LINE_THRESHOLD,
    PLC_ERRORS,
    PLC_READS,
    PLC_STATE,
    REBIRTH,
    SOFTWARE_VERSION,
    Catalogue,
    MetricDef,
    action_state,
    alarm_metric,
)
from controller.sparkplug.commands import Command, RefusalGate, clip, device_commands, node_commands
from controller.sparkplug.payload import (
    BOOLEAN,
    DOUBLE,
    INT32,
    INT64,
    STRING,
    Metric,
    Value,
    decode,
    encode,
    historical,
)
from controller.sparkplug.reporting import ChangeFilter
from controller.sparkplug.sequence import BdSeqStore, Seq
from controller.tasks import cancel_and_wait
from drivers.base import ConnectionState, Quality

if TYPE_CHECKING:
    from controller.config import LineConfig
    from controller.config.mqtt import SparkplugConfig
    from controller.events import EventLog
    from controller.linestate import LineState
    from controller.operations import Operations
    from controller.outbox import Outbox
    from controller.pipeline import StepPipeline
    from controller.plc_health import Plc

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
MEASUREMENT = SINK  # the measurement of its records in the outbox
REPLAY_BATCH = 50  # rows fetched and acked at a time
REBIRTH_MIN_S = 1.0  # births for a Rebirth request at most this often (requests meanwhile are one)
QUALITY_CODES = {Quality.GOOD: 192, Quality.UNCERTAIN: 64}  # anything else: 0 (bad)
ACTION_FLAGS = ("failed", "awaiting_confirmation", "latched", "inhibited", "shadow")


def quality_code(quality: int) -> int:
    """Sparkplug's (OPC) quality code of one of our qualities: 192 good, 64 uncertain, 0 bad."""
    return QUALITY_CODES.get(Quality(quality), 0)


def action_text(status: dict[str, Any]) -> str:
    """`Actions/<name>/State`: its flags that are set, comma-separated, or "armed"."""
    return ",".join(flag for flag in ACTION_FLAGS if status.get(flag)) or "armed"


@dataclass
class NodeStats:
    births: int = 0  # NBIRTH messages (sessions, rebirths)
    published: int = 0  # live DATA/DBIRTH/DDEATH messages confirmed
    stored: int = 0  # DATA messages committed to the outbox
    store_failures: int = 0  # could not be committed either (disk full): lost
    replayed: int = 0
    commands: int = 0  # acks and shelves done
    refused_commands: int = 0


class EdgeNode:
    """One line's Sparkplug B edge node on an `MqttLink` (see the module docstring)."""

    def __init__(self, cfg: SparkplugConfig, *, link: MqttLink, config: LineConfig, line: LineState,
                 pipeline: StepPipeline, plcs: Sequence[Plc], events: EventLog, ops: Operations,
                 outbox: Outbox, state_dir: str | Path, software_version: str) -> None:
        self.cfg, self.link, self.line, self.pipeline, self.plcs = cfg, link, line, pipeline, plcs
        self._plcs = {p.name: p for p in plcs}
        self.events, self.ops, self.outbox = events, ops, outbox
        c = config.controller
        self.group, self.node = cfg.ids_for(c.site, c.line)
        tags = config.tags()
        unknown = sorted(set(cfg.deadbands) - set(tags))
        if unknown:
            raise BadRequest(f"mqtt.sparkplug.deadbands: no tag named {', '.join(map(repr, unknown))}; "
                             "use the tag names of the PLC tables")
        self.units = dict(config.detector.units)
        self.alarm_names = list(pipeline.alarm_names)
        self.catalogue = Catalogue(
            alarms=self.alarm_names, actions=[a.name for a in config.actions], commands=cfg.commands,
            devices={p.name: [(t.name, tags[t.name].kind) for t in p.config.driver.tags] for p in plcs})
        self.fixed = {SOFTWARE_VERSION: software_version, CONFIG_HASH: ops.config_hash}
        self.stats = NodeStats()
        self.refusals = RefusalGate()
        self.seq = Seq()
        self.bdseq_store = BdSeqStore(state_dir)
        self.bdseq = 0  # of the current (or next) MQTT session: its will and its NBIRTH
        self.filter = ChangeFilter()
        self.born: set[str] = set()  # PLCs whose DBIRTH the host has (this session) or that we store for
        self.datatypes: dict[tuple[str, str], int] = {}  # (plc, tag) -> the datatype its DBIRTH gave
        self.host_online: bool | None = None if not cfg.primary_host_id else False
        self._reporting = False  # a first NBIRTH of this run went out: exceptions have a baseline
        self._session: int | None = None  # link.stats.connects of the session the node is born in
        self._lock = asyncio.Lock()  # one message at a time: seq goes out in order
        self._task: asyncio.Task | None = None
        self._replay: asyncio.Task | None = None
        self._rebirth: asyncio.Task | None = None  # births asked for by a host, coming
        self._births_at = -REBIRTH_MIN_S  # loop time of the last births
        self._rewind = False  # the replay under way goes back to the oldest pending row
        link.set_will(self._will)
        link.on_connect(self._on_connect)
        link.subscribe(self.topic("NCMD"), self._on_ncmd)
        link.subscribe(self.topic("DCMD", "+"), self._on_dcmd)
        if cfg.primary_host_id:
            link.subscribe(f"{NAMESPACE}/STATE/{cfg.primary_host_id}", self._on_host_state)

    def topic(self, kind: str, device: str | None = None) -> str:
        return f"{NAMESPACE}/{self.group}/{kind}/{self.node}" + (f"/{device}" if device else "")

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe the outbox sink and start the node's task (the link connects on its own)."""
        await asyncio.to_thread(self.outbox.subscribe, SINK, routed_only=True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sparkplug")

    async def stop(self) -> None:
        """End the tasks and, if connected, say goodbye with the session's NDEATH."""
        await cancel_and_wait(t for t in (self._task, self._replay, self._rebirth) if t is not None)
        self._task = self._replay = self._rebirth = None
        if self.link.connected:
            try:
                await self.link.publish(self.topic("NDEATH"), self._ndeath(), qos=1)
            except MqttUnavailable as exc:
                log.warning("Sparkplug NDEATH at stop not confirmed: %s (the broker sends the will)", exc)

    def status(self) -> dict:
        rows, _, nbytes = self.outbox.backlog(SINK)
        return {"group_id": self.group, "edge_node_id": self.node, "born": self._born_now(),
                "bdseq": self.bdseq, "devices_born": sorted(self.born), "backlog": rows,
                "backlog_bytes": nbytes, "primary_host_online": self.host_online,
                **{k: getattr(self.stats, k) for k in NodeStats.__dataclass_fields__}}

    # -- the session: will, births, deaths ---------------------------------------------------------

    def _will(self) -> WillMessage:
        self.bdseq = self.bdseq_store.next()
        return WillMessage(self.topic("NDEATH"), self._ndeath(), qos=1)

    def _ndeath(self) -> bytes:
        ts = now_ms()
        return encode([Metric(BDSEQ, INT64, self.bdseq, timestamp_ms=ts)], seq=None, timestamp_ms=ts)

    async def _on_connect(self) -> None:
        self._session = None
        if self.host_online is False:
            log.info("Sparkplug: waiting for primary host %s to be online before the births",
                     self.cfg.primary_host_id)
            return
        await self._births()

    def _born_now(self) -> bool:
        return self._session is not None and self._session == self.link.stats.connects and self.link.connected

    def _publishable(self, device: str | None = None) -> bool:
        return self._born_now() and self.host_online is not False and (device is None or device in self.born)

    async def _births(self) -> None:
        """NBIRTH (seq 0, this session's bdSeq) and a DBIRTH per PLC that delivers data, then the replay."""
        async with self._lock:
            self._births_at = asyncio.get_running_loop().time()
            session = self.link.stats.connects
            self._session = None
            self.filter.forget()
            self.born.clear()
            ts = now_ms()
            values = self._node_values()
            metrics = [Metric(BDSEQ, INT64, self.bdseq, timestamp_ms=ts)]
            for md in self.catalogue.node[1:]:
                metrics.append(Metric(md.name, md.datatype, values.get(md.name), alias=md.alias,
                                      timestamp_ms=ts))
                self.filter.set(("node", md.name), values.get(md.name))
            payload = encode(metrics, seq=self.seq.birth(), timestamp_ms=ts)
            await self.link.publish(self.topic("NBIRTH"), payload, qos=self.cfg.data_qos)
            self.stats.births += 1
            for plc in self.plcs:
                if self._plc_alive(plc):
                    await self._dbirth(plc)
            self._session = session
            self._reporting = True
        log.info("Sparkplug %s/%s born (bdSeq %d, devices %s)", self.group, self.node, self.bdseq,
                 ", ".join(sorted(self.born)) or "none yet")
        self._start_replay()

    async def _dbirth(self, plc: Plc) -> None:
        """Inside the lock: the DBIRTH of `plc`, every tag with engUnit and Quality, and its health."""
        ts = now_ms()
        metrics = []
        for md, (value, quality) in self._device_metrics(plc):
            datatype = self._datatype(plc, md)
            props: dict[str, tuple[int, Value]] = {}
            if quality is not None:
                props["Quality"] = (INT32, quality)
                if md.name in self.units:
                    props["engUnit"] = (STRING, self.units[md.name])
                self.datatypes[(plc.name, md.name)] = datatype
                self.filter.set(("q", plc.name, md.name), quality)
            metrics.append(Metric(md.name, datatype, value, alias=md.alias, timestamp_ms=ts,
                                  properties=props))
            self.filter.set((plc.name, md.name), value)
        payload = encode(metrics, seq=self.seq.next(), timestamp_ms=ts)
        await self.link.publish(self.topic("DBIRTH", plc.name), payload, qos=self.cfg.data_qos)
        self.stats.published += 1
        self.born.add(plc.name)

    def _plc_alive(self, plc: Plc) -> bool:
        """Connected and delivering: every tag has had a value (or a quality) since the connect."""
        if plc.state != ConnectionState.CONNECTED or plc.comm_lost:
            return False
        return bool((self.line.quality[plc.binding] != int(Quality.COMM_LOST)).all())

    def _plc_lost(self, name: str) -> bool:
        """Lost (backoff, failed, comm loss), not merely coming up."""
        plc = self._plcs[name]
        return plc.comm_lost or plc.state in (ConnectionState.BACKOFF, ConnectionState.FAILED,
                                              ConnectionState.CLOSED)

    def _datatype(self, plc: Plc, md: MetricDef) -> int:
        """A tag's datatype now. One whose kind is known only once connected (OPC UA) is a Double
        unless its PLC delivers text (a String) or its driver names it a bit (`bit_tags`: a Boolean)."""
        if md.datatype == DOUBLE and md.name in self.line.position:
            if self.line.text[self.line.position[md.name]] is not None:
                return STRING
            if md.name in getattr(plc.driver, "bit_tags", ()):
                return BOOLEAN
        return md.datatype

    async def _devices(self) -> None:
        """DDEATH for a PLC lost, DBIRTH for one back (or whose tag changed datatype)."""
        for plc in self.plcs:
            alive = self._plc_alive(plc)
            if plc.name in self.born and not alive:
                await self._send("DDEATH", plc.name, [], store=False)  # if it can be published now
                self.born.discard(plc.name)
            elif alive and self._publishable() and (plc.name not in self.born or self._retyped(plc)):
                try:
                    async with self._lock:
                        await self._dbirth(plc)
                except MqttUnavailable as exc:
                    log.debug("Sparkplug DBIRTH %s not published: %s", plc.name, exc)
                else:
                    self._start_replay()

    def _retyped(self, plc: Plc) -> bool:
        return any(self.datatypes.get((plc.name, md.name), md.datatype) != self._datatype(plc, md)
                   for md in self.catalogue.device(plc.name)[:-3])

    # -- values ------------------------------------------------------------------------------------

    def _node_values(self) -> dict[str, Value]:
        p = self.pipeline
        values: dict[str, Value] = {REBIRTH: False, **self.fixed, LINE_SCORE: float(p.line_score),
                                    LINE_THRESHOLD: None if p.detector is None
                                    else float(p.detector.threshold),
                                    LINE_ALARM: bool(p.line_alarm)}
        for a in p.alarms.status():
            values[alarm_metric(a["name"], "State")] = a["state"]
            values[alarm_metric(a["name"], "Priority")] = a["priority"]
            values[alarm_metric(a["name"], "Ack")] = values[alarm_metric(a["name"], "Shelve")] = ""
        for act in p.actions.status():
            values[action_state(act["name"])] = action_text(act)
        return values

    def _device_metrics(self, plc: Plc) -> list[tuple[MetricDef, tuple[Value, int | None]]]:
        return list(zip(self.catalogue.device(plc.name), self._device_values(plc), strict=True))

    def _device_values(self, plc: Plc) -> list[tuple[Value, int | None]]:
        """(value, quality code) of each device metric in catalogue order (None quality: health metrics)."""
        out: list[tuple[Value, int | None]] = []
        line = self.line
        for md in self.catalogue.device(plc.name)[:-3]:
            i = line.position[md.name]
            datatype = self._datatype(plc, md)
            x = float(line.values[i])
            if datatype == STRING:
                value: Value = line.text[i]
            elif x != x:  # NaN: no value
                value = None
            else:
                value = bool(x) if datatype == BOOLEAN else x
            out.append((value, quality_code(int(line.quality[i]))))
        s = plc.driver.stats
        return [*out, (plc.state.value, None), (int(s.reads), None), (int(s.read_errors), None)]

    # -- the node's task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_id, next_tick, failing = self.events.last_id, loop.time(), False
        while True:
            new = await self.events.wait_newer(last_id, max(0.0, next_tick - loop.time()))
            if new:
                last_id = new[-1]["id"]
            try:
                await self._devices()
                tick = loop.time() >= next_tick
                if tick:
                    next_tick = loop.time() + self.cfg.tag_interval_s
                await self._report(new, tick)
            except Exception as exc:  # a bug here must not end the node silently, nor flood the log
                if not failing:
                    log.exception("Sparkplug node round failed (%s); retrying", exc)
                failing = True
            else:
                failing = False

    async def _report(self, new: list[dict], tick: bool) -> None:
        """NDATA of what changed on the node (transitions at once, score on the tick), DDATA on the tick."""
        if not self._reporting:
            return
        ts = now_ms()
        metrics: list[Metric] = []
        for e in new:
            if e.get("kind") == "alarm" and e.get("state") and e.get("source") in self.alarm_names:
                md = self.catalogue.node_metric(alarm_metric(e["source"], "State"))
                metrics.append(Metric(None, STRING, e["state"], alias=md.alias,
                                      timestamp_ms=int(e["time"] * 1000)))
                self.filter.set(("node", md.name), e["state"])
        values = self._node_values()
        names = [LINE_ALARM, *(action_state(a["name"]) for a in self.pipeline.actions.status())]
        alarm_changed = self.filter.changed(("node", LINE_ALARM), values[LINE_ALARM])
        if tick or alarm_changed:  # the line alarm goes with the score and threshold that moved it
            names += [LINE_SCORE, LINE_THRESHOLD]
        for name in names:
            band = self.cfg.deadband if name == LINE_SCORE and not alarm_changed else 0.0
            if (name == LINE_ALARM and alarm_changed) or (
                    name != LINE_ALARM and self.filter.changed(("node", name), values[name], band)):
                md = self.catalogue.node_metric(name)
                metrics.append(Metric(None, md.datatype, values[name], alias=md.alias, timestamp_ms=ts))
        if metrics:
            await self._send("NDATA", None, metrics)
        if tick:
            for plc in self.plcs:
                if plc.name in self.born:
                    changed = self._device_changes(plc, ts)
                    if changed:
                        await self._send("DDATA", plc.name, changed)

    def _device_changes(self, plc: Plc, ts: int) -> list[Metric]:
        out = []
        for md, (value, quality) in self._device_metrics(plc):
            band = self.cfg.deadbands.get(md.name, self.cfg.deadband) if md.name not in (
                PLC_STATE, PLC_READS, PLC_ERRORS) else 0.0
            requality = quality is not None and self.filter.changed(("q", plc.name, md.name), quality)
            if self.filter.changed((plc.name, md.name), value, band) or requality:
                props = {"Quality": (INT32, quality)} if requality else {}
                out.append(Metric(None, self.datatypes.get((plc.name, md.name), md.datatype), value,
                                  alias=md.alias, timestamp_ms=ts, properties=props))
        return out

    # -- publishing, storing, replaying --------------------------------------------------------------

    async def _send(self, kind: str, device: str | None, metrics: list[Metric], *,
                    store: bool = True) -> None:
        """Publish one message now, or (DATA) commit it to the outbox for the replay. The payload's
        timestamp is taken under the lock, so it rises with seq (the order the host receives)."""
        if self._publishable(device) or self._lock.locked():  # (births under way: wait for them)
            try:
                async with self._lock:  # numbered and handed to the client in order; confirmed outside
                    if not self._publishable(device):
                        raise MqttUnavailable("the session ended")
                    payload = encode(metrics, seq=self.seq.next(), timestamp_ms=now_ms())
                    confirmed = self.link.send(self.topic(kind, device), payload, qos=self.cfg.data_qos)
                await confirmed
                self.stats.published += 1
                return
            except MqttUnavailable as exc:
                log.debug("Sparkplug %s not published (%s): stored", kind, exc)
        if store:
            await self._store(kind, device, metrics, now_ms())

    async def _store(self, kind: str, device: str | None, metrics: list[Metric], ts: int) -> None:
        body = base64.b64encode(encode(metrics, seq=None, timestamp_ms=ts)).decode("ascii")
        record = Record(MEASUREMENT, {"type": kind, "device": device or ""}, {"payload": body},
                        ts * 1_000_000, "event")
        result = await self.outbox.append_async([record], sinks=(SINK,))
        if result.ok:
            self.stats.stored += 1
            if self._born_now():  # a publish timed out on a live session: resend it from the backlog
                self._start_replay()
        else:
            self.stats.store_failures += 1

    def _start_replay(self) -> None:
        """A replay pass, or (one is under way) have it go back to the oldest row: a PLC just born
        may have rows it passed over."""
        self._rewind = True
        if self.outbox.backlog(SINK)[0] and (self._replay is None or self._replay.done()):
            self._replay = asyncio.get_running_loop().create_task(self._replay_backlog(),
                                                                  name="sparkplug-replay")

    async def _replay_backlog(self) -> None:
        """One pass over the backlog in commit order, historical, at most replay_per_s; it ends when
        the backlog is done or the session ends. A stored DDATA of a PLC not born in this session
        waits for its DBIRTH while the PLC is coming up (connecting, first data), and stays pending
        and is passed over while the PLC is lost (the rest of the backlog goes on); the PLC's DBIRTH
        starts the replay again from the oldest row."""
        loop = asyncio.get_running_loop()
        interval, next_at, after = 1.0 / self.cfg.replay_per_s, loop.time(), 0
        while self._publishable():
            if self._rewind:
                after, self._rewind = 0, False
            batch = await asyncio.to_thread(self.outbox.fetch_batch, SINK, REPLAY_BATCH, after)
            if batch is None:
                return
            sent: list[int] = []  # rows done: confirmed, or not ours to send
            inflight: list[tuple[int, asyncio.Future]] = []  # (row, its confirmation), in send order
            done = False
            try:
                # one record per row (how `_store` appends): ids and records pair up
                for row_id, record in zip(batch.ids, batch.records, strict=True):
                    if record.measurement != MEASUREMENT:
                        sent.append(row_id)
                    else:
                        device = record.tags.get("device") or None
                        if device is not None and device not in self.born and not self._plc_lost(device):
                            done = True  # still coming up: its DBIRTH starts the replay again
                            break
                        if device is None or device in self.born:  # a lost PLC's rows: kept for its DBIRTH
                            await asyncio.sleep(max(0.0, next_at - loop.time()))
                            next_at = max(next_at, loop.time() - interval) + interval
                            confirmation = asyncio.ensure_future(self._send_stored(record, device))
                            inflight.append((row_id, confirmation))
                    after = row_id
            finally:
                results = await asyncio.gather(*(f for _, f in inflight), return_exceptions=True)
                failed = [r for r in results if r is not None]
                sent += [row for (row, _), r in zip(inflight, results, strict=True) if r is None]
                if sent:
                    await asyncio.to_thread(self.outbox.ack, replace(batch, ids=tuple(sorted(sent))))
            if failed or done:
                if self._rewind and self._publishable():  # births (a Rebirth, a DBIRTH) came meanwhile:
                    continue  # their `_start_replay` found this pass still running, so it goes on
                if failed:
                    log.debug("Sparkplug replay paused: %s", failed[0])
                return

    async def _send_stored(self, record: Record, device: str | None) -> None:
        data = base64.b64decode(record.fields["payload"])
        async with self._lock:
            if not self._publishable(device):
                raise MqttUnavailable("the session ended")
            payload = historical(data, seq=self.seq.next())
            confirmed = self.link.send(self.topic(str(record.tags["type"]), device), payload,
                                       qos=self.cfg.data_qos)
        await confirmed
        self.stats.replayed += 1

    # -- what the broker brings: commands, the primary host's state ----------------------------------

    async def _on_ncmd(self, topic: str, data: bytes, retained: bool) -> None:
        if retained:
            self._refuse("NCMD", "retained", "a retained command is never obeyed (it would run at every "
                                             "connect)")
            return
        try:
            payload = decode(data)
        except ValueError as exc:
            self._refuse("NCMD", "payload", str(exc))
            return
        commands, refused = node_commands(payload, self.catalogue, enabled=self.cfg.commands,
                                          hosts=self.cfg.command_hosts)
        for r in refused:
            self._refuse("NCMD", r.metric, r.why)
        for command in commands:
            if command.kind == "rebirth":
                self._ask_rebirth()
            else:
                await self._operator(command)

    async def _on_dcmd(self, topic: str, data: bytes, retained: bool) -> None:
        device = clip(topic.rsplit("/", 1)[-1])
        try:
            refused = device_commands(decode(data), device)
        except ValueError as exc:
            self._refuse("DCMD", device, str(exc))
            return
        for r in refused or [None]:
            self._refuse("DCMD", r.metric if r else device, r.why if r else "device commands are refused")

    def _ask_rebirth(self) -> None:
        """Births again for a host's Rebirth, at most one per REBIRTH_MIN_S: the requests that come
        meanwhile are answered by the next one (a host looping on Rebirth, or a flood of them, made
        one NBIRTH and every DBIRTH per request)."""
        if self._rebirth is None or self._rebirth.done():
            self._rebirth = asyncio.get_running_loop().create_task(self._rebirth_soon(),
                                                                   name="sparkplug-rebirth")

    async def _rebirth_soon(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._births_at + REBIRTH_MIN_S - loop.time()))
        if self.link.connected and self.host_online is not False:
            try:
                await self._births()
            except MqttUnavailable as exc:
                log.warning("Sparkplug births for a Rebirth request not published: %s", exc)

    async def _operator(self, command: Command) -> None:
        """An allowed ack or shelve, through the operator path: role operator, user sparkplug:<host>."""
        user = f"sparkplug:{command.host}"
        verb = "Ack" if command.kind == "ack" else "Shelve"
        try:
            if command.kind == "ack":
                answer = self.ops.ack(command.alarm, user, command.reason, role="operator")
            else:
                answer = self.ops.shelve(command.alarm, user, command.seconds, command.reason,
                                         role="operator")
            self.stats.commands += 1
            if answer.get("changed") is False:  # e.g. already acknowledged: nothing to save or log (a
                return  # host repeating an Ack was an fsync'd save and a warning line each time)
            await self.ops.persist()
        except LinesentryError as exc:
            self._refuse("NCMD", alarm_metric(command.alarm, verb), str(exc))
            return
        log.warning("Sparkplug NCMD %s %s by %s done", verb, command.alarm, user)

    def _refuse(self, kind: str, what: str, why: str) -> None:
        """Counted always; logged and journaled within `RefusalGate`'s rate (a flood is summed up)."""
        self.stats.refused_commands += 1
        if not self.refusals.allow(time.monotonic()):
            return
        unsaid = self.refusals.take_unsaid()
        more = f" ({unsaid} more refused and not logged before this one)" if unsaid else ""
        log.warning("Sparkplug %s %s refused: %s%s", kind, what, why, more)
        self.events.add("controller", "sparkplug", f"{kind} {what} refused: {why}{more}", result="refused")

    async def _on_host_state(self, topic: str, data: bytes, retained: bool) -> None:
        """spBv1.0/STATE/<primary host>: JSON {"online": bool, ...} (Sparkplug 3.0)."""
        try:
            online = json.loads(data).get("online") is True
        except (ValueError, AttributeError):
            if self.refusals.allow(time.monotonic()):  # (the same rate as refused commands)
                log.warning("Sparkplug primary host STATE on %s is not JSON with \"online\": %r", topic,
                            data[:100])
            return
        was, self.host_online = self.host_online, online
        log.info("Sparkplug primary host %s is %s", self.cfg.primary_host_id,
                 "online" if online else "offline")
        if online and not was and self.link.connected:
            self._ask_rebirth()  # (a STATE flapping fast must not be a births storm either)


def now_ms() -> int:
    return int(time.time() * 1000)
