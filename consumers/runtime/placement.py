"""Whether a session's events come on the partition its key gives them: what per-session state
relies on.

The loops and budget services keep each session's state with the partition its events come
on (key = session_id, Kafka's default partitioner: :mod:`agentstream.schemas.partitioner`).
A producer that keys its records otherwise (no key, a user id) or partitions them otherwise
(librdkafka's own default, ``consistent_random``, hashes with CRC32, not murmur2) spreads one
session over several partitions: each partition's state sees part of it, so a loop or an
exceeded budget is found late or never, and nothing said so.

:class:`SessionPlacement` checks the first event of each session met on a partition (and
again when the session turns up on another): its partition must be the one Kafka's default
partitioner gives the session id among the topic's partitions. An event that is not there is
counted (``agentstream_consumer_misplaced_events_total``) and logged, at most once a minute,
with the offset, the partition expected and the record's key. It is handled as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry

from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.throttle import ThrottledLog

from .metrics import topic_counter
from .record import Record

log = logging.getLogger(__name__)

REMEMBERED_SESSIONS = 65_536
"""Sessions whose partition was found right, kept so that their later events cost one lookup
(the oldest forgotten first)."""


class SessionPlacement:
    """``check(record)``: False, counted and logged, when the record's session belongs on
    another partition (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        service: str,
        partition_count: Callable[[str], int | None],
        *,
        topics: Iterable[str] = (),
        remember: int = REMEMBERED_SESSIONS,
    ) -> None:
        """``topics``: those whose counter exists at 0 from the start (so that the first
        misplaced event is an increase for Prometheus)."""
        self._service = service
        self._partition_count = partition_count
        self._remember = remember
        self._placed: dict[str, int] = {}
        self._misplaced = topic_counter(
            registry,
            "agentstream_consumer_misplaced_events_total",
            "Events on another partition than Kafka's default partitioner gives their session "
            "id (the key agentstream producers use): their producer keys or partitions "
            "otherwise, and the service's per-session state is split.",
            service,
            topics,
        )
        self._log = ThrottledLog(log)

    def check(self, record: Record) -> bool:
        session = record.event.session_id
        if not session or self._placed.get(session) == record.partition:
            return True
        count = self._partition_count(record.topic)
        if not count:
            return True  # no metadata yet: nothing to compare with
        expected = partition_for(session.encode(), count)
        if expected == record.partition:
            if len(self._placed) >= self._remember:
                del self._placed[next(iter(self._placed))]
            self._placed[session] = expected
            return True
        self._misplaced.labels(self._service, record.topic).inc()
        self._log(
            f"misplaced:{record.topic}",
            "session %r: the event at %s[%d]@%d belongs on partition %d (Kafka's default "
            "partitioner of the session id over %d partitions; the record's key is %r): its "
            "producer keys or partitions otherwise, so this service sees the session in "
            "parts (key records by session_id, with the Java client's partitioner or "
            "librdkafka's murmur2_random)",
            session,
            record.topic,
            record.partition,
            record.offset,
            expected,
            count,
            record.key,
        )
        return False
