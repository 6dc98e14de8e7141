"""The consumer's Prometheus metrics, on a registry the caller injects.

Labels are bounded: service, handler (names in code), event type (the catalogue; anything
else is ``other``), outcome, and topic/partition for lag.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agentstream.schemas import EventType

from .histogram import BatchHistogram

CONSUMED, SKIPPED, FAILED, DEAD_LETTERED = "consumed", "skipped", "failed", "dead_lettered"
OUTCOMES = (CONSUMED, SKIPPED, FAILED, DEAD_LETTERED)
_KNOWN_TYPES = frozenset(t.value for t in EventType)
OTHER_TYPE = "other"

HANDLER_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


def topic_counter(
    registry: CollectorRegistry, name: str, doc: str, service: str, topics: Iterable[str]
) -> Counter:
    """A counter by ``service`` and ``topic`` whose series for ``topics`` exist at 0 from the
    start (so that the first count is an increase for Prometheus)."""
    counter = Counter(name, doc, ["service", "topic"], registry=registry)
    for topic in topics:
        counter.labels(service, topic)
    return counter


def type_label(event_type: str | None) -> str:
    """The ``type`` label of an event type: itself when the catalogue knows it, else ``other``."""
    return event_type if event_type in _KNOWN_TYPES else OTHER_TYPE


LagSource = Callable[[], Iterable[tuple[str, int, int]]]
"""Yields ``(topic, partition, lag)`` for the partitions the consumer holds."""


class LagCollector(Collector):
    """``agentstream_consumer_lag``: high watermark - committed offset, computed at scrape,
    for every consumer registered on the registry (a service may run several groups)."""

    def __init__(self) -> None:
        self._sources: list[tuple[str, Callable[[], LagSource | None]]] = []

    def add(self, service: str, source: LagSource) -> None:
        """Report ``source``'s lag under ``service``. A bound method is held weakly: the
        collector lives as long as its registry, and must not keep every consumer that ever
        reported on it alive (with its registry, through ``_FAMILIES``, and its Kafka client)."""
        if inspect.ismethod(source):
            self._sources.append((service, weakref.WeakMethod(source)))
        else:
            self._sources.append((service, lambda: source))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "agentstream_consumer_lag",
            "Records not yet committed per partition (high watermark - committed offset).",
            labels=["service", "topic", "partition"],
        )
        alive = []
        for service, ref in self._sources:
            source = ref()
            if source is None:  # its consumer is gone
                continue
            alive.append((service, ref))
            for topic, partition, lag in source():
                family.add_metric([service, topic, str(partition)], lag)
        self._sources = alive
        yield family


class _Families:
    """The runtime's metric families on one registry, shared by every consumer on it (a
    service running two consumer groups shows both, told apart by the ``service`` label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "agentstream_consumer_records_total",
            "Records by outcome: consumed (handed to handlers), skipped (no subscription "
            "matched), failed (a handler gave up or the record was undecodable), "
            "dead_lettered (copied to the DLQ).",
            ["service", "type", "outcome"],
            registry=registry,
        )
        # One observation per handler call, so filled a batch at a time (see BatchHistogram).
        self.duration = BatchHistogram(
            "agentstream_consumer_handler_duration_seconds",
            "Duration of one handler call (one attempt; a batch call for batch handlers).",
            HANDLER_BUCKETS,
            ["service", "handler"],
            registry=registry,
        )
        self.retries = Counter(
            "agentstream_consumer_handler_retries_total",
            "Handler calls that raised and were retried.",
            ["service", "handler"],
            registry=registry,
        )
        self.rebalances = Counter(
            "agentstream_consumer_rebalances_total",
            "Partition assignments received (each rebalance this member took part in).",
            ["service"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "agentstream_consumer_assigned_partitions",
            "Partitions currently assigned to this process.",
            ["service"],
            registry=registry,
        )
        self.paused_partitions = Gauge(
            "agentstream_consumer_paused_partitions",
            "Assigned partitions whose fetching is paused (backpressure or DLQ outage).",
            ["service"],
            registry=registry,
        )
        self.buffered_records = Gauge(
            "agentstream_consumer_buffered_records",
            "Records fetched and not yet finished.",
            ["service"],
            registry=registry,
        )
        self.commit_failures = Counter(
            "agentstream_consumer_commit_failures_total",
            "Offset commits the group coordinator refused or that failed (re-processed later).",
            ["service"],
            registry=registry,
        )
        self.dead_letter_errors = Counter(
            "agentstream_consumer_dead_letter_errors_total",
            "Failed attempts to publish a dead letter (retried; the record stays uncommitted).",
            ["service"],
            registry=registry,
        )
        self.lag = LagCollector()
        registry.register(self.lag)


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


def _families(registry: CollectorRegistry) -> _Families:
    found = _FAMILIES.get(registry)
    if found is None:
        found = _FAMILIES[registry] = _Families(registry)
    return found


class ConsumerMetrics:
    """Counters, histograms and gauges of one :class:`EventConsumer`, labelled with its
    service name; consumers sharing a registry share the metric families."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        families = _families(registry)
        self._records = families.records
        self._duration = families.duration
        self._retries = families.retries
        self.rebalances = families.rebalances.labels(service)
        self.assigned_partitions = families.assigned_partitions.labels(service)
        self.paused_partitions = families.paused_partitions.labels(service)
        self.buffered_records = families.buffered_records.labels(service)
        self.commit_failures = families.commit_failures.labels(service)
        self.dead_letter_errors = families.dead_letter_errors.labels(service)
        self._lag = families.lag
        self._record_children: dict[tuple[str, str], Counter] = {}
        self._durations = self._duration.new_batch()
        self._duration_labels: dict[str, tuple[str, str]] = {}
        self._retry_children: dict[str, Counter] = {}

    def add_lag_source(self, source: LagSource) -> None:
        """Report ``source``'s lag under this consumer's service name."""
        self._lag.add(self.service, source)

    def record(self, event_type: str | None, outcome: str, count: int = 1) -> None:
        key = (type_label(event_type), outcome)
        child = self._record_children.get(key)
        if child is None:
            child = self._record_children[key] = self._records.labels(self.service, *key)
        child.inc(count)

    def handler_duration(self, handler: str, seconds: float) -> None:
        """Observe one handler call; visible to scrapes after the next :meth:`publish`."""
        labels = self._duration_labels.get(handler)
        if labels is None:
            labels = self._duration_labels[handler] = (self.service, handler)
        self._durations.observe(seconds, labels)

    def publish(self) -> None:
        """Make the handler durations observed so far visible to scrapes. Called by the
        partition workers whenever they count consumed records (every 256 records, and
        whenever their queue runs empty), so a scrape lags by at most that."""
        durations = self._durations
        if durations.series:
            self._durations = self._duration.new_batch()
            self._duration.add(durations)

    def retried(self, handler: str) -> None:
        child = self._retry_children.get(handler)
        if child is None:
            child = self._retry_children[handler] = self._retries.labels(self.service, handler)
        child.inc()
