"""Prometheus metrics, collected at scrape time so the hot path pays nothing for them.

The hot path only writes each step's duration into a preallocated ring
(`LatencyRing.record`: one array store). At scrape time the collector folds
the new ring entries into a cumulative histogram and reads every other figure
(driver counters, alarm states, action counts, outbox backlog, sync counters)
straight from the running controller.

Prometheus conventions, checked by `promtool check metrics` on a live scrape
(tests/controller/test_metrics_promtool.py): counters end in `_total`, units are in the
names, no `quantile` label outside a summary, and series whose labels the config fixes are
always present (docs/operations.md#monitoring lists them).
"""

import functools
import platform
import threading
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

import numpy as np
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.alarms import AlarmState

STEP_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 1e-2)
ALARM_STATES = tuple(str(s) for s in AlarmState)
ACTION_KINDS = ("fired", "shadow", "blocked", "rate_limited", "latched", "inhibited", "uninhibited", "reset",
                "confirmed", "failed")  # controller.actions.ActionEvent
PLC_COUNTERS = {
    "reads": "Read requests or subscription batches", "read_errors": "Failed reads",
    "writes": "Writes issued", "write_errors": "Failed writes",
    "values": "Values received", "bad_values": "Values received with bad quality",
    "sessions_created": "Sessions (connections) opened",
}
READ_LATENCY = {"0.5": "p50", "0.99": "p99"}  # quantile in the snapshot -> metric name part
SYNC_COUNTERS = {"sent_points", "sent_batches", "failed_sends", "retries", "dead_lettered_points",
                 "auth_failures", "delete_failures", "dropped_points", "append_failures"}


class LatencyRing:
    """The last `size` durations (seconds) plus a cumulative histogram folded in at scrape time."""

    def __init__(self, size: int = 65536, buckets: tuple[float, ...] = STEP_BUCKETS) -> None:
        self.ring = np.zeros(size)
        self.written = 0  # total records ever; the ring index is written % size
        self.folded = 0
        self.buckets = np.asarray(buckets)
        self.bucket_counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last one: +Inf
        self.total = 0.0
        self._lock = threading.Lock()  # scrapes may run in a thread; records never take it

    def record(self, seconds: float) -> None:
        self.ring[self.written % self.ring.shape[0]] = seconds
        self.written += 1

    def fold(self) -> None:
        with self._lock:
            written, size = self.written, self.ring.shape[0]
            new = min(written - self.folded, size)  # entries older than one ring are lost
            if new > 0:
                idx = np.arange(written - new, written) % size
                values = self.ring[idx]
                self.bucket_counts += np.bincount(np.searchsorted(self.buckets, values),
                                                  minlength=len(self.buckets) + 1)
                self.total += float(values.sum())
            self.folded = written

    def percentiles(self, qs: Iterable[float]) -> list[float]:
        n = min(self.written, self.ring.shape[0])
        if n == 0:
            return [float("nan") for _ in qs]
        return [float(v) for v in np.percentile(self.ring[:n], list(qs))]


class ControllerCollector(Collector):
    """Reads the figures from `snapshot()` at every scrape (see `Controller.metrics_snapshot`), plus
    prometheus_client's process and platform figures, so whatever registry serves the
    controller serves those too.

    Every labelled family whose label values are known from the config (alarm states, action
    kinds) emits each of them, zeros included: a series that comes and goes breaks `rate()`
    and alert rules.
    """

    def __init__(self, snapshot: Callable[[], dict], step_latency: LatencyRing) -> None:
        self.snapshot = snapshot
        self.step_latency = step_latency
        self._runtime: list[Collector] = []  # made at the first scrape: ProcessCollector reads /proc

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        yield self._step_histogram()
        yield from plc_metrics(snap["plcs"])
        yield from alarm_metrics(snap["alarms"])
        yield GaugeMetricFamily("linesentry_line_score", "Latest line anomaly score",
                                value=snap["line_score"])
        if snap["line_threshold"] is not None:
            yield GaugeMetricFamily("linesentry_line_threshold",
                                    "Line score above which the detector flags the line (the model's "
                                    "calibrated threshold)", value=snap["line_threshold"])
        yield from action_metrics(snap["action_counts"], snap.get("protections_disabled", []))
        yield GaugeMetricFamily("linesentry_outbox_rows", "Rows waiting in the outbox",
                                value=snap["outbox"]["rows"])
        yield GaugeMetricFamily("linesentry_outbox_bytes", "Bytes waiting in the outbox",
                                value=snap["outbox"]["bytes"])
        yield from sync_metrics(snap["sync"])
        yield build_info()
        if not self._runtime:
            self._runtime = [ProcessCollector(registry=None), PlatformCollector(registry=None)]
        for collector in self._runtime:
            yield from collector.collect()

    def _step_histogram(self) -> Metric:
        ring = self.step_latency
        ring.fold()
        cumulative = np.cumsum(ring.bucket_counts)
        return HistogramMetricFamily(
            "linesentry_step_seconds", "Hot-path time per driver batch (detector, alarms, actions)",
            buckets=[*((f"{b:g}", int(c)) for b, c in zip(ring.buckets, cumulative[:-1], strict=True)),
                     ("+Inf", int(cumulative[-1]))],
            sum_value=ring.total)


def plc_metrics(plcs: list[dict]) -> Iterable[Metric]:
    """Driver counters (exposed with `_total`), the session state and recent read latency per PLC.

    The latency figures are percentiles of the last reads, not a Summary: a Summary needs a
    cumulative count and sum, which the drivers do not keep. A PLC that delivers by
    subscription makes no reads and has no latency series."""
    for key, doc in PLC_COUNTERS.items():
        family = CounterMetricFamily(f"linesentry_plc_{key}", doc, labels=["plc"])
        for plc in plcs:
            family.add_metric([plc["name"]], plc["stats"][key])
        yield family
    connected = GaugeMetricFamily("linesentry_plc_connected", "1 while the PLC session is up", labels=["plc"])
    for plc in plcs:
        connected.add_metric([plc["name"]], 1.0 if plc["state"] == "connected" else 0.0)
    yield connected
    for quantile, name in READ_LATENCY.items():
        family = GaugeMetricFamily(f"linesentry_plc_read_latency_{name}_seconds",
                                   f"{name} of the read latency over the recent reads",
                                   labels=["plc"])
        for plc in plcs:
            if quantile in plc["read_latency"]:
                family.add_metric([plc["name"]], plc["read_latency"][quantile])
        yield family


def alarm_metrics(alarms: list[dict]) -> Iterable[Metric]:
    """Alarm counts per ISA-18.2 state, and one state set per alarm (1 for its state, 0 for the others)."""
    counts = dict.fromkeys(ALARM_STATES, 0)
    per_alarm = GaugeMetricFamily("linesentry_alarm_state", "1 for the state the alarm is in, 0 for the "
                                  "other ISA-18.2 states", labels=["alarm", "state"])
    for alarm in alarms:
        counts[alarm["state"]] += 1
        for state in ALARM_STATES:
            per_alarm.add_metric([alarm["name"], state], 1.0 if alarm["state"] == state else 0.0)
    by_state = GaugeMetricFamily("linesentry_alarms", "Alarms by ISA-18.2 state", labels=["state"])
    for state, count in counts.items():
        by_state.add_metric([state], count)
    yield by_state
    yield per_alarm


def action_metrics(counts: dict[str, int], disabled: list[dict]) -> Iterable[Metric]:
    """Decisions by kind (every known kind, zeros included) and the protections that will not act now."""
    decisions = CounterMetricFamily("linesentry_actions", "Action decisions by kind", labels=["kind"])
    for kind in dict.fromkeys([*ACTION_KINDS, *counts]):
        decisions.add_metric([kind], counts.get(kind, 0))
    yield decisions
    yield GaugeMetricFamily("linesentry_protections_disabled",
                            "Protections that will not act now (shelved/out-of-service alarms that "
                            "drive actions, inhibited, latched and shadow actions)", value=len(disabled))
    per_action = GaugeMetricFamily("linesentry_action_disabled", "1 per action and reason it will "
                                   "not write now", labels=["action", "kind"])
    for p in disabled:
        per_action.add_metric([p["action"], p["kind"]], 1.0)
    yield per_action


def sync_metrics(sync: dict[str, float]) -> Iterable[Metric]:
    """The cloud sync worker's figures (none without a [sync] section): counters get `_total`,
    the last success is a Unix timestamp in seconds, the rest are gauges."""
    for key, value in sync.items():
        if key in SYNC_COUNTERS:
            yield CounterMetricFamily(f"linesentry_sync_{key}", f"Sync worker: {key.replace('_', ' ')}",
                                      value=value)
        elif key == "last_success_unix":
            yield GaugeMetricFamily("linesentry_sync_last_success_timestamp_seconds",
                                    "Sync worker: Unix time of the last delivered batch (0: none yet)",
                                    value=value)
        else:
            yield GaugeMetricFamily(f"linesentry_sync_{key}", f"Sync worker: {key.replace('_', ' ')}",
                                    value=value)


@functools.cache
def build_labels() -> dict[str, str]:
    """The versions that decide how this controller behaves (read once: package metadata is on disk)."""
    return {"version": installed_version("linesentry"), "python": platform.python_version(),
            "numpy": installed_version("numpy"), "numba": installed_version("numba")}


def installed_version(dist: str) -> str:
    """`dist`'s version, "unknown" without its metadata (a source checkout run without `pip install`:
    every scrape failed with PackageNotFoundError, a 500 instead of the metrics)."""
    try:
        return dist_version(dist)
    except PackageNotFoundError:
        return "unknown"


def build_info() -> Metric:
    labels = build_labels()
    info = GaugeMetricFamily("linesentry_build_info", "Always 1; the labels say which build runs",
                             labels=list(labels))
    info.add_metric(list(labels.values()), 1.0)
    return info
