"""One partition's worker: records in offset order, handlers of a record concurrently."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from aiokafka.structs import TopicPartition

from agentstream.schemas import DecodeError, decode_record, header
from agentstream.schemas.codec import Encoding, decode_event, encoding_of

from .deadletter import DECODE_HANDLER, REASON_UNDECODABLE, Failure
from .dispatch import Dispatcher, bounded
from .metrics import CONSUMED, FAILED, SKIPPED
from .offsets import PartitionOffsets
from .record import Record
from .subscriptions import BatchSubscription, Subscription, SubscriptionTable

log = logging.getLogger("agentstream.consumers.runtime")


_ENCODINGS: dict[bytes | None, Encoding] = {}
"""``content-type`` header values seen, and the encoding each names."""


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
        # ce_type header value -> (type, event handlers, batch handlers) of this partition's topic
        self._types: dict[
            bytes, tuple[str, tuple[Subscription, ...], tuple[BatchSubscription, ...]]
        ] = {}
        self._consumed: dict[str, int] = {}  # counted here, added to the metric per chunk
        self._uncounted = 0
        self._task = asyncio.create_task(
            self._run(), name=f"agentstream-partition-{tp.topic}-{tp.partition}"
        )

    def feed(self, records: Iterable[Any]) -> None:
        """Queue fetched records (aiokafka ``ConsumerRecord``s, in offset order)."""
        if self._stopping:
            return
        new, seen = self.offsets.received_all(records)
        self._queue.extend(new)
        for raw in seen:  # never expected from aiokafka; a re-delivery must not be processed twice
            log.warning("%s[%d]@%d fetched again, ignored", raw.topic, raw.partition, raw.offset)
        self._wake.set()

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
                if not queue:
                    self._count_consumed()
                    await self._wait(self._next_deadline())
                    wake.clear()
                    await self._flush(due_only=True)
                    continue
                raw = self._drain(queue)
                if raw is not None:
                    await self._process(raw)
                if self._batches:
                    await self._flush(due_only=True)
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

    def _drain(self, queue: deque[Any]) -> Any:
        """Process queued records that need no await, in one pass: records skipped by their
        ``ce_type`` header and records that go to batch subscriptions only. Returns the
        first record that needs more (an event handler, a dead letter, an undeclared type),
        taken off the queue, or None; stops early when a batch is full (flushed next)."""
        offsets, metrics, table = self.offsets, self._metrics, self._table
        consumed, batches = self._consumed, self._batches
        for_type, popleft, encodings = table.for_type, queue.popleft, _ENCODINGS
        types = self._types
        while queue:
            raw = popleft()
            announced = content_type = None
            typed = typed_content = False
            headers = raw.headers
            for name, value in headers or ():  # both headers in one pass, the first of each
                if name == "ce_type":
                    if not typed:
                        announced, typed = value, True
                elif name == "content-type" and not typed_content:
                    content_type, typed_content = value, True
            if announced is None:  # no ce_type: looked up by the decoded type
                return raw
            topic = raw.topic
            known = types.get(announced)
            if known is None:
                event_type = announced.decode("utf-8", "replace")
                known = (event_type, *for_type(topic, event_type))
                if len(types) < 1024:  # the subscriptions are fixed once the consumer started
                    types[announced] = known
            event_type, singles, subs = known
            if singles:
                return raw
            offset = raw.offset
            if not subs:
                metrics.record(event_type, SKIPPED)
                offsets.release(offset)
                continue
            # What decode_record does, with the headers already read: an undecodable record
            # or an envelope whose type is not the announced one goes to the awaiting path
            # (decode_record again there, which raises and dead-letters it).
            encoding = encodings.get(content_type)
            try:
                if encoding is None:
                    encoding = encoding_of(content_type)
                    if len(encodings) < 64:
                        encodings[content_type] = encoding
                event = decode_event(raw.value, encoding, validate=False)
            except DecodeError:
                return raw
            if event.type != event_type:
                return raw
            consumed[event_type] = consumed.get(event_type, 0) + 1
            record = Record(
                event,
                topic,
                raw.partition,
                offset,
                raw.key,
                raw.timestamp,
                headers if type(headers) is tuple else tuple(headers),
                raw.value,
            )
            full = False
            for sub in subs:
                batch = batches.get(sub)
                if batch is None:
                    batch = batches[sub] = _Batch()
                items = batch.items
                if not items:
                    batch.started = time.monotonic()
                items.append((record, raw))
                if len(items) >= sub.max_records:
                    full = True
            if len(subs) > 1:
                offsets.hold(offset, len(subs) - 1)
            self._uncounted += 1
            if self._uncounted >= 256:
                self._count_consumed()
            if full:
                return None
        return None

    async def _process(self, raw: Any) -> None:
        offsets, metrics, offset = self.offsets, self._metrics, raw.offset
        announced = header(raw.headers, "ce_type")
        event_type = announced.decode("utf-8", "replace") if announced is not None else None
        if event_type is not None and not self._table.wants(raw.topic, event_type):
            metrics.record(event_type, SKIPPED)
            offsets.release(offset)
            return
        try:
            # The envelope only: payloads validate lazily on ``event.payload`` (a handler
            # that reads an invalid one raises PayloadValidationError, dead-lettered at once).
            event = decode_record(raw.value, raw.headers, validate=False)
        except DecodeError as exc:  # the DLQ headers say where it came from
            metrics.record(event_type, FAILED)
            reason = f"{REASON_UNDECODABLE}: {type(exc).__name__}"
            await self._dispatcher.dead_letter(
                raw, Failure(DECODE_HANDLER, reason, exc, 1), event_type
            )
            offsets.release(offset)
            return
        singles, batches = self._table.for_type(raw.topic, event.type)
        if not singles and not batches:
            metrics.record(event.type, SKIPPED)
            offsets.release(offset)
            return
        consumed = self._consumed
        consumed[event.type] = consumed.get(event.type, 0) + 1
        self._uncounted += 1
        if self._uncounted >= 256:
            self._count_consumed()
        headers = raw.headers
        record = Record(
            event,
            raw.topic,
            raw.partition,
            offset,
            raw.key,
            raw.timestamp,
            headers if type(headers) is tuple else tuple(headers),
            raw.value,
        )
        for sub in batches:
            batch = self._batches.get(sub)
            if batch is None:
                batch = self._batches[sub] = _Batch()
            if not batch.items:
                batch.started = time.monotonic()
            batch.items.append((record, raw))
            offsets.hold(offset)
        if singles:
            dispatcher, text = self._dispatcher, _Where(raw)
            failures: list[Failure | None]
            if len(singles) == 1:
                failures = [await dispatcher.call(singles[0], event, record, text)]
            else:
                failures = await asyncio.gather(
                    *(dispatcher.call(s, event, record, text) for s in singles)
                )
            for failure in failures:
                refused = failure.for_offset(offset) if failure is not None else None
                if refused is not None:
                    metrics.record(event.type, FAILED)
                    await dispatcher.dead_letter(raw, refused, event.type)
        offsets.release(offset)
        for sub in batches:
            if len(self._batches[sub].items) >= sub.max_records:
                await self._flush_one(sub)

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


class _Where:
    """Where a record came from, formatted only if a message needs it."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return f"{self.raw.topic}[{self.raw.partition}]@{self.raw.offset}"
