"""The publisher's own metrics, exported on an injected ``CollectorRegistry``.

The hot path only bumps plain integers (under the publisher's lock or on its sender thread);
a custom collector turns them into Prometheus families at scrape time, so publishing an
event never touches a metric object. With ``registry=None`` nothing is registered and the
numbers are still available from :meth:`ProducerMetrics.snapshot`.

Families (labels are bounded: topic names and a fixed set of drop reasons):

``agentstream_producer_events_emitted_total``            events handed to ``publish()``
``agentstream_producer_events_delivered_total{topic}``   acknowledged by the broker
``agentstream_producer_events_failed_total{topic}``      rejected by the broker for good
``agentstream_producer_events_spooled_total``            written to the disk spool
``agentstream_producer_events_dropped_total{reason}``    given up before reaching the broker
``agentstream_producer_queue_depth``                     events in memory and in the spool
``agentstream_producer_memory_bytes``                    encoded values held in memory
``agentstream_producer_spool_bytes``                     bytes of spool segments on disk
``agentstream_producer_spool_write_errors_total``        writes the disk refused (events wait)
``agentstream_producer_delivery_latency_seconds``        publish() to acknowledgement
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["DROP_REASONS", "LATENCY_BUCKETS", "ProducerMetrics", "ProducerStats"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

DROP_REASONS: tuple[str, ...] = (
    "queue_full",  # memory full and no spool configured (policy "drop")
    "spool_full",  # memory and spool full (policy "drop")
    "block_timeout",  # memory and spool stayed full for block_timeout_ms (policy "block")
    "too_large",  # the encoded event exceeds max_request_size
    "unencodable",  # the event's data cannot be encoded (or redaction failed)
    "spool_corrupt",  # a corrupt or torn region of the spool was skipped
    "closed",  # published after close(), or undeliverable at close() without a spool
)


@dataclass(frozen=True)
class ProducerStats:
    """A consistent-enough view of the publisher's counters (for tests, logs, health checks)."""

    emitted: int
    delivered: int
    failed: int
    spooled: int
    dropped: dict[str, int]
    in_memory: int
    spool_pending: int
    spool_bytes: int
    last_error: str | None = None
    delivered_by_topic: dict[str, int] = field(default_factory=dict)
    spool_write_errors: int = 0
    in_memory_bytes: int = 0

    @property
    def queue_depth(self) -> int:
        return self.in_memory + self.spool_pending


class ProducerMetrics:
    """Counters the publisher updates; exported through a collector when a registry is given."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        *,
        in_memory: Callable[[], int],
        in_memory_bytes: Callable[[], int],
        spool_pending: Callable[[], int],
        spool_bytes: Callable[[], int],
        spool_corrupt: Callable[[], int],
        spool_write_errors: Callable[[], int],
    ) -> None:
        self.emitted = 0
        self.spooled = 0
        self.delivered: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.last_error: str | None = None
        self._in_memory = in_memory
        self._in_memory_bytes = in_memory_bytes
        self._spool_pending = spool_pending
        self._spool_bytes = spool_bytes
        self._spool_corrupt = spool_corrupt
        self._spool_write_errors = spool_write_errors
        self._lock = threading.Lock()
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        if registry is not None:
            registry.register(_Collector(self))

    # --- updates (the publisher holds its own lock or runs on its sender thread) -----------

    def drop(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + count

    def record_delivered(self, topic: str, latencies: Iterable[float]) -> None:
        buckets = self._buckets
        total = 0.0
        count = 0
        with self._lock:
            for seconds in latencies:
                buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                total += seconds
                count += 1
            self._latency_sum += total
            self.delivered[topic] = self.delivered.get(topic, 0) + count

    def record_failed(self, topic: str, count: int) -> None:
        with self._lock:
            self.failed[topic] = self.failed.get(topic, 0) + count

    # --- reading ---------------------------------------------------------------------------

    def snapshot(self) -> ProducerStats:
        with self._lock:
            delivered = dict(self.delivered)
            failed = sum(self.failed.values())
        with self._lock:
            dropped = dict(self.dropped)
        dropped["spool_corrupt"] = dropped.get("spool_corrupt", 0) + self._spool_corrupt()
        return ProducerStats(
            emitted=self.emitted,
            delivered=sum(delivered.values()),
            failed=failed,
            spooled=self.spooled,
            dropped=dropped,
            in_memory=self._in_memory(),
            spool_pending=self._spool_pending(),
            spool_bytes=self._spool_bytes(),
            last_error=self.last_error,
            delivered_by_topic=delivered,
            spool_write_errors=self._spool_write_errors(),
            in_memory_bytes=self._in_memory_bytes(),
        )

    def families(self) -> Iterator[Metric]:
        with self._lock:
            delivered = dict(self.delivered)
            failed = dict(self.failed)
            buckets = list(self._buckets)
            latency_sum = self._latency_sum
        stats = self.snapshot()

        emitted = CounterMetricFamily(
            "agentstream_producer_events_emitted", "Events handed to the publisher."
        )
        emitted.add_metric([], stats.emitted)
        yield emitted
        yield _by_label(
            "agentstream_producer_events_delivered",
            "Events acknowledged by the broker.",
            "topic",
            delivered,
        )
        yield _by_label(
            "agentstream_producer_events_failed",
            "Events the broker rejected with a non-retriable error (logged).",
            "topic",
            failed,
        )
        spooled = CounterMetricFamily(
            "agentstream_producer_events_spooled", "Events written to the disk spool."
        )
        spooled.add_metric([], stats.spooled)
        yield spooled
        yield _by_label(
            "agentstream_producer_events_dropped",
            "Events given up before reaching the broker, by reason (each one is logged).",
            "reason",
            stats.dropped,
        )
        depth = GaugeMetricFamily(
            "agentstream_producer_queue_depth",
            "Events waiting for acknowledgement, in memory and in the spool.",
        )
        depth.add_metric([], stats.queue_depth)
        yield depth
        memory = GaugeMetricFamily(
            "agentstream_producer_memory_bytes",
            "Encoded events held in memory (bounded by max_queue_bytes).",
        )
        memory.add_metric([], stats.in_memory_bytes)
        yield memory
        spool_bytes = GaugeMetricFamily(
            "agentstream_producer_spool_bytes", "Bytes of spool segment files on disk."
        )
        spool_bytes.add_metric([], stats.spool_bytes)
        yield spool_bytes
        write_errors = CounterMetricFamily(
            "agentstream_producer_spool_write_errors",
            "Writes to the disk spool the disk refused (full, quota, I/O error); the events "
            "wait in memory.",
        )
        write_errors.add_metric([], stats.spool_write_errors)
        yield write_errors
        cumulative = 0
        rows: list[tuple[str, float]] = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
            cumulative += count
            rows.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        latency = HistogramMetricFamily(
            "agentstream_producer_delivery_latency_seconds",
            "Time from publish() to the broker's acknowledgement.",
            buckets=rows,
            sum_value=latency_sum,
        )
        yield latency


def _by_label(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


class _Collector(Collector):
    def __init__(self, metrics: ProducerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics.families())

    def describe(self) -> Iterable[Metric]:
        return []
