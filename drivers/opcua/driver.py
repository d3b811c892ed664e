"""OpcUaDriver: one OPC UA server session with asyncua, behind the common Driver interface.

Every connect() builds a NEW asyncua Client (asyncua's own reconnect is not relied
on: auto_reconnect stays off and the DriverSupervisor owns backoff and session rate),
reads the server's operation limits, re-reads the namespace array and re-resolves and
inspects every node. A tag that cannot be used (unknown node, namespace or browse path,
unusable DataType, percent deadband without EURange, refused monitored item) is BAD with
its reason in `stats.tag_errors`; the session and every other tag go on. subscribe() runs
one task per group plus a watchdog and raises ConnectionLost as soon as any of them sees
the link break, so the supervisor can report the loss and reconnect. Errors are typed by
asyncua's exception class (its StatusCode), never by message text: a refused identity is
CredentialsRejected, a certificate either side does not trust is CertificateUntrusted.
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

from drivers.base import DriverStats, OnBatch, Quality, ReadingBatch
from drivers.errors import (
    CertificateUntrusted,
    ConnectionLost,
    CredentialsRejected,
    DriverError,
    WriteFailed,
    WriteRefused,
)
from drivers.opcua import asyncua_log
from drivers.opcua.config import OpcUaConfig, OpcUaGroup, OpcUaTag
from drivers.opcua.convert import same_value, to_batch, to_variant, variant_type_of
from drivers.opcua.limits import OperationLimits, chunks, read_operation_limits
from drivers.opcua.nodes import missing_eurange, resolve_node_ids
from drivers.opcua.security import apply_security, channel_refused
from drivers.polling import poll_at_fixed_rate

log = logging.getLogger(__name__)

_CREDENTIAL_ERRORS = (uaerrors.BadUserAccessDenied, uaerrors.BadIdentityTokenInvalid,
                      uaerrors.BadIdentityTokenRejected)
# Every certificate validation failure a server can answer with, and a refused security check.
_CERTIFICATE_ERRORS = (
    uaerrors.BadCertificateUntrusted, uaerrors.BadCertificateInvalid, uaerrors.BadCertificateUriInvalid,
    uaerrors.BadCertificateTimeInvalid, uaerrors.BadCertificateHostNameInvalid,
    uaerrors.BadCertificateChainIncomplete, uaerrors.BadCertificateRevoked,
    uaerrors.BadCertificateRevocationUnknown, uaerrors.BadCertificateUseNotAllowed,
    uaerrors.BadCertificatePolicyCheckFailed, uaerrors.BadCertificateIssuerRevoked,
    uaerrors.BadCertificateIssuerRevocationUnknown, uaerrors.BadCertificateIssuerTimeInvalid,
    uaerrors.BadCertificateIssuerUseNotAllowed, uaerrors.BadNoValidCertificates,
    uaerrors.BadSecurityChecksFailed, uaerrors.BadSecurityPolicyRejected)
_FILTER_ERRORS = {ua.StatusCodes.BadMonitoredItemFilterUnsupported, ua.StatusCodes.BadFilterNotAllowed,
                  ua.StatusCodes.BadDeadbandFilterInvalid, ua.StatusCodes.BadMonitoredItemFilterInvalid}
_SUBSCRIPTION_QUEUE = 10_000  # notifications buffered per subscription before forcing a reconnect
_CURRENT_TIME = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)
_TEXT_TYPES = (ua.ObjectIds.String, ua.ObjectIds.LocalizedText)
_UNUSABLE = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadConfigurationError))
# asyncua's own health probe would report a silent link as BadShutdown after up to 2x this;
# our watchdog does that job, so asyncua only reacts to a closed socket.
_NO_ASYNCUA_PROBE_S = 24 * 3600.0
EURANGE_FIX = ("a percent deadband needs the node's EURange property, which it does not have: "
               "use an absolute deadband (deadband_abs or deadband_type = \"absolute\") or add EURange "
               "on the server")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, uaerrors.UaStatusCodeError):
        return ua.StatusCode(exc.code).name
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class OpcUaDriver:
    """Reads, subscribes to and writes the tags of one OPC UA server."""

    polled = False  # subscriptions report on change: a quiet tag is not a stale one (controller)

    def __init__(self, config: OpcUaConfig) -> None:
        self.config = config
        self.name = config.name
        self.tags: list[OpcUaTag] = list(config.tags)
        self.tag_names = [t.name for t in self.tags]
        self.stats = DriverStats()
        # The watchdog reads the server clock this often, keep-alives come at least this often,
        # so stats.last_alive is refreshed at least every alive_interval_s on a healthy link, and a
        # silent link is given up between timeout_s - alive_interval_s and timeout_s after it went
        # silent (each request gets at least 3/4 of timeout_s).
        self.alive_interval_s = min(config.timeout_s / 4, 1.0)
        self.connect_attempts = 0  # every connect() call (each builds a fresh Client)
        self.limits = OperationLimits()
        self.text_tags: set[str] = set()  # tags whose DataType is String/LocalizedText (this session)
        self.bit_tags: set[str] = set()  # tags whose DataType is Boolean (this session)
        self._pos = {n: i for i, n in enumerate(self.tag_names)}
        self._client: Client | None = None
        self._node_ids: list[ua.NodeId | None] = []
        self._errors: dict[int, str] = {}  # tag position -> why it is unusable this session
        self._logged: dict[int, str] = {}  # the reason last logged per tag: log a reason once
        self._value_errors: set[int] = set()  # usable tags whose latest value is BAD (reason in tag_errors)
        self._vtypes: dict[int, ua.VariantType] = {}
        self._good = np.zeros(len(self.tags), dtype=bool)  # latest quality GOOD/UNCERTAIN per tag
        self._last_answer = -math.inf  # monotonic time of the last response from the server
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._silent = False  # the link stopped answering: close() must not wait for a CloseSession reply
        asyncua_log.install()

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """New Client, security, session, limits, node ids and their inspection; DriverError on failure."""
        await self.close()
        self.connect_attempts += 1
        cfg = self.config
        client = Client(cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=_NO_ASYNCUA_PROBE_S)
        client.name = client.description = f"linesentry {cfg.name}"
        client.session_timeout = int(cfg.session_timeout_s * 1000)
        lost = asyncio.Event()
        self._lost, self._lost_reason, self._silent = lost, "", False

        async def on_lost(exc: Exception) -> None:
            if self._lost is lost and not lost.is_set():  # this session's, reported once
                self._lost_reason = f"the connection closed ({_describe(exc)})"
                lost.set()

        client.connection_lost_callback = on_lost
        session = False
        try:
            async with asyncio.timeout(cfg.timeout_s * 3):  # endpoint lookup + channel + session
                await apply_security(client, cfg.security, cfg.endpoint)
                await client.connect()
            session = True
            self.stats.sessions_created += 1
            # Each request below is bounded by timeout_s (asyncua's request timeout).
            limits = await read_operation_limits(client, cfg.max_nodes_per_request)
            node_ids, errors = await resolve_node_ids(client, [(t.node, t.browse_path) for t in self.tags],
                                                      limits.translate)
            vtypes, text, bits = await self._inspect(client, node_ids, errors, limits)
        except BaseException as exc:
            if session:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(cfg.timeout_s):
                        await client.disconnect()
            else:
                client.disconnect_socket()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                raise
            if isinstance(exc, DriverError):
                self.stats.last_error = str(exc)
                raise
            err = self._connect_error(exc)
            self.stats.last_error = str(err)
            raise err from exc
        self._client, self._node_ids, self._vtypes, self.limits = client, node_ids, vtypes, limits
        self.text_tags = {self.tag_names[i] for i in text}
        self.bit_tags = {self.tag_names[i] for i in bits}
        self._errors, self.stats.tag_errors, self._value_errors = {}, {}, set()
        self._good[:] = False
        self._last_answer = time.monotonic()
        for i, reason in sorted(errors.items()):
            self._tag_error(i, reason)

    def _connect_error(self, exc: BaseException) -> DriverError:
        ep, sec = self.config.endpoint, self.config.security
        if isinstance(exc, TimeoutError):
            return ConnectionLost(f"{ep}: no answer within {self.config.timeout_s:g} s")
        if isinstance(exc, _CREDENTIAL_ERRORS):
            who = f"user {sec.username!r}" if sec.username else "anonymous access"
            return CredentialsRejected(f"{ep}: bad credentials: the server refused {who} ({_describe(exc)})")
        if isinstance(exc, _CERTIFICATE_ERRORS) or (sec.is_secure and channel_refused(exc)):
            why = "it refused the secure channel" if channel_refused(exc) else _describe(exc)
            return CertificateUntrusted(
                f"{ep}: the server does not trust our client certificate {sec.client_certificate} ({why}); "
                "add it to the server's trusted list (on many servers: move it from the rejected to the "
                "trusted certificates)")
        if isinstance(exc, ConnectionRefusedError):
            return ConnectionLost(f"{ep}: connection refused (server down or wrong port)")
        if isinstance(exc, OSError):
            return ConnectionLost(f"{ep}: cannot connect: {exc.strerror or exc}")
        return ConnectionLost(f"{ep}: connect failed: {_describe(exc)}")

    async def _inspect(self, client: Client, node_ids: list[ua.NodeId | None], errors: dict[int, str],
                       limits: OperationLimits) -> tuple[dict[int, ua.VariantType], set[int], set[int]]:
        """DataType and ValueRank of every resolved tag (chunked reads): unusable tags go to `errors`.

        Returns the wire types of writable tags and the positions of text and Boolean tags; also checks that
        every percent-deadband tag has an EURange property.
        """
        todo = [i for i, n in enumerate(node_ids) if n is not None and i not in errors]
        reads = [(i, attr) for i in todo for attr in (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank)]
        got: dict[tuple[int, int], ua.DataValue] = {}
        for part in chunks(reads, limits.read):
            params = ua.ReadParameters(NodesToRead=[ua.ReadValueId(NodeId=node_ids[i], AttributeId=a)
                                                    for i, a in part])
            got.update(zip(part, await client.uaclient.read(params), strict=True))
        vtypes: dict[int, ua.VariantType] = {}
        text: set[int] = set()
        bits: set[int] = set()
        for i in todo:
            tag = self.tags[i]
            dtype, rank = got[(i, ua.AttributeIds.DataType)], got[(i, ua.AttributeIds.ValueRank)]
            datatype = dtype.Value.Value if dtype.StatusCode.is_good() and dtype.Value is not None else None
            if datatype is None:
                status = dtype.StatusCode.name
                errors[i] = ("node not found on the server" if status == "BadNodeIdUnknown" else
                             "cannot read its DataType; is it a variable?") + f" ({status})"
                continue
            value_rank = rank.Value.Value if rank.StatusCode.is_good() and rank.Value is not None else -2
            if tag.index is None and (value_rank == 0 or value_rank >= 1):
                errors[i] = "the node is an array: set index = <n> to take element n (0-based)"
                continue
            if tag.index is not None and value_rank == -1:
                errors[i] = f"index = {tag.index} is set but the node is a scalar, not an array"
                continue
            if datatype.NamespaceIndex == 0 and datatype.Identifier in _TEXT_TYPES:
                text.add(i)
            if datatype.NamespaceIndex == 0 and datatype.Identifier == ua.ObjectIds.Boolean:
                bits.add(i)
            if tag.writable:
                vt = variant_type_of(datatype)
                if vt is None:
                    try:
                        vt = await client.get_node(node_ids[i]).read_data_type_as_variant_type()
                    except (ua.UaError, ValueError) as exc:
                        errors[i] = (f"writable, but its DataType {datatype} has no wire type "
                                     f"({_describe(exc)})")
                        continue
                vtypes[i] = vt
        percent = {i: node_ids[i] for i in todo if i not in errors and self._is_percent(i)}
        if percent:
            for i in await missing_eurange(client, percent, limits.translate):
                errors[i] = EURANGE_FIX
        return vtypes, text, bits

    def _is_percent(self, i: int) -> bool:
        f = self._filter(self.config.group(self.tags[i].group), self.tags[i])
        return f is not None and f.DeadbandType == ua.DeadbandType.Percent

    def _tag_error(self, i: int, reason: str) -> None:
        """Mark tag i unusable for this session; log each distinct reason once per tag."""
        self._errors[i] = reason
        self.stats.tag_errors[self.tag_names[i]] = reason
        if self._logged.get(i) != reason:
            self._logged[i] = reason
            log.warning("%s: tag %r is BAD: %s", self.name, self.tag_names[i], reason)

    async def close(self) -> None:
        """End the session; never raises, bounded by the request timeout (at once on a silent link)."""
        client, self._client = self._client, None
        if client is None:
            return
        if self._silent:  # drop the socket first so that disconnect() sends nothing and waits for nothing
            client.disconnect_socket()
            await asyncio.sleep(0)  # the transport reports itself closed
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.config.timeout_s):
                await client.disconnect()
        client.disconnect_socket()

    def _require(self) -> Client:
        if self._client is None:
            raise ConnectionLost(f"{self.config.endpoint}: not connected")
        return self._client

    def _alive(self, at: float | None = None) -> None:
        """The server answered: refresh liveness (stats.last_alive only while a tag is usable)."""
        at = time.monotonic() if at is None else at
        self._last_answer = max(self._last_answer, at)
        if self._good.any():
            self.stats.last_alive = max(self.stats.last_alive, at)

    # ------------------------------------------------------------------ reads
    async def read(self, names: Sequence[str] | None = None) -> ReadingBatch:
        """Read these tags (all when None) in as few Read requests as the server's limits allow."""
        if names is None:
            index = list(range(len(self.tags)))
        else:
            unknown = [n for n in names if n not in self._pos]
            if unknown:
                raise DriverError(f"{self.name}: unknown tag(s) {', '.join(unknown)}")
            index = [self._pos[n] for n in names]
        batch = await self._read_index(index)
        self._good[batch.index] = batch.quality <= Quality.UNCERTAIN
        self._alive()
        return batch

    async def _read_index(self, index: list[int]) -> ReadingBatch:
        client = self._require()
        usable = [i for i in index if i not in self._errors]
        got: dict[int, ua.DataValue] = {}
        t0 = time.perf_counter()
        try:
            for part in chunks(usable, self.limits.read):
                params = ua.ReadParameters(
                    NodesToRead=[ua.ReadValueId(NodeId=self._node_ids[i], AttributeId=ua.AttributeIds.Value)
                                 for i in part], TimestampsToReturn=ua.TimestampsToReturn.Both)
                async with asyncio.timeout(self.config.timeout_s):
                    got.update(zip(part, await client.uaclient.read(params), strict=True))
        except Exception as exc:
            self.stats.read_errors += 1
            self._silent = isinstance(exc, TimeoutError)
            why = (f"no answer within {self.config.timeout_s:g} s" if self._silent else _describe(exc))
            self.stats.last_error = f"read failed: {why}"
            raise ConnectionLost(f"{self.config.endpoint}: read failed: {why}") from exc
        self.stats.record_latency(time.perf_counter() - t0)
        self.stats.reads += 1
        dvs = [got.get(i, _UNUSABLE) for i in index]
        batch = to_batch(index, dvs, elements=[self.tags[i].index for i in index])
        self._note_values(batch, dvs)
        return batch

    def _note_values(self, batch: ReadingBatch, dvs: list[ua.DataValue]) -> None:
        """Keep stats.tag_errors current for usable tags: why the latest value is BAD, gone when good."""
        bad = batch.quality == Quality.BAD
        if not self._value_errors and not bad.any():
            return
        for k, i in enumerate(batch.index.tolist()):
            if i in self._errors:
                continue
            if bad[k]:
                status = dvs[k].StatusCode
                self.stats.tag_errors[self.tag_names[i]] = (
                    f"the server reports {status.name}" if not status.is_good()
                    else "the value is neither a number nor text")
                self._value_errors.add(i)
            elif i in self._value_errors:
                self._value_errors.discard(i)
                self.stats.tag_errors.pop(self.tag_names[i], None)

    # ------------------------------------------------------------------ streaming
    async def subscribe(self, on_batch: OnBatch) -> None:
        """Subscriptions/polling per group plus a watchdog; raises ConnectionLost when the link breaks."""
        client = self._require()
        tasks: list[asyncio.Task] = []
        subs: list[Subscription] = []
        try:
            self._report_unusable(on_batch, sorted(self._errors))
            for group in self.config.groups:
                index = [i for i, t in enumerate(self.tags)
                         if t.group == group.name and i not in self._errors]
                if not index:
                    continue
                if group.mode == "subscription":
                    sub = await self._create_subscription(client, group, index, on_batch)
                    subs.append(sub)
                    job = self._pump(sub, on_batch)
                else:
                    job = self._poll(group, index, on_batch)
                tasks.append(asyncio.create_task(job, name=f"{self.name}:{group.name}"))
            tasks.append(asyncio.create_task(self._watchdog(client, subs), name=f"{self.name}:watchdog"))
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
            why = (f"no answer within {self.config.timeout_s:g} s" if isinstance(exc, TimeoutError)
                   else _describe(exc))
            self.stats.last_error = f"subscribe failed: {why}"
            raise ConnectionLost(f"{self.config.endpoint}: subscribe failed ({why})") from exc
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _report_unusable(self, on_batch: OnBatch, index: list[int]) -> None:
        if index:
            self._deliver(on_batch, to_batch(index, [_UNUSABLE] * len(index)))

    def _deliver(self, on_batch: OnBatch, batch: ReadingBatch) -> None:
        self.stats.batches += 1
        self.stats.values += len(batch)
        self.stats.bad_values += int(np.count_nonzero(batch.quality >= Quality.BAD))
        self._good[batch.index] = batch.quality <= Quality.UNCERTAIN
        self._alive()
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
        """One subscription per group; client handle = tag position + 1 maps notifications back.

        The keep-alive count makes the server answer at least every alive_interval_s (or every
        publishing interval if that is longer); monitored items are created in chunks of the
        server's MaxMonitoredItemsPerCall.
        """
        keepalive = max(1, math.floor(self.alive_interval_s * 1000 / group.publishing_interval_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=group.publishing_interval_ms,
            RequestedLifetimeCount=max(3 * keepalive, math.ceil(
                self.config.session_timeout_s * 1000 / group.publishing_interval_ms)),
            RequestedMaxKeepAliveCount=keepalive, MaxNotificationsPerPublish=0, PublishingEnabled=True,
            Priority=0)
        sub = await client.create_subscription(params, None, queue_maxsize=_SUBSCRIPTION_QUEUE,
                                               overflow=OverflowPolicy.DISCONNECT)
        failed: list[int] = []
        for part in chunks(index, self.limits.monitor):
            requests = [ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=self._node_ids[i], AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(
                    ClientHandle=i + 1, SamplingInterval=group.sampling_interval_ms,
                    QueueSize=group.queue_size, DiscardOldest=True, Filter=self._filter(group, self.tags[i])))
                for i in part]
            results = await sub.create_monitored_items(requests)
            for i, r in zip(part, results, strict=True):
                if isinstance(r, ua.StatusCode):
                    reason = (EURANGE_FIX if r.value in _FILTER_ERRORS and self._is_percent(i)
                              else "the server refused to monitor it")
                    self._tag_error(i, f"{reason} ({r.name})")
                    failed.append(i)
        self._report_unusable(on_batch, failed)
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
                batch = to_batch(pending_index, pending_values,
                                 elements=[self.tags[i].index for i in pending_index])
                self._note_values(batch, pending_values)
                pending_index.clear()
                pending_values.clear()
                self._deliver(on_batch, batch)

        async for event in sub:
            if isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if not status.is_good():
                    if self._lost.is_set():  # asyncua tells subscriptions "BadShutdown" on a closed socket
                        raise ConnectionLost(f"{self.config.endpoint}: {self._lost_reason}")
                    raise ConnectionLost(f"{self.config.endpoint}: the server ended the subscription "
                                         f"({status.name})")
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

        async def poll() -> None:
            self._deliver(on_batch, await self._read_index(index))

        await poll_at_fixed_rate(group.poll_interval_s, poll)

    async def _watchdog(self, client: Client, subs: list[Subscription]) -> None:
        """Give the link up `timeout_s` after the server's last answer; refresh liveness meanwhile.

        Reads the server clock every alive_interval_s; each read may take until timeout_s after
        the last answer of any kind (read, publish response, keep-alive), so a silent link is
        given up within timeout_s of going silent, and a closed one at once.
        """
        timeout, period = self.config.timeout_s, self.alive_interval_s
        node = client.get_node(_CURRENT_TIME)
        while True:
            if self._lost.is_set():
                raise ConnectionLost(f"{self.config.endpoint}: {self._lost_reason}")
            for sub in subs:  # publish responses, keep-alives included
                if sub.last_publish_at is not None:
                    self._alive(sub.last_publish_at)
            try:
                async with asyncio.timeout(max(0.0, self._last_answer + timeout - time.monotonic())):
                    await node.read_value()
            except TimeoutError as exc:
                self._silent = True
                raise ConnectionLost(f"{self.config.endpoint}: no answer within {timeout:g} s") from exc
            except Exception as exc:
                if self._lost.is_set():
                    raise ConnectionLost(f"{self.config.endpoint}: {self._lost_reason}") from exc
                raise ConnectionLost(f"{self.config.endpoint}: server not answering "
                                     f"({_describe(exc)})") from exc
            self._alive()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
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
        if i in self._errors:
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}: tag {name!r} is BAD: {self._errors[i]}")
        try:
            variant = to_variant(float(value), self._vtypes[i])
        except ValueError as exc:
            self.stats.write_errors += 1
            raise WriteRefused(f"{self.name}: tag {name!r}: {exc}") from exc
        node_id = self._node_ids[i]
        try:
            async with asyncio.timeout(self.config.timeout_s):
                status = (await client.uaclient.write_attributes([node_id], [ua.DataValue(variant)]))[0]
                if status.is_good() and self.config.readback:
                    back = (await client.read_attributes([client.get_node(node_id)]))[0]
        except Exception as exc:
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}: tag {name!r}: write failed ({_describe(exc)})") from exc
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
