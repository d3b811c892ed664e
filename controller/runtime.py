"""The controller service: the composition root of one line, and its lifecycle.

    async with Controller(config) as controller:   # start: every part up, or none left running
        ...                                         # the API serves, PLC data flows
    # stop: writes finish, tasks end, sessions close, state saved, API closed

The parts, each in its own module:
- controller.pipeline: the hot path, one synchronous step per driver batch (`handle_batch`);
- controller.plc_health: connection state (the supervisors' on_state), liveness, comm loss,
  safe state, watchdog heartbeat;
- controller.writes: actuator writes as tasks, per-tag locks, confirmations;
- controller.journal: the one path by which transitions, decisions and confirmations become
  events and log lines;
- controller.housekeeping: the periodic round, the outbox feed;
- controller.persistence: the state file; controller.operations: what the API calls.

The constructor does no I/O (no files, sockets or model loading): `start` does, and unwinds
what it started if a later step fails (a failed start leaves no API port open and no task).
Tasks run under one `asyncio.TaskGroup`; teardown runs every step, logging any that fails.
Drivers come from the registry (drivers.registry): the runtime never names a protocol.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from controller.actions import ActionEngine
from controller.alarms import AlarmEngine
from controller.config import safe_state_alarm_name
from controller.errors import PlcError, Refused
from controller.events import EventLog
from controller.eventstore import journal_store
from controller.health import Probes
from controller.history import HistoryRecorder
from controller.housekeeping import HOUSEKEEPING_S, CloudFeed, Housekeeping
from controller.journal import Journal
from controller.linestate import LineState
from controller.metrics import ControllerCollector
from controller.modelload import ModelLoader
from controller.operations import Operations
from controller.persistence import StateKeeper
from controller.pipeline import SUMMARY_WINDOW_S, BuiltinAlarm, StepPipeline
from controller.plc_health import Plc, PlcHealth
from controller.points import Identity
from controller.statedir import ENGINEER_TOKEN_FILE, READ_TOKEN_FILE, TOKEN_FILE, StateDir
from controller.systemd import SystemdNotify
from controller.tasks import cancel_and_wait
from controller.writes import Writes
from drivers import registry
from drivers.supervisor import DriverSupervisor

if TYPE_CHECKING:
    from controller.api import ApiServer
    from controller.clock import Clock
    from controller.config import LineConfig
    from controller.mqtt.session import MqttLink
    from controller.outbox import Outbox
    from controller.shadow import ShadowAgent
    from controller.sparkplug.node import EdgeNode
    from drivers.base import Driver, ReadingBatch
    from models.detector import StreamingDetector

log = logging.getLogger(__name__)

__all__ = ["HOUSEKEEPING_S", "SUMMARY_WINDOW_S", "Controller", "make_driver"]

SHUTDOWN_SYNC_S = 2.0


def make_driver(plc: Any) -> Driver:
    """The PLC's driver, built by the plugin registered for its TOML table (`[[<plc.protocol>]]`);
    the plugin imports its protocol library only now. A plugin's failure is a PlcError that names
    the PLC and the plugin (any exception: the plugin is not ours to trust)."""
    try:
        return registry.plugin(plc.protocol).create(plc.driver)
    except Exception as exc:
        raise PlcError(f"{plc.name}: the {plc.protocol} driver could not be built: "
                       f"{type(exc).__name__}: {exc}") from exc


def _forward(name: str) -> property:
    """`Controller.<name>` is `Controller.ops.<name>`: the public API callers already use."""
    return property(lambda self: getattr(self.ops, name), doc=f"Operations.{name}")


class Controller:
    """One line's controller: `async with Controller(config) as c`, or `await run()` until `stop()`.

    `handle_batch(plc, batch)` is the public hook the supervisors call for every driver batch; a
    benchmark may replace `batch_handler` with a wrapper that times or profiles it.
    """

    def __init__(self, config: LineConfig, *, detector: StreamingDetector | None = None,
                 api_port: int | None = None, clock: Clock | None = None) -> None:
        from controller.clock import Clock

        self.config = config
        self.clock = clock or Clock()
        c = config.controller
        self.identity = Identity(c.site, c.line, c.name)
        self.state_dir = StateDir(c.state_dir)
        self.api_port = c.api_port if api_port is None else api_port
        self.tag_names = list(config.tags())
        self.detector_tags = config.detector_tags()
        self.line = LineState(self.tag_names, self.detector_tags)
        self.events = EventLog()
        self.journal = Journal(self.events)
        self.plcs = [Plc(p, make_driver(p), self.line.binding([t.name for t in p.driver.tags]),
                         p.effective_stale_timeout_s())
                     for _, p in config.plcs()]
        # Their names are reserved: the config check refuses an [[alarms]] entry that takes one.
        builtin = [BuiltinAlarm(safe_state_alarm_name(p.name), f"Safe-state write after losing {p.name} "
                                "failed: bring the line to its safe state by hand", plc=p.name)
                   for p in self.plcs if p.config.on_comm_loss == "safe_state"]

        def engines() -> tuple[AlarmEngine, ActionEngine]:
            return (AlarmEngine([*config.alarms, *builtin]),
                    ActionEngine(config.actions, shadow_global=c.shadow))

        alarms, actions = engines()
        tag_plc = {t.name: plc.name for plc in self.plcs for t in plc.config.driver.tags}
        self.pipeline = StepPipeline(config, self.line, links={p.name: p.link for p in self.plcs},
                                     tag_plc=tag_plc, builtin=builtin, alarms=alarms, actions=actions,
                                     journal=self.journal, summary_window_s=SUMMARY_WINDOW_S)
        self.health = PlcHealth(self.plcs, self.line, self.events, self.journal, self.clock,
                                shadow=c.shadow, issue=self._issue, restep=self._restep)
        self.writes = Writes({t.name: plc.driver for plc in self.plcs for t in plc.config.driver.tags},
                             actions, self.journal, self.clock, self.health.safe_state_failed)
        self.reasons: dict[str, str] = {}  # "alarm:<name>" / "action:<name>" -> the operator's reason
        self.keeper = StateKeeper(self.state_dir, alarms=alarms, actions=actions, new_engines=engines,
                                  plcs=self.plcs, reasons=self.reasons, summarizer=self.pipeline.summarizer,
                                  tag_names=self.tag_names, events=self.events, journal=self.journal,
                                  wall=self.clock.wall)
        self.cloud = CloudFeed(self.identity, self.tag_names, dict(config.detector.units))
        self.systemd = SystemdNotify.from_environment()  # READY/STOPPING here, WATCHDOG from housekeeping
        self.models = ModelLoader(config, self.events)
        self.probes = Probes(self.clock.mono, self.plcs, model=lambda: self.models.path)  # /healthz, /readyz
        self.housekeeping = Housekeeping(pipeline=self.pipeline, health=self.health, line=self.line,
                                         journal=self.journal, events=self.events, cloud=self.cloud,
                                         keeper=self.keeper, issue=self._issue, alive=self._alive)
        self.registry = CollectorRegistry()
        self.ops = Operations(config, identity=self.identity, line=self.line, pipeline=self.pipeline,
                              health=self.health, journal=self.journal, keeper=self.keeper,
                              models=self.models, reasons=self.reasons, events=self.events,
                              registry=self.registry, cloud=self.cloud.status,
                              started_at=lambda: self.started_at)
        self.registry.register(ControllerCollector(self.ops.metrics_snapshot, self.pipeline.step_latency))
        # [history]: every stepped frame to disk for `linesentry fit --history` (written by its own task)
        self.history = HistoryRecorder(config.history, config.history.dir_for(c.state_dir), line=self.line,
                                       pipeline=self.pipeline, config_hash=self.ops.config_hash,
                                       wall=self.clock.wall)
        self.ops.history = self.history.status
        self.batch_handler: Callable[[Plc, ReadingBatch], None] = self.handle_batch
        self.token: str | None = None  # read from (or created in) the state directory at start
        self.started_at: float | None = None
        self.store: Outbox | None = None  # the outbox (for [sync] and the Sparkplug node), opened at start
        self.mqtt: MqttLink | None = None  # with [mqtt]: the broker link, its node and shadow
        self.sparkplug: EdgeNode | None = None
        self.shadow: ShadowAgent | None = None
        self._given_detector = detector
        self._flush_soon = False  # a journal flush is scheduled after the batch that made transitions
        self._stop = asyncio.Event()
        self._exit: AsyncExitStack | None = None
        self._starting = False

    # ------------------------------------------------------------------ the hot path
    def handle_batch(self, plc: Plc, batch: ReadingBatch) -> None:
        """One driver batch: the pipeline's step, then its writes issued (never awaited); if it made
        alarm or action transitions, they are journaled right after the writes' first step instead
        of at the next housekeeping round (up to 50 ms later): the event stream, the HMI and the
        Sparkplug node see an alarm at once, and the actuator write still goes first."""
        wall = self.clock.wall()
        writes = self.pipeline.step(plc.binding, batch, self.clock.mono(), wall)
        self.history.append(wall)  # a tuple into a bounded list (~0.3 us); written by its own task
        if writes:
            self.writes.issue(writes)
        self.pipeline.after_writes(bool(writes))  # a challenger in shadow, the watch: after the writes
        if self.journal.pending and not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_transitions)

    def _flush_transitions(self) -> None:
        self._flush_soon = False
        try:
            self.journal.flush()
        except Exception as exc:  # the housekeeping round retries it (and logs a persistent failure)
            log.debug("journal flush after a batch failed: %s: %s", type(exc).__name__, exc)

    def _issue(self, writes) -> None:
        if writes:
            self.writes.issue(writes)

    def _alive(self) -> None:
        """After each housekeeping round whose checks ran: the systemd watchdog and /healthz hear it."""
        self.systemd.watchdog()
        self.probes.beat()

    def _restep(self) -> None:
        """Tags just became unknown (a lost session): the detector and the alarms see it now."""
        if self.pipeline.detector is not None:
            writes = self.pipeline.tick(self.clock.mono(), self.clock.wall(), restep=True)
            self._issue(writes)
            self.pipeline.after_writes(bool(writes))

    # ------------------------------------------------------------------ views the rig and tests read
    detector = property(lambda self: self.pipeline.detector, doc="the detector in use")
    alarms = property(lambda self: self.pipeline.alarms)
    actions = property(lambda self: self.pipeline.actions)
    values = property(lambda self: self.pipeline.values, doc="tag name -> live value")
    line_score = property(lambda self: self.pipeline.line_score)
    line_alarm = property(lambda self: self.pipeline.line_alarm)
    first_out = property(lambda self: self.pipeline.first_out)
    step_latency = property(lambda self: self.pipeline.step_latency)
    summarizer = property(lambda self: self.pipeline.summarizer)
    restored = property(lambda self: self.keeper.restored, doc="what the saved state brought back")
    model_path = property(lambda self: self.models.path)
    started_mono = property(lambda self: self.health.started_mono,
                            doc="monotonic start: a PLC that never delivered counts its silence from here")
    housekeeping_rounds = property(lambda self: self.housekeeping.rounds)
    outbox = property(lambda self: self.cloud.outbox)
    sync = property(lambda self: self.cloud.sync)

    status = _forward("status")
    tags = _forward("tags")
    alarm_list = _forward("alarm_list")
    ack = _forward("ack")
    shelve = _forward("shelve")
    unshelve = _forward("unshelve")
    set_out_of_service = _forward("set_out_of_service")
    reset_action = _forward("reset_action")
    inhibit_action = _forward("inhibit_action")
    persist = _forward("persist")
    protections_disabled = _forward("protections_disabled")
    reload_model = _forward("reload_model")
    metrics_snapshot = _forward("metrics_snapshot")

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Controller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(self, on_ready: Callable[[Controller], None] | None = None) -> None:
        """Run until `stop()`; start-up errors (bad model, port in use) raise before any task runs."""
        async with self:
            if on_ready is not None:
                on_ready(self)
            await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        """Bring every part up, in order; if a step fails, undo the steps done so far, then raise."""
        if self._exit is not None or self._starting:  # also a start overlapping one under way
            raise Refused("the controller is already running")
        self._starting = True
        stack = AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()  # each undo step logs its own failure and lets the others run
            raise
        finally:
            self._starting = False
        self._exit = stack
        self.systemd.ready()
        self.probes.started()

    async def aclose(self) -> None:
        """Stop everything `start` started (in reverse order); each failing step is logged."""
        stack, self._exit = self._exit, None
        if stack is not None:
            self.systemd.stopping()
            self.probes.stopping()
            await stack.aclose()

    async def _start(self, stack: AsyncExitStack) -> None:
        self.state_dir.create()
        self.events.open(journal_store(self.config.controller))  # before the first event of this start
        self._undo(stack, "closing the event journal", self.events.close)
        self.token = self.state_dir.token()
        closed = self.keeper.restore()
        if closed is not None:
            self.pipeline.add_window(closed)
        self.pipeline.detector = self.models.initial(self._given_detector)
        self.pipeline.detector.warm_up()
        # Everything built so far lives as long as the service: keep the collector from
        # walking it again and again (fewer, shorter pauses on the hot path).
        gc.collect()
        gc.freeze()

        api = self._api_server()
        await api.start()
        self.api_port = api.port  # the real port when 0 was asked
        self._undo(stack, "closing the API", api.stop)
        await self._start_cloud(stack)
        await self._start_mqtt(stack)
        self.keeper.forget_summary()
        self._undo(stack, "saving the state", self._final_save)

        self._undo(stack, "closing the history", self.history.close)  # after the sessions: no batch left
        self._undo(stack, "closing the PLC sessions", self._stop_supervisors)
        tasks = await stack.enter_async_context(asyncio.TaskGroup())  # its exit waits for every task
        started: list[asyncio.Task] = []
        self._undo(stack, "stopping the tasks", cancel_and_wait, started)
        self._undo(stack, "finishing the writes in flight", self.writes.finish)
        self.health.start()
        self.started_at = self.clock.wall()
        for plc in self.plcs:
            plc.supervisor = DriverSupervisor(plc.driver, lambda batch, p=plc: self.batch_handler(p, batch),
                                              on_state=lambda state, detail, p=plc: self.health.on_state(
                                                  p, state, detail))
            started.append(tasks.create_task(plc.supervisor.run(), name=f"driver:{plc.name}"))
            if plc.config.watchdog is not None:
                started.append(tasks.create_task(self.health.watchdog(plc), name=f"watchdog:{plc.name}"))
        started.append(tasks.create_task(self.housekeeping.run(), name="housekeeping"))
        started.append(tasks.create_task(self.history.run(), name="history"))
        self.health.warn_tight_timeouts()
        self.events.add("controller", "controller", f"started: {len(self.plcs)} PLC(s), "
                        f"{len(self.tag_names)} tags, model "
                        f"{self.models.path or 'none (rules only: invalid, limit, stale, flatline_s)'}")

    async def _start_cloud(self, stack: AsyncExitStack) -> None:
        """The outbox when [sync] or [mqtt.sparkplug] needs it; the cloud feed and sync with [sync].
        Neither: nothing is kept (and the modules are never imported)."""
        sync_cfg, mqtt_cfg = self.config.sync, self.config.mqtt
        sparkplug = mqtt_cfg is not None and mqtt_cfg.sparkplug is not None
        if sync_cfg is None and not sparkplug:
            return
        from controller.outbox import Outbox
        from controller.sinks.config import SyncConfig
        from controller.sparkplug import SINK

        outbox_dir = Path(self.state_dir.path) / "outbox"
        outbox_dir.mkdir(exist_ok=True)
        max_bytes = (sync_cfg.max_outbox_bytes if sync_cfg is not None
                     else SyncConfig.model_fields["max_outbox_bytes"].default)
        self.store = outbox = Outbox(outbox_dir, max_bytes=max_bytes, identity=self.identity)
        self._undo(stack, "closing the outbox", outbox.close)
        keep = {sync_cfg.sink} if sync_cfg is not None else set()
        for gone in set(outbox.sinks()) - keep - ({SINK} if sparkplug else set()):  # a sink no longer
            await asyncio.to_thread(outbox.unsubscribe, gone)  # configured holds no rows
        if sync_cfg is None:
            return
        self.cloud.open(outbox)
        if sync_cfg.enabled:
            from controller.sync import SyncWorker

            self.cloud.sync = sync = SyncWorker(sync_cfg, outbox, on_alarm=self._sync_alarm)
            await sync.start()
            self._undo(stack, "stopping the cloud sync", self._stop_sync)

    async def _start_mqtt(self, stack: AsyncExitStack) -> None:
        """No [mqtt]: no broker, and aiomqtt/protobuf are never imported. Else one link for the
        Sparkplug node and the device shadow; at stop the node's NDEATH goes before the disconnect."""
        mqtt_cfg = self.config.mqtt
        if mqtt_cfg is None:
            return
        from controller.mqtt.session import MqttLink

        c = self.config.controller
        self.mqtt = link = MqttLink(mqtt_cfg, client_id=mqtt_cfg.client_id_for(c.site, c.line))
        self._undo(stack, "closing the MQTT connection", link.stop)  # the last MQTT step at stop
        if mqtt_cfg.sparkplug is not None:
            from controller.metrics import installed_version
            from controller.sparkplug.node import EdgeNode

            self.sparkplug = node = EdgeNode(
                mqtt_cfg.sparkplug, link=link, config=self.config, line=self.line, pipeline=self.pipeline,
                plcs=self.plcs, events=self.events, ops=self.ops, outbox=self.store,
                state_dir=self.state_dir.path, software_version=installed_version("linesentry"))
            await node.start()
            self._undo(stack, "stopping the Sparkplug node", node.stop)
        if mqtt_cfg.shadow is not None:
            from controller.shadow import ShadowAgent

            self.shadow = agent = ShadowAgent(mqtt_cfg.shadow, link=link, ops=self.ops,
                                              state_dir=Path(self.state_dir.path), events=self.events,
                                              registry=self.config.models.registry)
            await agent.start()
            self._undo(stack, "stopping the device shadow", agent.stop)
        await link.start()
        self.ops.mqtt = self._mqtt_status

    def _mqtt_status(self) -> dict:
        """The MQTT link and the Sparkplug node, for status (cheap: counters only)."""
        link = self.mqtt
        return {"broker": link.config.broker, "connected": link.connected, "protocol": link.protocol or None,
                "connects": link.stats.connects, "published": link.stats.published,
                "publish_failures": link.stats.publish_failures,
                "refused_publishes": link.stats.refused_publishes, "last_error": link.stats.last_error,
                "sparkplug": self.sparkplug.status() if self.sparkplug is not None else None}

    def _undo(self, stack: AsyncExitStack, what: str, step: Callable[..., Any], *args: Any) -> None:
        """Register a teardown step: it runs at stop (or when a later start step fails), and a
        failure in it is logged and does not keep the next steps from running."""
        async def logged() -> None:
            try:
                result = step(*args)
                if isinstance(result, Awaitable):
                    await result
            except Exception as exc:
                log.error("stop: %s failed: %s: %s", what, type(exc).__name__, exc)
        stack.push_async_callback(logged)

    async def _stop_supervisors(self) -> None:
        for plc in self.plcs:
            if plc.supervisor is not None:
                await plc.supervisor.stop()  # closes the session; its task is already cancelled

    async def _final_save(self) -> None:
        self.journal.flush()  # what happened before the stop is logged before it
        self.events.add("controller", "controller", "stopped")
        try:
            await self.housekeeping.flush()
        finally:
            # The open summary window goes into the state file, not the outbox: the next start resumes
            # it (or commits it whole), so one window is never committed twice (docs/cloud-sync.md).
            await self.keeper.save(summary=True)

    async def _stop_sync(self) -> None:
        """A short, bounded chance to send what is waiting; the rest goes at the next start."""
        sync, outbox = self.cloud.sync, self.cloud.outbox
        sync.wake()
        deadline = time.monotonic() + SHUTDOWN_SYNC_S
        while outbox.backlog()[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await sync.stop()

    def _api_server(self) -> ApiServer:
        """The API with its limits (controller.api); reads need a token beyond loopback."""
        from controller.api import ApiServer, create_app, reserved_fds

        c = self.config.controller
        if c.reads_need_token:
            log.warning("API bound to %s, beyond loopback: reads, /metrics and the event stream need a "
                        "token (%s or %s in %s)", c.api_host, READ_TOKEN_FILE, TOKEN_FILE,
                        self.state_dir.path)
        app = create_app(self.ops, self.token, read_token=self.state_dir.token(READ_TOKEN_FILE),
                         engineer_token=self.state_dir.token(ENGINEER_TOKEN_FILE),
                         reads_need_token=c.reads_need_token,
                         allowed_hosts={c.api_host, *c.api_allowed_hosts},
                         body_timeout_s=c.api_idle_timeout_s, probes=self.probes)
        return ApiServer(app, c.api_host, self.api_port, max_connections=c.api_max_connections,
                         idle_timeout_s=c.api_idle_timeout_s,
                         reserved=reserved_fds(len(self.plcs), sync=self.config.sync is not None))

    def _sync_alarm(self, kind: str, message: str) -> None:
        self.events.add("outbox", "sync", f"{kind}: {message}", result="alarm")
        log.error("cloud sync: %s: %s", kind, message)
