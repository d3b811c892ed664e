"""The device shadow on the MQTT link: desired changes in, the reported document out.

    <prefix>/desired/<field>   retained, the fleet's  {"value": ..., "version": N, "by": "who"}
    <prefix>/reported          retained, ours         {"version", "state", "desired", "delta", "rejected"}

`start()` loads the shadow file and applies its desired state again before anything else (no broker
needed: the edge keeps the fleet's last accepted state offline and across restarts), then
subscribes. Messages are queued by the link's handler and applied one at a time by a worker task,
so a model load never holds up the link's other subscribers. Each change goes through the
document's version rule (controller.shadow.document) and the field's Operations call
(controller.shadow.fields); accepted ones are saved (fsync) before the reported document says so.

The reported document is rebuilt at most every POLL_S from Operations.status() (never from the
hot path) and published when its content changed, a short DEBOUNCE_S after a desired change (so a
burst is one report), and again after every (re)connect: the broker's retained copy may be older
than what happened while it was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from controller.errors import BadRequest, LinesentryError, NotSaved
from controller.lifecycle.manager import ModelLifecycle
from controller.shadow.document import (
    MAX_FIELD_CHARS,
    MAX_REASON_CHARS,
    MAX_VERSION,
    Desired,
    DesiredError,
    ShadowDocument,
    clip,
    parse_desired,
    version_of,
)
from controller.shadow.fields import FIELDS, Change, shadow_fields
from controller.shadow.reported import reported_state
from controller.shadow.store import ShadowStore
from controller.tasks import cancel_and_wait

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from controller.config.shadow import ShadowConfig
    from controller.events import EventLog
    from controller.operations import Operations

log = logging.getLogger(__name__)

LIFECYCLE_FILE = "model-lifecycle.json"  # the previous model, across restarts (controller.lifecycle)
POLL_S = 1.0  # the reported state is rebuilt this often (a change shows within this)
DEBOUNCE_S = 0.05  # after a desired change, wait this long for more before reporting
QUEUE_MAX = 1000  # desired messages waiting to be applied; more are dropped (logged)
# rejections journaled per minute: a fleet client stuck in a retry loop must not push the line's history
# out of the journal (its retention drops the oldest rows); every one is still counted and reported
REJECTION_EVENTS_PER_MINUTE = 30


class Link(Protocol):
    """What the shadow needs of controller.mqtt.session.MqttLink."""

    connected: bool

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes, bool], Any],
                  qos: int = 1) -> None: ...

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None: ...

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...


@dataclass
class ShadowStats:
    received: int = 0
    stale: int = 0
    applied: int = 0
    rejected: int = 0
    dropped: int = 0  # the queue was full
    published: int = 0
    publish_failures: int = 0


class ShadowAgent:
    """One line's device shadow; `async start()` / `async stop()` (controller.runtime)."""

    def __init__(self, cfg: ShadowConfig, *, link: Link, ops: Operations, state_dir: Path,
                 events: EventLog, registry: Path | None = None) -> None:
        self.link, self.ops, self.events = link, ops, events
        self.prefix = cfg.prefix_for(ops.identity.site, ops.identity.line)
        if any(c in self.prefix for c in "+#\0") or "//" in self.prefix:
            raise BadRequest(f"shadow topic prefix {self.prefix!r} holds an MQTT wildcard, a NUL or an empty "
                             "level (from the site or line name): set [mqtt.shadow] topic_prefix")
        models_dir = cfg.models_dir_for(state_dir)
        self.lifecycle = ModelLifecycle(ops.config.models, ops=ops, models_dir=models_dir,
                                        record=self.record_edge, state_file=state_dir / LIFECYCLE_FILE)
        self.fields = shadow_fields(models_dir, cfg.threshold_margin_min, cfg.threshold_margin_max, registry,
                                    self.lifecycle)
        self.doc = ShadowDocument(FIELDS)
        self.store = ShadowStore(state_dir)
        self.stats = ShadowStats()
        self.last_report: dict[str, Any] | None = None
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_MAX)
        self._wake = asyncio.Event()
        self._published = 0  # the reported version the broker holds from us (0: none this run)
        self._saved = 0  # the reported version the shadow file holds (publish nothing above it)
        self._save_failing = False
        self._saving = asyncio.Lock()
        self._rejections: list[float] = []  # when the journaled rejections of the last minute were
        self._unjournaled = 0  # rejections over the budget since the last journaled one
        self._republish = True
        self._tasks: list[asyncio.Task] = []

    @property
    def reported_topic(self) -> str:
        return f"{self.prefix}/reported"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        problem = self.store.load(self.doc)
        if not self.doc.version:  # no usable file (first start, lost or damaged): an earlier one may have
            self.doc.version = int(time.time() * 1000)  # published versions; reports are >= DEBOUNCE_S apart
        self._saved = self.doc.version
        if problem:
            self.events.add("controller", "shadow", problem, result="damaged")
        self.lifecycle.load()
        await self._apply_saved()
        self.lifecycle.resume()
        self.link.subscribe(f"{self.prefix}/desired/+", self._on_message)
        self.link.on_connect(self._on_connect)
        self._tasks = [asyncio.create_task(self._work(), name="shadow:desired"),
                       asyncio.create_task(self._report_loop(), name="shadow:reported"),
                       asyncio.create_task(self.lifecycle.run(), name="shadow:model-lifecycle")]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        await self.lifecycle.stop()
        await self._save()

    # ------------------------------------------------------------------ desired
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            self._queue.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            log.warning("shadow: %d desired messages waiting; dropped one on %s", QUEUE_MAX, topic)

    async def _work(self) -> None:
        while True:
            topic, payload = await self._queue.get()
            try:
                await self.handle(topic, payload)
            except Exception as exc:  # a bug must not end the shadow: logged, and the version is not retried
                log.exception("shadow: handling %s failed", topic)
                field = topic.rpartition("/")[2]
                await self._reject(field, version_of(payload), "",
                                   f"internal error: {type(exc).__name__}: {exc}")

    async def handle(self, topic: str, payload: bytes) -> str:
        """Apply one desired message: "applied", "stale", "rejected" or "ignored" (an empty payload:
        the retained topic was cleared, which changes nothing)."""
        self.stats.received += 1
        field = topic.removeprefix(f"{self.prefix}/desired/")
        if not payload:
            return "ignored"
        try:
            desired = parse_desired(payload)
        except DesiredError as exc:
            return await self._reject(field, version_of(payload), "", str(exc))
        if self.doc.offer(field, desired) == "stale":
            self.stats.stale += 1
            log.debug("shadow: %s v%d is not above v%d: ignored", field, desired.version,
                      self.doc.seen(field))
            return "stale"
        spec = self.fields.get(field)
        if spec is None:
            return await self._reject(field, desired.version, desired.by,
                                      f"unknown field {field!r}: expected one of {', '.join(FIELDS)}")
        try:
            value = spec.check(desired.value)
            await spec.apply(value, self.ops, Change(field, desired))
        except (DesiredError, LinesentryError) as exc:
            return await self._reject(field, desired.version, desired.by, str(exc))
        self.doc.accept(field, Desired(value, desired.version, desired.by))
        self.stats.applied += 1
        await self._save()
        await self._persist_operations()
        log.info("shadow: %s v%d from %s applied", field, desired.version, desired.by)
        self._wake.set()
        return "applied"

    async def record_edge(self, field: str, value: str, by: str) -> None:
        """A decision the edge took itself (controller.lifecycle: `by` edge:promotion / edge:rollback)
        becomes the field's accepted desired value, one version above every one seen: the fleet's older
        retained value does not revert it, and a restart applies it again."""
        self.doc.accept(field, Desired(value, min(MAX_VERSION, self.doc.seen(field) + 1), by))
        await self._save()
        log.info("shadow: %s = %r recorded by %s", field, value, by)
        self._wake.set()

    async def _reject(self, field: str, version: int | None, by: str, reason: str) -> str:
        field, reason = clip(field, MAX_FIELD_CHARS), clip(reason, MAX_REASON_CHARS)
        self.doc.reject(field, version, by, reason)
        self.stats.rejected += 1
        text = f"desired {field}" + (f" v{version}" if version is not None else "") + f" rejected: {reason}"
        self._journal_rejection(text, f"shadow:{by or '?'}")
        await self._save()
        self._wake.set()
        return "rejected"

    def _journal_rejection(self, text: str, user: str) -> None:
        """A rejection event, within REJECTION_EVENTS_PER_MINUTE; past it one event says so, and the
        next journaled one how many were left out."""
        now = time.monotonic()
        self._rejections = [t for t in self._rejections if now - t < 60.0]
        if len(self._rejections) >= REJECTION_EVENTS_PER_MINUTE:
            if not self._unjournaled:
                self.events.add("controller", "shadow", f"over {REJECTION_EVENTS_PER_MINUTE} desired "
                                "rejections a minute: further ones are counted and reported, not journaled, "
                                "for the rest of the minute", user=user, result="flood")
                log.warning("shadow: %s (and further rejections this minute, not journaled)", text)
            self._unjournaled += 1
            return
        if self._unjournaled:
            text += f" ({self._unjournaled} earlier rejections not journaled)"
            self._unjournaled = 0
        self._rejections.append(now)
        self.events.add("controller", "shadow", text, user=user, result="rejected")
        log.warning("shadow: %s", text)

    async def _apply_saved(self) -> None:
        """The saved desired state, in field order, at start: what fails now is reported rejected
        (it stays desired, so the delta shows it) until the fleet sends a newer version."""
        for field in FIELDS:
            desired = self.doc.desired.get(field)
            if desired is None:
                continue
            spec = self.fields[field]
            try:
                await spec.apply(spec.check(desired.value), self.ops, Change(field, desired, again=True))
            except (DesiredError, LinesentryError) as exc:
                self.doc.reject(field, desired.version, desired.by, f"accepted, but cannot be applied at "
                                f"start: {exc}")
                self.events.add("controller", "shadow", f"saved desired {field} v{desired.version} cannot be "
                                f"applied at start: {exc}", user=f"shadow:{desired.by}", result="rejected")
                log.error("shadow: saved desired %s v%d cannot be applied at start: %s", field,
                          desired.version, exc)
        await self._persist_operations()

    async def _persist_operations(self) -> None:
        try:
            await self.ops.persist()  # the inhibits' state file and the journal, as the API does
        except NotSaved as exc:
            log.warning("shadow: %s", exc)

    async def _save(self) -> bool:
        """Save the document as it is now. One write at a time, in call order: two overlapping writes
        could land out of order and leave the older text (a reported version already published)."""
        async with self._saving:
            version, text = self.doc.version, self.store.dumps(self.doc)
            try:
                await asyncio.to_thread(self.store.write, text)
            except OSError as exc:  # said once per run of failures: the report round retries each POLL_S
                log.log(logging.DEBUG if self._save_failing else logging.ERROR,
                        "shadow: cannot save %s (%s): the desired state is in effect but not durable, and "
                        "no report is published; tried again at the next change and report round",
                        self.store.path, exc)
                self._save_failing = True
                return False
            if self._save_failing:
                log.warning("shadow: %s saved again", self.store.path)
            self._saved, self._save_failing = max(self._saved, version), False
            return True

    # ------------------------------------------------------------------ reported
    async def _on_connect(self) -> None:
        self._republish = True
        self._wake.set()

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: wait_for (3.11) can swallow a cancel
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()
                await asyncio.sleep(DEBOUNCE_S)
            self._wake.clear()
            try:
                await self.publish_report()
            except Exception:  # a bug (a link or status error) costs this round's report, not every later one
                log.exception("shadow: the reported document failed; tried again at the next round")

    def build_report(self) -> tuple[dict[str, Any], bool]:
        """The reported document now, and whether its content changed (its version rose)."""
        state = reported_state(self.ops, self.lifecycle)
        pending = {name: (lambda value, f=f: f.pending(value, state)) for name, f in self.fields.items()}
        return self.doc.report(state, self.doc.delta(pending))

    async def publish_report(self) -> bool:
        """Publish the reported document if it changed or the broker may hold an older one; False when
        it could not be published now (not connected: the next connect publishes it)."""
        report, changed = self.build_report()
        self.last_report = report
        if self._saved < report["version"] and not await self._save():
            return False  # the version is durable before anyone sees it, or it could go back at a restart
        if not (changed or self._republish or self._published != report["version"]):
            return True
        if not self.link.connected:
            return False
        try:
            await self.link.publish(self.reported_topic, json.dumps(report, sort_keys=True).encode(), qos=1,
                                    retain=True)
        except LinesentryError as exc:  # MqttUnavailable: the next round or connect tries again
            self.stats.publish_failures += 1
            log.debug("shadow: reported v%d not published: %s", report["version"], exc)
            return False
        self._published, self._republish = report["version"], False
        self.stats.published += 1
        return True
