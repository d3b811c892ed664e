"""OpcUaDriver: one OPC UA server session with asyncua, behind the common Driver interface.

Every connect() builds a NEW asyncua Client (asyncua's own reconnect is not relied
on: auto_reconnect stays off and the DriverSupervisor owns backoff and session rate),
re-reads the namespace array and re-resolves every node. subscribe() runs one task per
group plus a watchdog and raises ConnectionLost as soon as any of them sees the link
break, so the supervisor can report COMM_LOST and reconnect.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent, Subscription
from asyncua.ua import uaerrors

from drivers.base import (
    ConnectionLost,
    ConnectionState,
    DriverError,
    DriverStats,
    OnBatch,
    Quality,
    ReadingBatch,
    WriteFailed,
    WriteRefused,
)
from drivers.opcua.config import OpcUaConfig, OpcUaGroup, OpcUaTag
from drivers.opcua.convert import same_value, to_batch, to_variant, variant_type_of
from drivers.opcua.nodes import resolve_node_ids
from drivers.opcua.security import apply_security

log = logging.getLogger(__name__)

_CREDENTIAL_ERRORS = (uaerrors.BadUserAccessDenied, uaerrors.BadIdentityTokenInvalid,
                      uaerrors.BadIdentityTokenRejected)
_CERTIFICATE_ERRORS = (uaerrors.BadCertificateUntrusted, uaerrors.BadCertificateInvalid,
                       uaerrors.BadSecurityChecksFailed, uaerrors.BadCertificateUriInvalid,
                       uaerrors.BadCertificateTimeInvalid, uaerrors.BadSecurityPolicyRejected)
_SUBSCRIPTION_QUEUE = 10_000  # notifications buffered per subscription before forcing a reconnect
_CURRENT_TIME = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, uaerrors.UaStatusCodeError):
        return ua.StatusCode(exc.code).name
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class OpcUaDriver:
    """Reads, subscribes to and writes the tags of one OPC UA server."""

    def __init__(self, config: OpcUaConfig) -> None:
        self.config = config
        self.name = config.name
        self.tags: list[OpcUaTag] = list(config.tags)
        self.tag_names = [t.name for t in self.tags]
        self.state = ConnectionState.DISCONNECTED
        self.stats = DriverStats()
        self.connect_attempts = 0  # every connect() call (each builds a fresh Client)
        self._pos = {n: i for i, n in enumerate(self.tag_names)}
        self._client: Client | None = None
        self._node_ids: list[ua.NodeId] = []
        self._vtypes: dict[int, ua.VariantType] = {}
        self._lost = asyncio.Event()
        self._lost_reason = ""

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """New Client, security, session, node ids, writable tags' types; DriverError on failure."""
        await self.close()
        self.connect_attempts += 1
        cfg = self.config
        client = Client(cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=cfg.timeout_s)
        client.name = client.description = f"linesentry {cfg.name}"
        client.session_timeout = int(cfg.session_timeout_s * 1000)
        lost = asyncio.Event()
        self._lost, self._lost_reason = lost, ""

        async def on_lost(exc: Exception) -> None:
            self._lost_reason = self._lost_reason or _describe(exc)
            lost.set()

        client.connection_lost_callback = on_lost
        session = False
        try:
            async with asyncio.timeout(cfg.timeout_s * 3):  # security lookup + session + resolution
                await apply_security(client, cfg.security, cfg.endpoint)
                await client.connect()
                session = True
                self.stats.sessions_created += 1
                refs = [(t.name, t.node, t.browse_path) for t in self.tags]
                node_ids = await resolve_node_ids(client, refs)
                vtypes = await self._read_variant_types(client, node_ids)
        except BaseException as exc:
            if session:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(cfg.timeout_s):
                        await client.disconnect()
            else:
                client.disconnect_socket()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                raise
            err = exc if isinstance(exc, DriverError) else DriverError(self._connect_message(exc))
            self.stats.last_error = str(err)
            raise err from None
        self._client, self._node_ids, self._vtypes = client, node_ids, vtypes

    def _connect_message(self, exc: BaseException) -> str:
        ep, sec = self.config.endpoint, self.config.security
        if isinstance(exc, TimeoutError):
            return f"{ep}: no answer within {self.config.timeout_s:g} s"
        if isinstance(exc, _CREDENTIAL_ERRORS):
            who = f"user {sec.username!r}" if sec.username else "anonymous access"
            return f"{ep}: bad credentials: the server refused {who} ({_describe(exc)})"
        if isinstance(exc, _CERTIFICATE_ERRORS):
            return (f"{ep}: the server does not trust our client certificate {sec.client_certificate} "
                    f"({_describe(exc)}); add it to the server's trusted certificates")
        if isinstance(exc, ConnectionRefusedError):
            return f"{ep}: connection refused (server down or wrong port)"
        if isinstance(exc, OSError):
            return f"{ep}: cannot connect: {exc.strerror or exc}"
        if isinstance(exc, ua.UaError) and "certificate mismatch" in str(exc):
            return f"{ep}: untrusted server certificate: the session presented a different certificate"
        return f"{ep}: connect failed: {_describe(exc)}"

    async def _read_variant_types(self, client: Client, node_ids: list[ua.NodeId]
                                  ) -> dict[int, ua.VariantType]:
        """Wire types of writable tags, read once per session (a restarted PLC may have changed them)."""
        idx = [i for i, t in enumerate(self.tags) if t.writable]
        if not idx:
            return {}
        nodes = [client.get_node(node_ids[i]) for i in idx]
        dvs = await client.read_attributes(nodes, ua.AttributeIds.DataType)
        out = {}
        for i, dv in zip(idx, dvs, strict=True):
            if not dv.StatusCode.is_good() or dv.Value is None or dv.Value.Value is None:
                raise DriverError(f"tag {self.tag_names[i]!r}: cannot read its DataType "
                                  f"({dv.StatusCode.name}); is it a variable?")
            vt = variant_type_of(dv.Value.Value)
            if vt is None:
                vt = await client.get_node(node_ids[i]).read_data_type_as_variant_type()
            out[i] = vt
        return out

    async def close(self) -> None:
        """End the session; never raises, bounded by the request timeout."""
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.config.timeout_s):
                await client.disconnect()
        client.disconnect_socket()

    def _require(self) -> Client:
        if self._client is None:
            raise ConnectionLost(f"{self.config.endpoint}: not connected")
        return self._client

    # ------------------------------------------------------------------ reads
    async def read(self, names: Sequence[str] | None = None) -> ReadingBatch:
        """One Read request for these tags (all when None)."""
        if names is None:
            index = list(range(len(self.tags)))
        else:
            unknown = [n for n in names if n not in self._pos]
            if unknown:
                raise DriverError(f"{self.name}: unknown tag(s) {', '.join(unknown)}")
            index = [self._pos[n] for n in names]
        return await self._read_index(index)

    async def _read_index(self, index: list[int]) -> ReadingBatch:
        client = self._require()
        nodes = [client.get_node(self._node_ids[i]) for i in index]
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                dvs = await client.read_attributes(nodes)
        except Exception as exc:
            self.stats.read_errors += 1
            self.stats.last_error = f"read failed: {_describe(exc)}"
            raise ConnectionLost(f"{self.config.endpoint}: read failed: {_describe(exc)}") from None
        self.stats.record_latency(time.perf_counter() - t0)
        self.stats.reads += 1
        return to_batch(index, dvs)

    # ------------------------------------------------------------------ streaming
    async def subscribe(self, on_batch: OnBatch) -> None:
        """Subscriptions/polling per group plus a watchdog; raises ConnectionLost when the link breaks."""
        client = self._require()
        tasks: list[asyncio.Task] = []
        try:
            for group in self.config.groups:
                index = [i for i, t in enumerate(self.tags) if t.group == group.name]
                if not index:
                    continue
                if group.mode == "subscription":
                    sub = await self._create_subscription(client, group, index, on_batch)
                    job = self._pump(sub, on_batch)
                else:
                    job = self._poll(group, index, on_batch)
                tasks.append(asyncio.create_task(job, name=f"{self.name}:{group.name}"))
            tasks.append(asyncio.create_task(self._watchdog(client), name=f"{self.name}:watchdog"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            exc = next((t.exception() for t in done if t.exception() is not None), None)
            reason = _describe(exc) if exc is not None else "a stream ended"
            if isinstance(exc, ConnectionLost):
                raise exc
            raise ConnectionLost(f"{self.config.endpoint}: connection lost ({reason})")
        except ConnectionLost as exc:
            self.stats.last_error = str(exc)
            raise
        except (OSError, TimeoutError, ua.UaError) as exc:  # while creating subscriptions
            self.stats.last_error = f"subscribe failed: {_describe(exc)}"
            raise ConnectionLost(f"{self.config.endpoint}: subscribe failed ({_describe(exc)})") from None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _deliver(self, on_batch: OnBatch, batch: ReadingBatch) -> None:
        self.stats.batches += 1
        self.stats.values += len(batch)
        self.stats.bad_values += int(np.count_nonzero(batch.quality >= Quality.BAD))
        try:
            on_batch(batch)
        except Exception:  # a consumer bug must not tear down the PLC session
            log.exception("%s: on_batch raised", self.name)

    def _filter(self, group: OpcUaGroup, tag: OpcUaTag) -> ua.DataChangeFilter | None:
        if tag.deadband_abs is not None:
            kind, value = ua.DeadbandType.Absolute, tag.deadband_abs
        elif tag.deadband_pct is not None:
            kind, value = ua.DeadbandType.Percent, tag.deadband_pct
        elif group.deadband_type == "absolute":
            kind, value = ua.DeadbandType.Absolute, group.deadband_value
        elif group.deadband_type == "percent":
            kind, value = ua.DeadbandType.Percent, group.deadband_value
        else:
            return None
        return ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValue, DeadbandType=kind,
                                   DeadbandValue=value)

    async def _create_subscription(self, client: Client, group: OpcUaGroup, index: list[int],
                                   on_batch: OnBatch) -> Subscription:
        """One subscription per group; client handle = tag position + 1 maps notifications back."""
        keepalive = max(1, math.ceil(self.config.timeout_s * 1000 / group.publishing_interval_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=group.publishing_interval_ms,
            RequestedLifetimeCount=max(3 * keepalive, math.ceil(
                self.config.session_timeout_s * 1000 / group.publishing_interval_ms)),
            RequestedMaxKeepAliveCount=keepalive, MaxNotificationsPerPublish=0, PublishingEnabled=True,
            Priority=0)
        sub = await client.create_subscription(params, None, queue_maxsize=_SUBSCRIPTION_QUEUE,
                                               overflow=OverflowPolicy.DISCONNECT)
        requests = [ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=self._node_ids[i], AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=i + 1, SamplingInterval=group.sampling_interval_ms, QueueSize=group.queue_size,
                DiscardOldest=True, Filter=self._filter(group, self.tags[i])))
            for i in index]
        results = await sub.create_monitored_items(requests)
        failed = [(i, r) for i, r in zip(index, results, strict=True) if isinstance(r, ua.StatusCode)]
        if failed:
            for i, status in failed:
                log.warning("%s: cannot monitor tag %r: %s", self.name, self.tag_names[i], status.name)
            self._deliver(on_batch, to_batch([i for i, _ in failed],
                                             [ua.DataValue(StatusCode=s) for _, s in failed]))
        return sub

    async def _pump(self, sub: Subscription, on_batch: OnBatch) -> None:
        """Notifications -> batches: everything one publish response carried goes out as one batch.

        asyncua queues all notifications of a publish synchronously and the iterator drains a
        non-empty queue without yielding, so a flush scheduled with call_soon runs after the
        whole publish response has been collected.
        """
        loop = asyncio.get_running_loop()
        pending_index: list[int] = []
        pending_values: list[ua.DataValue] = []
        scheduled = False

        def flush() -> None:
            nonlocal scheduled
            scheduled = False
            if pending_index:
                batch = to_batch(pending_index, pending_values)
                pending_index.clear()
                pending_values.clear()
                self._deliver(on_batch, batch)

        async for event in sub:
            if isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if not status.is_good():
                    raise ConnectionLost(f"{self.config.endpoint}: subscription ended ({status.name})")
            elif isinstance(event, DataChangeEvent):
                item = event.data.monitored_item
                pending_index.append(item.ClientHandle - 1)
                pending_values.append(item.Value)
                if not scheduled:
                    scheduled = True
                    loop.call_soon(flush)
        raise ConnectionLost(f"{self.config.endpoint}: subscription closed")

    async def _poll(self, group: OpcUaGroup, index: list[int], on_batch: OnBatch) -> None:
        """Batched reads on a fixed schedule (no drift; a late read skips the missed ticks)."""
        period = group.poll_interval_ms / 1000
        next_at = time.monotonic()
        while True:
            self._deliver(on_batch, await self._read_index(index))
            next_at += period
            now = time.monotonic()
            if next_at < now:
                next_at = now + period - (now - next_at) % period
            await asyncio.sleep(next_at - now)

    async def _watchdog(self, client: Client) -> None:
        """Read the server clock every timeout/2; a silent or closed link raises within ~1.5x timeout."""
        timeout = self.config.timeout_s
        node = client.get_node(_CURRENT_TIME)
        while True:
            if self._lost.is_set():
                raise ConnectionLost(f"{self.config.endpoint}: connection lost ({self._lost_reason})")
            try:
                async with asyncio.timeout(timeout):
                    await node.read_value()
            except Exception as exc:
                raise ConnectionLost(f"{self.config.endpoint}: server not answering "
                                     f"({_describe(exc)})") from None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout / 2):
                    await self._lost.wait()

    # ------------------------------------------------------------------ writes
    async def write(self, name: str, value: float) -> None:
        """Write as the node's own data type, then confirm by readback (when config.readback)."""
        i = self._pos.get(name)
        if i is None:
            raise WriteRefused(f"{self.name}: unknown tag {name!r}")
        if not self.tags[i].writable:
            raise WriteRefused(f"{self.name}: tag {name!r} is not writable "
                               "(set writable: true in its config)")
        client = self._require()
        try:
            variant = to_variant(float(value), self._vtypes[i])
        except ValueError as exc:
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}: tag {name!r}: {exc}") from None
        node_id = self._node_ids[i]
        try:
            async with asyncio.timeout(self.config.timeout_s):
                status = (await client.uaclient.write_attributes([node_id], [ua.DataValue(variant)]))[0]
                if status.is_good() and self.config.readback:
                    back = (await client.read_attributes([client.get_node(node_id)]))[0]
        except Exception as exc:
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}: tag {name!r}: write failed ({_describe(exc)})") from None
        self.stats.writes += 1
        if not status.is_good():
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}: tag {name!r}: server refused the write ({status.name})")
        if self.config.readback:
            got = back.Value.Value if back.Value is not None else None
            if not back.StatusCode.is_good() or not same_value(variant, got):
                self.stats.write_errors += 1
                raise WriteFailed(f"{self.name}: tag {name!r}: readback {got!r} ({back.StatusCode.name}) "
                                  f"does not confirm the written {variant.Value!r}")
