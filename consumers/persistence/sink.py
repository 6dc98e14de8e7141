"""The persistence handler: each batch of records becomes one store transaction.

Each event is stored as its record's original envelope (JSON as it came; MessagePack written
as JSON), so fields a newer producer added are kept (``timeline(session, raw=True)``).

Exactly-once effect on at-least-once delivery: the insert is idempotent by ``event_id`` and
the transaction commits before the handler returns, so before the runtime may commit the
records' offsets. A crash between the two redelivers records that are already stored; they
are skipped (and counted as duplicates).

A store outage is not a bad record: the handler keeps retrying the same batch with capped
exponential backoff, for as long as it takes, and never lets the error reach the runtime
(which would dead-letter the records). Meanwhile the partition's later records wait and the
runtime's backpressure pauses fetching; no offset moves past an unwritten event. A write that
took longer than the store allows (PostgreSQL's ``statement_timeout``) would take as long
again: the batch is written in halves, and later batches in parts of that size, doubled after
each part that passes.

An event the database refuses (not an outage: on PostgreSQL, an id too long for its index)
must not take its batch down with it: the batch is bisected, every accepted event is stored,
then the handler raises :class:`BatchDeadLetter` naming the refused records: the runtime
copies only those to the dead-letter topic (with the store's error as the reason) and the
batch commits. Nothing is lost, nothing stored is dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agentstream.consumers.runtime import BatchDeadLetter, Record
from agentstream.consumers.runtime.retry import backoff_seconds
from agentstream.schemas import Event, RecordLocation
from agentstream.schemas.throttle import ThrottledLog

from .rows import original_json
from .store import Store, StoreError, StoreTimeoutError, StoreUnavailableError

log = logging.getLogger(__name__)

_LIMIT_CAP = 1 << 16
"""Past this many events per write, writes are whole batches again."""


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stored = Counter(
            "agentstream_persistence_events_stored_total",
            "Events written to the store (new rows).",
            registry=registry,
        )
        self.duplicates = Counter(
            "agentstream_persistence_duplicate_events_total",
            "Events received again (redelivery, replay) and skipped: already stored.",
            registry=registry,
        )
        self.write_seconds = Histogram(
            "agentstream_persistence_write_seconds",
            "Time to write and commit one batch (successful attempts).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.batch_events = Histogram(
            "agentstream_persistence_batch_events",
            "Events per written batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=registry,
        )
        self.unavailable = Counter(
            "agentstream_persistence_store_unavailable_total",
            "Write attempts that failed because the store could not be reached (retried).",
            registry=registry,
        )
        self.up = Gauge(
            "agentstream_persistence_store_up",
            "1 while the last store operation succeeded, 0 during an outage.",
            registry=registry,
        )


class EventSink:
    """``async def __call__(records)``: the batch handler the service subscribes with."""

    def __init__(
        self,
        store: Store,
        *,
        metrics: SinkMetrics,
        retry_backoff_ms: int = 200,
        retry_max_backoff_ms: int = 5_000,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._backoff = (retry_backoff_ms, retry_max_backoff_ms)
        # Every partition retries on its own: one line a minute for them all, with a count.
        self._outage = ThrottledLog(log)
        self.limit: int | None = None
        """Events per write while writes of more took longer than the store allows (None: a
        batch is one write). Halved on each such timeout, doubled after each write of that
        many that passes."""
        metrics.up.set(1)

    async def __call__(self, records: list[Record]) -> None:
        if not records:
            return
        events = [r.event for r in records]
        locations = [r.location for r in records]
        documents = [original_json(r.event, r.value, r.encoding) for r in records]
        try:
            await self._write(events, locations, documents)
        except StoreError:
            refused = await self._refused(events, locations, documents)
            if not refused:
                return  # accepted on the second try
            for _, location, error in refused[:5]:
                log.error("store %s refused the event at %s: %s", self.store.url, location, error)
            raise BatchDeadLetter(
                {
                    location.offset: f"store refused the event: {error}"
                    for _, location, error in refused
                }
            ) from None

    async def _write(
        self, events: list[Event], locations: list[RecordLocation], documents: list[str]
    ) -> None:
        """Write and commit, retrying for as long as the store is unavailable; in parts of at
        most :attr:`limit` events while writes of more took longer than the store allows."""
        limit = self.limit
        if limit is not None and len(events) > limit:
            for start in range(0, len(events), limit):
                end = start + limit
                await self._write(events[start:end], locations[start:end], documents[start:end])
            return
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                inserted = await self.store.write_batch(events, locations, documents)
            except StoreTimeoutError as exc:
                if len(events) == 1:  # nothing smaller to try: wait, as for an outage
                    attempt += 1
                    await self._unavailable(events, locations, attempt, exc)
                    continue
                self.limit = len(events) // 2
                log.warning(
                    "store %s: writing %d events took longer than it allows (%s); writing at "
                    "most %d at a time",
                    self.store.url,
                    len(events),
                    exc,
                    self.limit,
                )
                await self._write(events, locations, documents)
                return
            except StoreUnavailableError as exc:
                attempt += 1
                await self._unavailable(events, locations, attempt, exc)
                continue
            break
        if attempt:
            self._outage.recovered(
                "unavailable", "store %s is back after %d failed attempts", self.store.url, attempt
            )
        if limit is not None and len(events) == limit:  # it takes this many again: try more
            self.limit = None if limit >= _LIMIT_CAP else limit * 2
        self.metrics.up.set(1)
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_events.observe(len(events))
        self.metrics.stored.inc(inserted)
        self.metrics.duplicates.inc(len(events) - inserted)

    async def _unavailable(
        self, events: list[Event], locations: list[RecordLocation], attempt: int, exc: Exception
    ) -> None:
        self.metrics.unavailable.inc()
        self.metrics.up.set(0)
        delay = backoff_seconds(attempt, *self._backoff)
        self._outage(
            "unavailable",
            "store %s unavailable writing %d events from %s (attempt %d); retrying in %.2f s: %s",
            self.store.url,
            len(events),
            locations[0],
            attempt,
            delay,
            exc,
        )
        await asyncio.sleep(delay)

    async def _refused(
        self, events: list[Event], locations: list[RecordLocation], documents: list[str]
    ) -> list[tuple[Event, RecordLocation, StoreError]]:
        """Bisect a batch the store refused: store every event it accepts, return the others
        with the store's error (the runtime dead-letters only those)."""
        try:
            await self._write(events, locations, documents)
            return []
        except StoreError as exc:
            if len(events) == 1:
                return [(events[0], locations[0], exc)]
        mid = len(events) // 2
        first = await self._refused(events[:mid], locations[:mid], documents[:mid])
        return first + await self._refused(events[mid:], locations[mid:], documents[mid:])
