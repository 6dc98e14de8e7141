"""One partition's worker: records in offset order, handlers of a record concurrently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from aiokafka.structs import TopicPartition

from agentstream.schemas import DecodeError, Event, RecordLocation, header
from agentstream.schemas.codec import announced_type_error, decode_event, untagged_error
from agentstream.schemas.envelope import checked_type

from .deadletter import DECODE_HANDLER, REASON_UNDECODABLE, REPLAYED_FOR, Failure
from .dispatch import Dispatcher, bounded
from .metrics import CONSUMED, FAILED, SKIPPED
from .offsets import PartitionOffsets
from .record import ENCODINGS, Record, encoding_for
from .subscriptions import BatchSubscription, Subscription, SubscriptionTable

log = logging.getLogger("agentstream.consumers.runtime")


YIELD_EVERY = 256
"""Records a worker handles before it lets the event loop run other tasks. Handlers that
complete without awaiting never give the loop back, so the fetch loop could neither resume
paused partitions nor send the next fetch until this partition's queue was empty: the
process then waited on the broker with nothing queued (10-20 % of a backlog drain)."""

_Known = tuple[str, tuple[Subscription, ...], tuple[BatchSubscription, ...], bool]
"""A ``ce_type``'s type, event and batch subscriptions, and whether a Record is needed."""


class _Batch:
    __slots__ = ("items", "started")

    def __init__(self) -> None:
        self.items: list[tuple[Record, Any]] = []
        self.started = 0.0


class PartitionWorker:
    """Processes the records of one partition, one after the other.

    ``gate`` opens once the ``on_assigned`` callbacks have returned: no record reaches a
    handler before. :meth:`stop` finishes the record in progress and the batches already
    collected, drops what is still queued (uncommitted, so fetched again by whoever owns the
    partition next) and returns within its bound.
    """

    def __init__(
        self, tp: TopicPartition, table: SubscriptionTable, dispatcher: Dispatcher
    ) -> None:
        self.tp = tp
        self.offsets = PartitionOffsets()
        self.gate = asyncio.Event()
        self.paused = False
        self._table = table
        self._dispatcher = dispatcher
        self._metrics = dispatcher.metrics
        self._queue: deque[Any] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._batches: dict[BatchSubscription, _Batch] = {}
        self._types: dict[bytes, _Known] = {}  # by ce_type header value (see _lookup)
        self._group = dispatcher.group_id.encode()  # replays for other groups are skipped
        self._consumed: dict[str, int] = {}  # counted here, added to the metric per chunk
        self._uncounted = 0
        self._restarted: list[Any] | None = None  # records of a log that restarted (see feed)
        self._task = asyncio.create_task(
            self._run(), name=f"agentstream-partition-{tp.topic}-{tp.partition}"
        )

    def feed(self, records: Sequence[Any]) -> None:
        """Queue fetched records (aiokafka ``ConsumerRecord``s, in offset order).

        Records that start below the offset expected next mean the log restarted under the
        consumer: the topic was deleted and created again, or truncated (an unclean leader
        election), and the client reset its position (``auto_offset_reset``). They are new
        records, not a redelivery: they wait here until the records in progress are done,
        then are processed under offsets tracked afresh (committed even where lower)."""
        if self._stopping or not records:
            return
        restarted = self._restarted
        if restarted is None:
            expected = self.offsets.next
            if expected is None or records[0].offset >= expected:
                self._queue.extend(self.offsets.received_all(records))
                self._wake.set()
                return
            log.error(
                "%s[%d]: the log restarted at offset %d, below the %d expected next (the topic "
                "was created again or truncated): its records are processed as new ones once "
                "those in progress are done; records of the old log not read yet are gone",
                self.tp.topic,
                self.tp.partition,
                records[0].offset,
                expected,
            )
            restarted = self._restarted = []
        last = restarted[-1].offset if restarted else -1
        restarted.extend(record for record in records if record.offset > last)
        self._wake.set()

    @property
    def next_offset(self) -> int | None:
        """The offset of the next record this worker expects (None before any came)."""
        restarted = self._restarted
        return restarted[-1].offset + 1 if restarted else self.offsets.next

    @property
    def buffered(self) -> int:
        """Records received and not finished, those of a restarted log included."""
        restarted = self._restarted
        return self.offsets.outstanding + (len(restarted) if restarted else 0)

    def _restart(self) -> None:
        """Track a restarted log's records afresh, now that the old ones are all done."""
        records, self._restarted = self._restarted or [], None
        self.offsets = PartitionOffsets()
        self._queue.extend(self.offsets.received_all(records))

    @property
    def done(self) -> bool:
        return self._task.done()

    @property
    def failed(self) -> bool:
        """Whether the worker died of an error (a bug: handlers' errors never get here)."""
        task = self._task
        return task.done() and not task.cancelled() and task.exception() is not None

    async def stop(self, timeout: float) -> bool:
        """Finish in-flight work within ``timeout`` seconds; True if it did, False if cut."""
        self._stopping = True
        self._queue.clear()
        self._wake.set()
        self.gate.set()
        task = self._task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), max(timeout, 0.0))
        if task.done():
            return True
        log.warning(
            "partition %s[%d]: in-flight work did not finish within %.1f s, cancelled "
            "(its records stay uncommitted and will be processed again)",
            self.tp.topic,
            self.tp.partition,
            timeout,
        )
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _run(self) -> None:
        await self.gate.wait()
        queue, wake = self._queue, self._wake
        try:
            while not self._stopping:
                if self._restarted is not None and not queue and not self.offsets.outstanding:
                    self._restart()
                if not queue:
                    self._count_consumed()
                    await self._wait(self._next_deadline())
                    wake.clear()
                    await self._flush(due_only=True)
                    continue
                refused = await self._drain(queue)
                if refused is not None:
                    await self._undecodable(*refused)
                if self._batches:
                    await self._flush(due_only=True)
                if queue:  # let the fetch loop and the other partitions run (see _drain)
                    await asyncio.sleep(0)
            await self._flush(due_only=False)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not stop the partition silently
            log.exception("partition worker %s[%d] failed", self.tp.topic, self.tp.partition)
            raise
        finally:
            self._count_consumed()

    def _count_consumed(self) -> None:
        if self._consumed:
            for event_type, count in self._consumed.items():
                self._metrics.record(event_type, CONSUMED, count)
            self._consumed.clear()
            self._uncounted = 0
        self._metrics.publish()

    async def _wait(self, deadline: float | None) -> None:
        if deadline is None:
            await self._wake.wait()
            return
        timeout = deadline - time.monotonic()
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _next_deadline(self) -> float | None:
        deadlines = [
            batch.started + sub.max_wait_ms / 1000
            for sub, batch in self._batches.items()
            if batch.items
        ]
        return min(deadlines) if deadlines else None

    async def _drain(self, queue: deque[Any]) -> tuple[Any, DecodeError] | None:
        """Process queued records in one pass: records skipped by their ``ce_type`` header
        are released without decoding, decoded records go to their batch subscriptions and
        their event handlers are called, in offset order. Returns the first record that
        cannot be decoded (or whose envelope type is not the announced one), taken off the
        queue, with the error; else None, once the queue is empty or early when a batch is
        full or due (flushed next), or after :data:`YIELD_EVERY` records."""
        offsets, metrics, dispatcher = self.offsets, self._metrics, self._dispatcher
        consumed, batches, types, group = self._consumed, self._batches, self._types, self._group
        popleft, encodings = queue.popleft, ENCODINGS
        due = self._next_deadline()  # the first batch deadline: awaited handlers may pass it
        left = YIELD_EVERY  # handlers that never await would keep the loop to this partition
        while queue:
            raw = popleft()
            announced = content_type = None
            typed = typed_content = False
            headers = raw.headers
            for name, value in headers or ():  # both headers in one pass, the first of each
                if name == "ce_type":
                    if not typed:
                        announced, typed = value, True
                        if typed_content:
                            break
                elif name == "content-type" and not typed_content:
                    content_type, typed_content = value, True
                    if typed:
                        break
            if headers and headers[0][0] == REPLAYED_FOR and headers[0][1] != group:
                self._skip_replay(raw.offset, announced)  # replayed_for_another, inlined
                continue
            event: Event | None = None
            if announced is None:  # no ce_type header (another producer): typed by its envelope
                try:
                    event = decode_event(raw.value, encoding_for(content_type), validate=False)
                except DecodeError as exc:
                    return raw, exc
                announced = event.type.encode()
            known = types.get(announced)
            if known is None:
                known = self._lookup(raw.topic, announced)
                if known is None:  # not a type tag: a service that skips the type never saw it
                    return raw, untagged_error(announced)
            event_type, singles, subs, needs_record = known
            offset = raw.offset
            if not subs and not singles:
                metrics.record(event_type, SKIPPED)
                offsets.release(offset)
                continue
            if event is None:  # what decode_record does, with the headers already read
                try:
                    encoding = encodings.get(content_type) or encoding_for(content_type)
                    event = decode_event(raw.value, encoding, validate=False)
                except DecodeError as exc:
                    return raw, exc
                if event.type != event_type:
                    return raw, announced_type_error(event_type, event.type)
            consumed[event_type] = consumed.get(event_type, 0) + 1
            self._uncounted += 1
            if self._uncounted >= 256:
                self._count_consumed()
            # Built only for batch subscriptions and handlers that take it.
            record = self._record(raw, event) if needs_record else None
            full = False
            if subs:
                assert record is not None
                for sub in subs:
                    batch = batches.get(sub)
                    if batch is None:
                        batch = batches[sub] = _Batch()
                    items = batch.items
                    if not items:
                        batch.started = now = time.monotonic()
                        deadline = now + sub.max_wait_ms / 1000
                        if due is None or deadline < due:
                            due = deadline
                    items.append((record, raw))
                    if len(items) >= sub.max_records:
                        full = True
                held = len(subs) if singles else len(subs) - 1  # the worker's own hold is one
                if held:
                    offsets.hold(offset, held)
            if singles:
                one = singles[0]
                if len(singles) == 1 and one.timeout_s is None:  # Dispatcher.call, inlined
                    started = perf_counter()
                    try:
                        if one.takes_record:  # Subscription.call, inlined
                            await one.handler(event, record)
                        else:
                            await one.handler(event)
                    except Exception as exc:
                        failure = await dispatcher.failed(one, event, record, raw, exc, started)
                        if failure is not None:
                            await self._refused(raw, failure, event_type)
                    else:
                        metrics.handler_duration(one.name, perf_counter() - started)
                else:
                    await self._call_all(singles, event, record, raw)
                offsets.release(offset)
                if due is not None and time.monotonic() >= due:
                    return None  # a batch is due: flushed before the next record
            if full:
                return None
            left -= 1
            if not left:
                return None
        return None

    def _skip_replay(self, offset: int, announced: bytes | None) -> None:
        """Release a record ``agentstream dlq replay`` sent back for another consumer group
        (see :data:`~.deadletter.REPLAYED_FOR`): this group handled the original already."""
        event_type = announced.decode("utf-8", "replace") if announced is not None else None
        self._metrics.record(event_type, SKIPPED)
        self.offsets.release(offset)

    def _lookup(self, topic: str, announced: bytes) -> _Known | None:
        """What the hot path needs to know of a ``ce_type`` value on this partition's topic:
        the type, its event and batch subscriptions, and whether a :class:`Record` is needed;
        None for a value that is no type tag (``Tool.Called``, empty, a trailing space)."""
        event_type = announced.decode("utf-8", "replace")
        if not checked_type(event_type):
            return None
        singles, subs = self._table.for_type(topic, event_type)
        found = (event_type, singles, subs, bool(subs) or any(s.takes_record for s in singles))
        if len(self._types) < 1024:  # the subscriptions are fixed once the consumer started
            self._types[announced] = found
        return found

    @staticmethod
    def _record(raw: Any, event: Event) -> Record:
        headers = raw.headers
        return Record(
            event,
            raw.topic,
            raw.partition,
            raw.offset,
            raw.key,
            raw.timestamp,
            headers if type(headers) is tuple else tuple(headers),
            raw.value,
        )

    async def _call_all(
        self, singles: tuple[Subscription, ...], event: Event, record: Record | None, raw: Any
    ) -> None:
        """Run a record's event handlers concurrently; dead-letter what they refused."""
        call = self._dispatcher.call
        for failure in await asyncio.gather(*(call(s, event, record, raw) for s in singles)):
            if failure is not None:
                await self._refused(raw, failure, event.type)

    async def _refused(self, raw: Any, failure: Failure, event_type: str) -> None:
        refused = failure.for_offset(raw.offset)
        if refused is not None:
            self._metrics.record(event_type, FAILED)
            await self._dispatcher.dead_letter(raw, refused, event_type)

    async def _undecodable(self, raw: Any, error: DecodeError) -> None:
        """Dead-letter a record that cannot be decoded, at once (bad input is never retried);
        its offset is released once the dead letter is acknowledged."""
        announced = header(raw.headers, "ce_type")
        event_type = announced.decode("utf-8", "replace") if announced is not None else None
        self._metrics.record(event_type, FAILED)
        if error.where is None:  # decoded without a location on the hot path: named here
            error = error.at(RecordLocation(raw.topic, raw.partition, raw.offset))
        reason = f"{REASON_UNDECODABLE}: {type(error).__name__}"
        failure = Failure(DECODE_HANDLER, reason, error, 1)
        await self._dispatcher.dead_letter(raw, failure, event_type)
        self.offsets.release(raw.offset)

    async def _flush(self, *, due_only: bool) -> None:
        now = time.monotonic()
        for sub, batch in list(self._batches.items()):
            items = batch.items
            if items and (
                not due_only
                or len(items) >= sub.max_records
                or now >= batch.started + sub.max_wait_ms / 1000
            ):
                await self._flush_one(sub)

    async def _flush_one(self, sub: BatchSubscription) -> None:
        batch = self._batches[sub]
        items, batch.items = batch.items, []
        records = [record for record, _ in items]
        where = f"{records[0].location}..{records[-1].offset}"
        timeout = sub.timeout_s
        if timeout is None:
            failure = await self._dispatcher.attempt(sub.name, lambda: sub.handler(records), where)
        else:
            failure = await self._dispatcher.attempt(
                sub.name, lambda: bounded(sub.handler(records), timeout, sub.name, where), where
            )
        if failure is not None:
            unknown = failure.unknown_offsets(records) if failure.per_record else ()
            if unknown:
                log.warning(
                    "batch handler %s refused offsets %s, not in its batch %s: ignored",
                    sub.name,
                    sorted(unknown),
                    where,
                )
            for record, raw in items:
                refused = failure.for_offset(record.offset)
                if refused is not None:
                    self._metrics.record(record.event.type, FAILED)
                    await self._dispatcher.dead_letter(raw, refused, record.event.type)
        self.offsets.release_all([record.offset for record in records])
