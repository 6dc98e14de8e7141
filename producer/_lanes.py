"""The sender's lanes: routing records to topic-partitions, building batches, and what
happens when the broker answers.

Key = :func:`~agentstream.schemas.codec.record_key` (the session), partition = Kafka's default
partitioner (:mod:`.partitioner`), passed explicitly to aiokafka, so Java and librdkafka
producers put a session on the same partition. One FIFO per topic-partition with at most one
batch in flight: a batch that fails with a retriable error goes back to the head of its lane,
so later events of that partition never overtake it. Batches are built with aiokafka's batch
API (``create_batch``/``send_batch``); ``linger_ms`` and ``max_batch_size`` apply per lane.
Everything here runs on the sender thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder as _FastBuilder

from agentstream.schemas.connect import refusal
from agentstream.schemas.errors import describe

from ._records import _Lane, _PublisherState, _Record

_MAX_ATTEMPTS_UNKNOWN_ERROR = 5
"""A batch failing with an error that is neither known-retriable nor known-permanent (such as
the embedded broker's UNKNOWN while it restarts) is retried this many times, then failed."""
_PERMANENT_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    UnsupportedVersionError,
    ProducerClosed,
)


class _Lanes(_PublisherState):
    """Routing, batching and delivery results (sender thread)."""

    # --- routing -------------------------------------------------------------------------

    def _partition_count(self, topic: str) -> int | None:
        if topic in self._counts:
            return self._counts[topic]
        count: int | None = None
        if self._producer is not None:
            partitions = self._producer.client.cluster.partitions_for_topic(topic)
            count = len(partitions) if partitions else None
        if count is None and self._producer is not None and topic not in self._metadata_wanted:
            self._metadata_wanted.add(topic)
            self._spawn(self._fetch_metadata(topic))
        self._counts[topic] = count
        return count

    async def _fetch_metadata(self, topic: str) -> None:
        assert self._producer is not None
        try:
            await asyncio.wait_for(
                self._producer.partitions_for(topic), self.settings.request_timeout_ms / 1000
            )
        except Exception as exc:
            # A broker that answers at bootstrap but advertises addresses not reachable from
            # the pod gives no metadata, and aiokafka's timeout says nothing of it.
            refused = await refusal(self._producer_options, ssl_cafile=self.settings.ssl_cafile)
            reason = describe(exc) if refused is None else str(refused)
            self.metrics.last_error = f"no metadata for topic {topic!r}: {reason}"
            self._warn("metadata:" + topic, "no metadata for topic %r yet: %s", topic, reason)
            await asyncio.sleep(self.settings.retry_backoff_ms / 1000)
        finally:
            self._metadata_wanted.discard(topic)
            self._kick_now()

    def _route_all(self, records: Iterable[_Record], now: float) -> None:
        # _route inlined: this loop runs once per event
        unrouted = self._unrouted
        lanes = self._lanes
        counts = self._counts
        partitioner = self._partitioner
        for record in records:
            if not record.queued:
                record.queued = now
            if unrouted:
                unrouted.append(record)
                continue
            topic = record.topic
            count = counts[topic] if topic in counts else self._partition_count(topic)
            if count is None:
                unrouted.append(record)
                continue
            partition = partitioner(record.key, count) if record.key else 0
            lane = lanes.get((topic, partition))
            if lane is None:
                lane = lanes[(topic, partition)] = _Lane(topic, partition)
            record.partition = partition
            lane.queue.append(record)
            lane.bytes += len(record.value)

    def _route(self, record: _Record, now: float) -> None:
        count = self._partition_count(record.topic)
        if count is None:
            self._unrouted.append(record)
            return
        partition = self._partitioner(record.key, count) if record.key else 0
        lane = self._lanes.get((record.topic, partition))
        if lane is None:
            lane = self._lanes[(record.topic, partition)] = _Lane(record.topic, partition)
        record.partition = partition
        lane.queue.append(record)
        lane.bytes += len(record.value)

    def _route_unrouted(self, now: float) -> None:
        unrouted = self._unrouted
        while unrouted and self._partition_count(unrouted[0].topic) is not None:
            self._route(unrouted.popleft(), now)

    # --- sending ----------------------------------------------------------------------------

    def _dispatch(self, now: float, urgent: bool) -> None:
        producer = self._producer
        if producer is None:
            return
        for lane in list(self._lanes.values()):
            if lane.inflight is not None or not lane.queue or lane.retry_at > now:
                continue
            if (
                not urgent
                and lane.bytes < self._batch_bytes
                and now - lane.queue[0].queued < self._linger
            ):
                continue
            count = self._partition_count(lane.topic)
            if count is not None and lane.partition >= count:
                self._reroute(lane, now)  # the topic lost partitions (recreated)
                continue
            batch = producer.create_batch()
            taken = _fill(batch, lane.queue)
            if not taken:  # cannot happen: an empty batch takes any single record
                continue
            batch.close()
            lane.bytes -= sum(len(record.value) for record in taken)
            lane.inflight = taken
            self._spawn(self._send(producer, lane, batch, taken))

    def _reroute(self, lane: _Lane, now: float) -> None:
        records = list(lane.queue)
        lane.queue.clear()
        lane.bytes = 0
        del self._lanes[(lane.topic, lane.partition)]
        for record in records:
            self._route(record, now)

    async def _send(
        self, producer: AIOKafkaProducer, lane: _Lane, batch: Any, taken: list[_Record]
    ) -> None:
        """Send a batch with the producer that was there when it was handed out (a close
        may take ``_producer`` away before this task first runs)."""
        try:
            future = await producer.send_batch(batch, lane.topic, partition=lane.partition)
            await future
        except Exception as exc:
            self._on_failure(lane, taken, exc)
        else:
            self._on_delivered(lane, taken)
        finally:
            self._kick_now()

    def _on_delivered(self, lane: _Lane, taken: list[_Record]) -> None:
        lane.inflight = None
        now = time.time()
        self.metrics.record_delivered(lane.topic, [now - r.created for r in taken])
        self._finish(taken)

    def _on_failure(self, lane: _Lane, taken: list[_Record], exc: BaseException) -> None:
        lane.inflight = None
        where = f"{lane.topic}[{lane.partition}]"
        if _retriable(exc) or (
            not _permanent(exc) and taken[0].attempts < _MAX_ATTEMPTS_UNKNOWN_ERROR
        ):
            self.metrics.last_error = f"sending to {where}: {describe(exc)}"
            self._warn(
                "retry:" + where,
                "batch of %d events to %s failed (%r); retrying, later events of the partition "
                "wait behind it",
                len(taken),
                where,
                exc,
            )
            lane.queue.extendleft(reversed(taken))
            lane.bytes += sum(len(r.value) for r in taken)
            lane.retry_at = time.monotonic() + self.settings.retry_backoff_ms / 1000
            return
        self.metrics.last_error = f"{where} rejected {len(taken)} events: {exc!r}"
        self._error(
            "failed:" + where,
            "the broker rejected a batch of %d events for %s with a non-retriable error: %r "
            "(counted in agentstream_producer_events_failed_total)",
            len(taken),
            where,
            exc,
        )
        self.metrics.record_failed(lane.topic, len(taken))
        self._finish(taken)

    def _finish(self, records: list[_Record]) -> None:
        spool = self._spool
        inherited = 0
        with self._lock:
            ledger = self._ledger
            flags = ledger.flags
            base = ledger.base
            for record in records:
                index = record.index
                if index >= base:
                    flags[index - base] = 1
                elif not index:
                    inherited += 1
                if record.ticket is not None and spool is not None:
                    spool.ack(record.ticket)
            ledger.advance()
            self._inherited -= inherited
            self._in_memory -= len(records)
            self._in_memory_bytes -= sum([len(record.value) for record in records])
            self._cond.notify_all()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _kick_now(self) -> None:
        if self._kick is not None:
            self._kick.set()


def _fill(batch: Any, queue: deque[_Record]) -> list[_Record]:
    """Move records from the head of ``queue`` into ``batch`` (an aiokafka ``BatchBuilder``)
    until it is full; return them.

    With aiokafka's compiled record builder (the usual case) the records go straight to it:
    ``BatchBuilder.append`` only adds keyword handling, a serializer check and the offset
    count, which we do here once per batch instead of once per record. Any other builder
    gets the public ``append``."""
    builder: Any = getattr(batch, "_builder", None)
    if (
        type(builder) is not _FastBuilder
        or getattr(batch, "_relative_offset", None) != 0
        or getattr(batch, "_key_serializer", None) is not None
        or getattr(batch, "_value_serializer", None) is not None
    ):
        taken: list[_Record] = []
        while queue:
            record = queue[0]
            timestamp = int(record.created * 1000)
            if (
                batch.append(
                    key=record.key,
                    value=record.value,
                    timestamp=timestamp,
                    headers=list(record.headers),
                )
                is None
            ):
                break
            record.attempts += 1
            taken.append(queue.popleft())
        return taken
    append = builder.append
    offset = 0
    for record in queue:
        if (
            append(
                offset,
                int(record.created * 1000),
                record.key,
                record.value,
                list(record.headers),  # the compiled builder takes a list only
            )
            is None
        ):
            break
        record.attempts += 1
        offset += 1
    batch._relative_offset = offset
    return [queue.popleft() for _ in range(offset)]


def _permanent(exc: BaseException) -> bool:
    """Errors that sending the same records again cannot fix."""
    return isinstance(exc, _PERMANENT_ERRORS)


def _retriable(exc: BaseException) -> bool:
    if isinstance(exc, KafkaTimeoutError | KafkaConnectionError | asyncio.TimeoutError):
        return True
    return bool(getattr(exc, "retriable", False))
