"""Prometheus metrics, collected at scrape time so the hot path pays nothing for them.

The hot path only writes each step's duration into a preallocated ring
(`LatencyRing.record`: one array store). At scrape time the collector folds
the new ring entries into a cumulative histogram and reads every other figure
(driver counters, alarm states, action counts, outbox backlog, sync counters)
straight from the running controller.
"""

import threading
from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

STEP_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 1e-2)


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
    """Reads the figures from `snapshot()` at every scrape (see `Controller.metrics_snapshot`)."""

    def __init__(self, snapshot: Callable[[], dict], step_latency: LatencyRing) -> None:
        self.snapshot = snapshot
        self.step_latency = step_latency

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        ring = self.step_latency
        ring.fold()
        cumulative = np.cumsum(ring.bucket_counts)
        yield HistogramMetricFamily(
            "linesentry_step_seconds", "Hot-path time per driver batch (detector, alarms, actions)",
            buckets=[*((f"{b:g}", int(c)) for b, c in zip(ring.buckets, cumulative[:-1], strict=True)),
                     ("+Inf", int(cumulative[-1]))],
            sum_value=ring.total)

        plc_counters = {
            "reads": "Read requests or subscription batches", "read_errors": "Failed reads",
            "writes": "Writes issued", "write_errors": "Failed writes",
            "values": "Values received", "bad_values": "Values received with bad quality",
            "sessions_created": "Sessions (connections) opened",
        }
        for key, doc in plc_counters.items():
            family = CounterMetricFamily(f"linesentry_plc_{key}", doc, labels=["plc"])
            for plc in snap["plcs"]:
                family.add_metric([plc["name"]], plc["stats"][key])
            yield family
        connected = GaugeMetricFamily("linesentry_plc_connected", "1 while the PLC session is up",
                                      labels=["plc"])
        latency = GaugeMetricFamily("linesentry_plc_read_latency_seconds",
                                    "Recent read latency quantiles", labels=["plc", "quantile"])
        for plc in snap["plcs"]:
            connected.add_metric([plc["name"]], 1.0 if plc["state"] == "connected" else 0.0)
            for q, v in plc["read_latency"].items():
                latency.add_metric([plc["name"], q], v)
        yield connected
        yield latency

        alarms = GaugeMetricFamily("linesentry_alarms", "Alarms by state", labels=["state"])
        for state, count in snap["alarm_states"].items():
            alarms.add_metric([state], count)
        yield alarms
        yield GaugeMetricFamily("linesentry_line_score", "Latest line anomaly score",
                                value=snap["line_score"])
        actions = CounterMetricFamily("linesentry_actions", "Action decisions by kind",
                                      labels=["kind"])
        for kind, count in snap["action_counts"].items():
            actions.add_metric([kind], count)
        yield actions
        disabled = snap.get("protections_disabled", [])
        yield GaugeMetricFamily("linesentry_protections_disabled",
                                "Protections that will not act now (shelved/out-of-service alarms that "
                                "drive actions, inhibited, latched and shadow actions)", value=len(disabled))
        per_action = GaugeMetricFamily("linesentry_action_disabled", "1 per action and reason it will "
                                       "not write now", labels=["action", "kind"])
        for p in disabled:
            per_action.add_metric([p["action"], p["kind"]], 1.0)
        yield per_action
        yield GaugeMetricFamily("linesentry_outbox_rows", "Rows waiting in the outbox",
                                value=snap["outbox"]["rows"])
        yield GaugeMetricFamily("linesentry_outbox_bytes", "Bytes waiting in the outbox",
                                value=snap["outbox"]["bytes"])
        for key, value in snap["sync"].items():
            yield GaugeMetricFamily(f"linesentry_sync_{key}", f"Sync worker: {key}", value=value)
