"""Fetches that raise: nothing skipped on the healthy partitions, the unreadable ones set aside.

A fetched batch that cannot be read (a bad CRC: Apache Kafka checks CRCs on produce, so that
comes from a broker's disk or a broker that does not check; a codec whose library is missing)
makes aiokafka's ``getmany`` raise, every time, at the same position. Worse, in that same call
aiokafka may already have taken the records of other partitions and moved their positions past
them: those records are dropped with the exception, and the next fetch starts after them. A
consumer that only retried would skip them for good, and commit past them (seen: 343 of 1,100
events of a healthy partition missing from the store, lag 0).

So after a fetch raises, :func:`rewind` puts every partition back where its worker expects the
next record, :func:`isolate` asks each partition alone to find those that fail on their own,
and :class:`UnreadablePartitions` keeps those paused (the others go on), logs what to do, and
tries them again every ``retry_s``. Their lag keeps growing on the gauge, where the lag alert
sees it. A partition whose batch stays unreadable stays where it is: nothing is skipped without
an operator (``kafka-consumer-groups --reset-offsets``), as with Kafka's own consumers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from agentstream.schemas.admin import UNREADABLE_ERRORS, fetch
from agentstream.schemas.throttle import ThrottledLog

log = logging.getLogger("agentstream.consumers.runtime")

RETRY_UNREADABLE_S = 60.0
"""How long a partition whose fetch fails on its own stays paused before it is tried again."""

Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


async def rewind(
    consumer: AIOKafkaConsumer,
    expected: Mapping[TopicPartition, int | None],
    service: str,
    *,
    reset: str,
) -> None:
    """Seek each assigned partition whose position is past ``expected`` (the next offset its
    worker waits for) back to it: records a failed fetch took are read again, not skipped.
    Where no record came yet, the group's committed offset is expected, else the start of
    the partition with ``reset`` "earliest" (with "latest" the start was wherever the end
    was, which is not known later: such a partition is left where it is)."""
    assigned = consumer.assignment()
    for tp, offset in expected.items():
        if tp not in assigned:
            continue
        try:
            if offset is None:
                offset = await consumer.committed(tp)
            if offset is None and reset == "earliest":
                offset = (await consumer.beginning_offsets([tp]))[tp]
            if offset is None:
                continue
            position = await consumer.position(tp)
        except Exception:  # revoked meanwhile, or the broker unavailable: try the next one
            continue
        if position > offset:
            consumer.seek(tp, offset)
            log.warning(
                "service %s: %s[%d] rewound from %d to %d: the failed fetch had taken those "
                "records; they are read again",
                service,
                tp.topic,
                tp.partition,
                position,
                offset,
            )


ISOLATE_WAIT_MS = 500
"""How long :func:`isolate` waits for each partition's fetch when a quick pass finds nothing:
aiokafka drops a fetched response whose position moved (it yielded records before the batch
that raised), and then only a new fetch raises again."""


async def isolate(
    consumer: AIOKafkaConsumer,
    error: KafkaError,
    max_records: int,
    feed: Callable[[Batches], None],
    *,
    wait_ms: int = ISOLATE_WAIT_MS,
) -> dict[TopicPartition, KafkaError]:
    """The partitions whose fetch raises on its own, with the error. The one ``error`` names,
    if it names one (aiokafka's bad CRC does); else each unpaused partition is fetched alone,
    at once and then waiting up to ``wait_ms`` each, what comes handed to ``feed``."""
    candidates = sorted(consumer.assignment() - consumer.paused())
    named = [tp for tp in candidates if repr(tp) in str(error)]
    if len(named) == 1:
        return {named[0]: error}
    for wait in (0, wait_ms):
        failed: dict[TopicPartition, KafkaError] = {}
        for tp in candidates:
            try:
                batches = await fetch(consumer, tp, timeout_ms=wait, max_records=max_records)
            except KafkaError as exc:
                failed[tp] = exc
                continue
            feed(batches)
        if failed:
            return failed
    return {}


@dataclass(slots=True)
class _Unreadable:
    position: int | None
    retry_at: float


class UnreadablePartitions:
    """Partitions set aside (paused) because fetching them raises, each tried again after
    ``retry_s``. The consumer pauses and resumes them; this keeps when and why."""

    def __init__(
        self,
        service: str,
        *,
        retry_s: float = RETRY_UNREADABLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.retry_s = retry_s
        self._clock = clock
        self._held: dict[TopicPartition, _Unreadable] = {}
        self._log = ThrottledLog(log, logging.ERROR)

    def __contains__(self, tp: object) -> bool:
        return tp in self._held

    def __bool__(self) -> bool:
        return bool(self._held)

    def position(self, tp: TopicPartition) -> int | None:
        """Where ``tp`` stands (its lag is counted from there when nothing was committed)."""
        held = self._held.get(tp)
        return held.position if held is not None else None

    def hold(self, tp: TopicPartition, position: int | None, error: KafkaError) -> None:
        self._held[tp] = _Unreadable(position, self._clock() + self.retry_s)
        hint = ""
        if isinstance(error, UNREADABLE_ERRORS):
            hint = (
                f". A batch that cannot be read (corrupt, compressed with a codec whose library "
                f"is missing, or holding a record the client cannot parse, such as a header "
                f"name that is not UTF-8) stays where it is: once understood, move the group "
                f"past it (kafka-consumer-groups --reset-offsets --to-offset N "
                f"--topic {tp.topic}:{tp.partition})"
            )
        self._log(
            f"unreadable:{tp.topic}:{tp.partition}",
            "service %s: cannot read %s[%d] at or after offset %s: %r. This partition is "
            "paused, the others go on; it is tried again every %.0f s%s",
            self.service,
            tp.topic,
            tp.partition,
            "?" if position is None else position,
            error,
            self.retry_s,
            hint,
        )

    def due(self) -> list[TopicPartition]:
        """The partitions to try again now (no longer held: a new failure holds them anew)."""
        now = self._clock()
        ready = [tp for tp, held in self._held.items() if held.retry_at <= now]
        for tp in ready:
            del self._held[tp]
        return ready

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions revoked: a new owner (or a new assignment) starts afresh."""
        for tp in tps:
            self._held.pop(tp, None)
