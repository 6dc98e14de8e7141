"""When an event happened, for the services that measure time with it (budget, metrics, tracing).

An event's ``timestamp`` is set in the agent pod, and it is nearly always right: agentstream's
publisher stamps it and the record's Kafka timestamp (CreateTime) from one clock, moments
apart. Not always: a producer that leaves the field at its zero value (Go's ``time.Time{}`` is
0001-01-01T00:00:00Z), agent code that copies an old event's time, a year typed by hand. One
such event made a session last for centuries in the budget service (wall time exceeded, the
agent paused), the pipeline delay's sum in the metrics service meaningless, a trace's turn
years long.

:class:`EventTime` compares the event's time with its record's timestamp. Further apart than
``max_skew_ms`` (``AGENTSTREAM_MAX_CLOCK_SKEW_MS``, an hour by default; 0 turns the check
off), the event is timed at its record's timestamp instead, counted in
``agentstream_consumer_clock_skewed_events_total{service,topic}`` and logged (once a minute
per topic). Both times come from the log, so a replay gives the same result. A record without
a timestamp (-1) keeps the event's. Persistence stores the event as it came.

On a topic with ``message.timestamp.type=LogAppendTime`` the record's timestamp is the broker's:
an event delivered more than ``max_skew_ms`` after it happened (a pod's spool after a long
outage) is then timed at its delivery; raise the setting there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from msgspec.structs import replace
from prometheus_client import CollectorRegistry

from agentstream.schemas import Event
from agentstream.schemas.throttle import ThrottledLog

from .metrics import topic_counter
from .record import Record

if TYPE_CHECKING:
    from .consumer import EventConsumer

log = logging.getLogger(__name__)

DEFAULT_MAX_SKEW_MS = 3_600_000


class EventTime:
    """:meth:`event`: the record's event, or a copy timed at the record's timestamp when the two
    are further apart than ``max_skew_ms`` (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        service: str,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        *,
        topics: Iterable[str] = (),
    ) -> None:
        """``topics``: those whose counter exists at 0 from the start."""
        self.max_skew_ms = max_skew_ms
        self._service = service
        self._skewed = topic_counter(
            registry,
            "agentstream_consumer_clock_skewed_events_total",
            "Events whose timestamp was further from their Kafka record's timestamp than "
            "max_clock_skew_ms: timed at the record's timestamp instead.",
            service,
            topics,
        )
        self._log = ThrottledLog(log)

    @classmethod
    def of_service(cls, consumer: EventConsumer, *topics: str) -> EventTime:
        """The event time of ``consumer``'s service: its registry, name and
        ``max_clock_skew_ms``; ``topics`` get their counter at 0 from the start."""
        return cls(
            consumer.registry,
            consumer.service,
            consumer.settings.max_clock_skew_ms,
            topics=topics,
        )

    def event(self, record: Record) -> Event:
        return self.of(
            record.event, record.timestamp_ms, record.topic, record.partition, record.offset
        )

    def of(
        self,
        event: Event,
        record_ms: int,
        topic: str,
        partition: int,
        offset: int,
        *,
        count: bool = True,
    ) -> Event:
        """:meth:`event` for a record given by parts; ``count=False`` for a record counted
        before (read again to restore state)."""
        seconds = self.seconds(event, record_ms)
        if seconds is None:
            return event
        if count:
            self.skewed(event, record_ms, topic, partition, offset)
        return replace(event, timestamp=datetime.fromtimestamp(seconds, UTC))

    def seconds(self, event: Event, record_ms: int) -> float | None:
        """The record's timestamp in seconds when the event's is too far from it, else None."""
        skew = self.max_skew_ms
        if not skew or record_ms < 0:
            return None
        if abs(event.timestamp.timestamp() * 1000 - record_ms) <= skew:
            return None
        return record_ms / 1000

    def skewed(self, event: Event, record_ms: int, topic: str, partition: int, offset: int) -> None:
        """Count and log an event :meth:`seconds` retimed."""
        self._skewed.labels(self._service, topic).inc()
        self._log(
            f"skewed:{topic}",
            "event %s at %s[%d]@%d is stamped %s, more than %d ms from its record's timestamp "
            "(%s): timed at the record's (its producer's clock or timestamp field is wrong)",
            event.event_id,
            topic,
            partition,
            offset,
            event.timestamp.isoformat(),
            self.max_skew_ms,
            datetime.fromtimestamp(record_ms / 1000, UTC).isoformat(),
        )
