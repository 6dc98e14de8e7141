"""``EventConsumer``: the in-pod bus's subscription model on a Kafka consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar, overload

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from agentstream.schemas import Event, EventType, encode_event, event_headers, record_key
from agentstream.schemas.admin import (
    DEAD_LETTER_HEADROOM,
    admin_client,
    fetch,
    missing_topics,
    start_client,
    stop_client,
)
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings
from agentstream.schemas.throttle import ThrottledLog

from .dispatch import Dispatcher
from .metrics import ConsumerMetrics
from .partition import PartitionWorker
from .settings import ServiceSettings
from .subscriptions import (
    BatchHandler,
    Handler,
    PartitionsCallback,
    SubscriptionTable,
    make_batch_subscription,
    make_subscription,
    topic_restriction,
)
from .unreadable import Batches, UnreadablePartitions, isolate, rewind
from .until import until_stopped

log = logging.getLogger("agentstream.consumers.runtime")

H = TypeVar("H", bound=Handler)
B = TypeVar("B", bound=BatchHandler)
C = TypeVar("C", bound=PartitionsCallback)

POLL_TIMEOUT_MS = 200
PAUSED_POLL_TIMEOUT_MS = 10
"""While backpressure holds partitions paused, the fetch loop polls this often, so they
resume as soon as the workers have drained below half of ``max_buffered_records`` (with
every partition paused, a poll waits its whole timeout)."""
FINAL_COMMIT_GRACE_S = 5.0
"""The commit at stop may take this long past the drain deadline (the runner's exit bound,
``EXIT_GRACE_SECONDS``, is 10 s past it)."""
TOPIC_WAIT_S = 1.0
"""How often a service that waits for its topics to be created asks again."""
STALL_SECONDS = 60.0


async def wait_for_topics(settings: KafkaSettings, topics: list[str], service: str) -> None:
    """Return once every topic exists. A consumer's or producer's metadata requests ask the
    brokers to create missing topics (aiokafka always does), and Apache Kafka does so by
    default, with its default partition count (1) and replication factor: a service that
    started before ``agentstream topics create`` (a topics Job and the services starting
    together) would leave the events topic with one partition for good. Asks without creating
    them every :data:`TOPIC_WAIT_S`, saying so at once and then once a minute; a signal
    cancels the wait."""
    waiting = ThrottledLog(log)
    async with admin_client(settings.admin_options()) as admin:
        while missing := await missing_topics(admin, topics):
            waiting(
                "topics",
                "service %s: waiting for topics %s (create them: `agentstream topics create`); "
                "it starts once they exist, as the brokers would otherwise create them with "
                "their own defaults",
                service,
                ", ".join(missing),
            )
            await asyncio.sleep(TOPIC_WAIT_S)
    waiting.recovered("topics", "service %s: the topics exist", service)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._partitions_revoked(frozenset(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._partitions_assigned(frozenset(assigned))


class EventConsumer:
    """Subscribe handlers to event patterns; run them on one consumer group per service.

    Per partition, records are handed over in offset order (so per session); partitions run
    concurrently; the handlers of one event run concurrently, each with its own retries. An
    offset is committed only when every handler finished with that record and with all
    records before it (periodically, on revoke and on stop). Failing handlers are retried with
    exponential backoff, then the record is copied to the DLQ with error headers before it
    counts as finished. Undecodable records go to the DLQ at once.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        service: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.routing = settings.routing()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.group_id = settings.group_for(service)
        self.metrics = ConsumerMetrics(self.registry, service)
        self.metrics.add_lag_source(self._lag)
        self._companions: list[EventConsumer] = []
        self._table = SubscriptionTable()
        self._assigned_callbacks: list[PartitionsCallback] = []
        self._revoked_callbacks: list[PartitionsCallback] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dispatcher: Dispatcher | None = None
        self._workers: dict[TopicPartition, PartitionWorker] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._listed_ends: dict[TopicPartition, int] = {}  # ListOffsets, where fetches say nothing
        self._past_end: set[TopicPartition] = set()  # reported by _report_past_end
        self._commit_lock = asyncio.Lock()
        self._fetch_failures = ThrottledLog(log)  # a failing fetch is retried every backoff
        self._unreadable = UnreadablePartitions(service)
        self._tasks: list[asyncio.Task[None]] = []  # the fetch and commit loops
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._ready = False
        self._assign_failed = False
        self._started = False
        self._stopping = False
        self._stopped = False
        self.committed_at_stop: bool | None = None
        """After :meth:`stop`: whether its final commit went through (or had nothing to do);
        False leaves the records handled since the last commit to the partitions' next owners."""
        self._last_poll = time.monotonic()

    # --- subscriptions and hooks ---------------------------------------------------------

    @overload
    def subscribe(
        self,
        pattern: str | EventType,
        handler: H,
        *,
        name: str | None = None,
        topics: Iterable[str] | None = None,
        timeout_ms: int | None = None,
    ) -> H: ...

    @overload
    def subscribe(
        self,
        pattern: str | EventType,
        handler: None = None,
        *,
        name: str | None = None,
        topics: Iterable[str] | None = None,
        timeout_ms: int | None = None,
    ) -> Callable[[H], H]: ...

    def subscribe(
        self,
        pattern: str | EventType,
        handler: H | None = None,
        *,
        name: str | None = None,
        topics: Iterable[str] | None = None,
        timeout_ms: int | None = None,
    ) -> H | Callable[[H], H]:
        """Call ``handler(event)`` or ``handler(event, record)`` for every matching event.

        ``pattern``: an exact type, an :class:`EventType`, a glob (``tool.*``) or ``*``.
        ``topics``: topic kinds (``"events"``, ``"tokens"``, ``"alerts"``, ``"control"``)
        narrowing the topics the pattern maps to; the consumer fetches the union over every
        subscription, and a handler only gets records of its own topics.
        ``timeout_ms``: a call running longer is cancelled and counts as a failed attempt
        (:class:`HandlerTimeoutError`: retried, then dead-lettered); none by default.
        Without ``handler`` this is a decorator.
        """
        restricted = topic_restriction(self.routing, pattern, topics)

        def add(h: H) -> H:
            self._check_not_started()
            self._table.add(make_subscription(pattern, h, name, restricted, timeout_ms))
            return h

        return add if handler is None else add(handler)

    @overload
    def subscribe_batch(
        self,
        pattern: str | EventType,
        handler: B,
        *,
        max_records: int = 500,
        max_wait_ms: int = 100,
        name: str | None = None,
        topics: Iterable[str] | None = None,
        timeout_ms: int | None = None,
    ) -> B: ...

    @overload
    def subscribe_batch(
        self,
        pattern: str | EventType,
        handler: None = None,
        *,
        max_records: int = 500,
        max_wait_ms: int = 100,
        name: str | None = None,
        topics: Iterable[str] | None = None,
        timeout_ms: int | None = None,
    ) -> Callable[[B], B]: ...

    def subscribe_batch(
        self,
        pattern: str | EventType,
        handler: B | None = None,
        *,
        max_records: int = 500,
        max_wait_ms: int = 100,
        name: str | None = None,
        topics: Iterable[str] | None = None,
        timeout_ms: int | None = None,
    ) -> B | Callable[[B], B]:
        """Call ``handler(records)`` with consecutive matching records of one partition.

        A batch is handed over when it holds ``max_records`` or its first record waited
        ``max_wait_ms``. All its records count as finished when the handler returns.
        ``topics`` and ``timeout_ms`` (one batch call) as for :meth:`subscribe`.
        """
        restricted = topic_restriction(self.routing, pattern, topics)

        def add(h: B) -> B:
            self._check_not_started()
            self._table.add(
                make_batch_subscription(
                    pattern, h, name, max_records, max_wait_ms, restricted, timeout_ms
                )
            )
            return h

        return add if handler is None else add(handler)

    def on_assigned(self, callback: C) -> C:
        """Await ``callback(partitions)`` after an assignment, before any of their records
        reach a handler (restore state here). Usable as a decorator. If it raises, the
        assignment's records are held back and :attr:`healthy` turns False."""
        self._assigned_callbacks.append(callback)
        return callback

    def on_revoked(self, callback: C) -> C:
        """Await ``callback(partitions)`` when partitions are taken away or at shutdown,
        after their in-flight work finished and their offsets were committed. With Kafka's
        eager rebalancing every rebalance revokes all partitions, then assigns anew."""
        self._revoked_callbacks.append(callback)
        return callback

    def _check_not_started(self) -> None:
        if self._started:
            raise ConfigurationError(
                "expected subscriptions before start(); the consumer is already running"
            )

    # --- output ----------------------------------------------------------------------------

    async def send(self, topic: str, event: Event, *, key: bytes | None = None) -> None:
        """Publish ``event`` to ``topic`` in the wire format; returns once acknowledged."""
        producer = self._require_producer()
        value = encode_event(
            event, self.settings.encoding, max_bytes=self.settings.max_request_size
        )
        await producer.send_and_wait(
            topic,
            value,
            key=key if key is not None else record_key(event),
            headers=event_headers(event, self.settings.encoding),
        )

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise ConfigurationError("expected a started consumer: call start() before send()")
        return self._producer

    # --- lifecycle -------------------------------------------------------------------------

    def add_companion(self, other: EventConsumer) -> None:
        """Count ``other`` (a second consumer group the service runs, e.g. on a topic of its
        own) in this consumer's :attr:`ready` and :attr:`healthy`, so ``/readyz`` and
        ``/healthz`` cover it. Give it this consumer's ``registry`` for ``/metrics``."""
        if other is self:
            raise ConfigurationError("expected another consumer as a companion, got itself")
        self._companions.append(other)

    @property
    def ready(self) -> bool:
        """Whether partitions were assigned (at least once), here and in every companion."""
        return self._ready and all(c.ready for c in self._companions)

    @property
    def healthy(self) -> bool:
        """Whether the fetch and commit loops run, the fetch loop polled recently, no
        partition worker died and the last ``on_assigned`` hooks succeeded (``/healthz``),
        here and in every companion."""
        if not self._started or self._stopped:
            return False
        if not all(c.healthy for c in self._companions):
            return False
        if any(task.done() for task in self._tasks):
            return False
        if self._assign_failed or any(worker.failed for worker in self._workers.values()):
            return False
        return time.monotonic() - self._last_poll < STALL_SECONDS

    def topics(self) -> list[str]:
        """The topics the subscriptions need (the union over every subscription)."""
        return sorted(self._table.topics(self.routing))

    def partition_count(self, topic: str) -> int | None:
        """How many partitions ``topic`` has, as the client's metadata says (None before the
        consumer started or when it knows nothing of the topic). No request is sent."""
        partitions = self._consumer.partitions_for_topic(topic) if self._consumer else None
        return len(partitions) if partitions else None

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Connect, join the group and start processing in background tasks. A ``stop`` set
        while the topics are awaited ends the start there (nothing connected, nothing to
        stop)."""
        if self._started:
            raise ConfigurationError("expected a consumer that was not started yet")
        if not self._table.patterns():
            raise ConfigurationError(
                f"expected at least one subscription before start() (service {self.service!r})"
            )
        self._started = True
        settings = self.settings
        try:
            # before a client that would create them
            waiting = wait_for_topics(settings, self.topics(), self.service)
            if stop is None:
                await waiting
            elif not await until_stopped(waiting, stop):
                self._stopped = True
                log.info("service %s stopped while waiting for its topics", self.service)
                return
        except BaseException:
            self._stopped = True
            raise
        # Dead letters carry error headers on top of the record: see DEAD_LETTER_HEADROOM.
        largest = settings.max_request_size + DEAD_LETTER_HEADROOM
        producer = AIOKafkaProducer(**{**settings.producer_options(), "max_request_size": largest})
        consumer = AIOKafkaConsumer(group_id=self.group_id, **settings.consumer_options())
        try:  # start_client says what failed, and stops the client that did
            await start_client(producer, settings.client_options())
            self._producer = producer
            await start_client(consumer, settings.client_options())
            self._consumer = consumer
        except BaseException:
            await producer.stop()
            self._stopped = True
            raise
        self._dispatcher = Dispatcher(
            settings=settings,
            service=self.service,
            group_id=self.group_id,
            dlq_topic=self.routing.dlq,
            metrics=self.metrics,
            producer=self._require_producer,
        )
        topics = self.topics()
        consumer.subscribe(topics=topics, listener=_Listener(self))
        log.info("service %s (group %s) subscribed to %s", self.service, self.group_id, topics)
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"agentstream-fetch-{self.service}"),
            asyncio.create_task(self._commit_loop(), name=f"agentstream-commit-{self.service}"),
        ]

    async def stop(self) -> None:
        """Stop fetching, finish in-flight work (bounded by ``drain_timeout_ms``), commit,
        call ``on_revoked``, leave the group."""
        if not self._started or self._stopped:
            return
        self._stopping = True
        self._stopped = True
        deadline = time.monotonic() + self.settings.drain_timeout_ms / 1000
        tasks = [*self._tasks, *self._side_tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        held = frozenset(self._workers)
        try:
            await self._drain(held, deadline - time.monotonic())
            self.committed_at_stop = await self._final_commit(held, deadline)
            await self._call(self._revoked_callbacks, held, "on_revoked")
        finally:
            self._workers.clear()
            self.metrics.assigned_partitions.set(0)
            if self._consumer is not None:
                await stop_client(self._consumer)
            if self._producer is not None:
                await stop_client(self._producer)
            log.info("service %s stopped", self.service)

    async def run(self, stop: asyncio.Event) -> None:
        """Start, process until ``stop`` is set, then stop. If the fetch or commit loop dies
        (a bug, never bad input), stops too and raises its error."""
        await self.start(stop)
        if self._stopped:  # stopped while waiting for the topics
            return
        loops = list(self._tasks)
        try:
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, *loops], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        finally:
            await self.stop()
        for task in loops:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error

    # --- fetching --------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        limit = max(1, min(self.settings.max_buffered_records // 2, 2_000))
        timeout = POLL_TIMEOUT_MS
        while not self._stopping:
            self._last_poll = time.monotonic()
            if self._unreadable:
                assigned = consumer.assignment()
                again = [tp for tp in self._unreadable.due() if tp in assigned]
                if again:
                    consumer.resume(*again)
            try:
                batches = await fetch(consumer, timeout_ms=timeout, max_records=limit)
            except KafkaError as exc:
                await self._fetch_failed(consumer, exc, limit)
                continue
            if not self._unreadable:  # else a partition still fails: not "again" yet
                self._fetch_failures.recovered("fetch", "service %s: fetching again", self.service)
            self._feed(batches)
            paused = self._backpressure(consumer)
            timeout = PAUSED_POLL_TIMEOUT_MS if paused else POLL_TIMEOUT_MS

    def _feed(self, batches: Batches) -> None:
        for tp, records in batches.items():
            worker = self._workers.get(tp)
            if worker is None:  # records before the assignment callback: gate stays shut
                worker = self._workers[tp] = self._new_worker(tp)
            worker.feed(records)

    async def _fetch_failed(self, consumer: AIOKafkaConsumer, exc: KafkaError, limit: int) -> None:
        """A fetch raised: read again what it took from other partitions, and set aside the
        partitions that fail alone (see :mod:`.unreadable`); else wait and retry."""
        self._fetch_failures(
            "fetch", "service %s: fetch failed (%r); finding the partition", self.service, exc
        )
        expected = {tp: worker.next_offset for tp, worker in self._workers.items()}
        await rewind(consumer, expected, self.service, reset=self.settings.auto_offset_reset)
        failed = await isolate(consumer, exc, limit, self._feed)
        for tp, error in failed.items():
            try:
                position: int | None = await consumer.position(tp)
            except Exception:  # revoked meanwhile
                continue
            consumer.pause(tp)
            self._unreadable.hold(tp, position, error)
        if not failed:  # not one partition's data: the broker or the connection, retry
            await asyncio.sleep(self.settings.retry_backoff_ms / 1000)

    def _new_worker(self, tp: TopicPartition) -> PartitionWorker:
        assert self._dispatcher is not None
        return PartitionWorker(tp, self._table, self._dispatcher)

    def _backpressure(self, consumer: AIOKafkaConsumer) -> int:
        """Pause the partitions holding buffered records once the process holds
        ``max_buffered_records``; resume them below half. Memory stays bounded by the limit
        plus one poll, and idle partitions keep fetching. Returns how many are paused."""
        workers = self._workers
        buffered = sum(w.buffered for w in workers.values())
        limit = self.settings.max_buffered_records
        assigned = consumer.assignment()
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        if buffered >= limit:
            for tp, worker in workers.items():
                if not worker.paused and worker.buffered and tp in assigned:
                    worker.paused = True
                    pause.append(tp)
        elif buffered <= limit // 2:
            for tp, worker in workers.items():
                if worker.paused:
                    worker.paused = False
                    if tp in assigned and tp not in self._unreadable:
                        resume.append(tp)
        if pause:
            consumer.pause(*pause)
            log.debug("backpressure: %d records buffered, paused %s", buffered, _names(pause))
        if resume:
            consumer.resume(*resume)
            log.debug("backpressure: %d records buffered, resumed %s", buffered, _names(resume))
        paused = sum(w.paused for w in workers.values())
        self.metrics.buffered_records.set(buffered)
        self.metrics.paused_partitions.set(paused)
        return paused

    # --- offsets ---------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self._commit()
            await self._list_ends()
            self._report_past_end()

    async def _list_ends(self) -> None:
        """ListOffsets(latest) of the partitions whose fetch responses tell nothing current:
        none came yet, or the partition is paused (its last high watermark is stale). The lag
        gauge falls back to it there; elsewhere the fetch responses' high watermark is right
        (the embedded broker's ListOffsets can answer the last batch's base offset + 1)."""
        consumer = self._consumer
        if consumer is None:
            return
        blind = [
            tp
            for tp, worker in list(self._workers.items())
            if worker.paused or tp in self._unreadable or consumer.highwater(tp) is None
        ]
        if not blind:
            return
        try:
            ends = await consumer.end_offsets(blind)
        except Exception as exc:  # KafkaError, or partitions revoked meanwhile
            log.debug("end offsets for the lag gauge unavailable: %r", exc)
            return
        for tp, end in ends.items():
            if tp in self._workers and end is not None:
                self._listed_ends[tp] = int(end)

    @staticmethod
    async def _past_skipped(
        consumer: AIOKafkaConsumer, tp: TopicPartition, committable: int
    ) -> int:
        """For a partition with records handled and none in progress: the consumer's position
        where it is past ``committable``. The client skips transaction markers and aborted
        records without handing them out, so the last record handled is not the end (a
        group's commit stayed one short after every transaction, its lag 1 until the next
        record); Kafka's own consumers commit the position."""
        try:
            position: int = await asyncio.wait_for(consumer.position(tp), 1.0)
        except Exception:  # revoked meanwhile, or no position yet
            return committable
        return max(position, committable)

    def _report_past_end(self) -> None:
        """Say once per partition held when nothing came from it and the group's committed
        offset is past the end of its log: the topic was created again or truncated. Apache
        Kafka answers such a fetch with OFFSET_OUT_OF_RANGE and the client resets the position
        (``auto_offset_reset``); a broker that does not (the embedded one) leaves the group
        waiting there, its lag 0, without a word."""
        consumer = self._consumer
        if consumer is None:
            return
        for tp, worker in list(self._workers.items()):
            committed = self._committed.get(tp)
            if worker.offsets.first is not None or committed is None or tp in self._past_end:
                continue
            end = consumer.highwater(tp)
            if end is not None and committed > end:
                self._past_end.add(tp)
                log.warning(
                    "service %s: %s[%d]: the group's committed offset %d is past the end of "
                    "the log (%d): the topic was created again or truncated. Kafka's clients "
                    "reset the position (auto_offset_reset); where the broker does not answer "
                    "OFFSET_OUT_OF_RANGE, nothing is read until the group's offsets are reset "
                    "(kafka-consumer-groups --reset-offsets)",
                    self.service,
                    tp.topic,
                    tp.partition,
                    committed,
                    end,
                )

    async def _commit(self, only: frozenset[TopicPartition] | None = None) -> bool:
        """Commit the finished prefix of each partition that advanced; False if refused."""
        consumer = self._consumer
        if consumer is None:
            return False
        async with self._commit_lock:
            offsets: dict[TopicPartition, int] = {}
            for tp, worker in self._workers.items():
                if only is not None and tp not in only:
                    continue
                committable = worker.offsets.committable()
                if committable is not None and not worker.buffered and tp not in self._unreadable:
                    committable = await self._past_skipped(consumer, tp, committable)
                # != rather than >: a log that restarted (see PartitionWorker.feed) and a
                # position reset below the group's offset commit where the worker is
                if committable is not None and committable != self._committed.get(tp):
                    offsets[tp] = committable
            if not offsets:
                return True
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:  # CommitFailedError, IllegalStateError, broker errors
                self.metrics.commit_failures.inc()
                log.warning(
                    "offset commit of %s refused (%r); those records will be processed again "
                    "by the partition's next owner (at-least-once)",
                    {f"{tp.topic}[{tp.partition}]": o for tp, o in offsets.items()},
                    exc,
                )
                return False
            self._committed.update(offsets)
            return True

    async def _final_commit(self, held: frozenset[TopicPartition], deadline: float) -> bool:
        """The commit at stop, bounded: without a broker aiokafka waits for a group
        coordinator forever. It gets what is left of the drain deadline plus
        :data:`FINAL_COMMIT_GRACE_S`, which ends before the runner's exit bound."""
        bound = max(0.0, deadline - time.monotonic()) + FINAL_COMMIT_GRACE_S
        try:
            return await asyncio.wait_for(self._commit(held), bound)
        except TimeoutError:
            log.warning(
                "service %s: the final offset commit did not finish within %.1f s (no broker "
                "answering?); the records handled since the last commit will be processed "
                "again by the partitions' next owners (at-least-once)",
                self.service,
                bound,
            )
            return False

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """What this process committed last, per partition it holds."""
        return {tp: o for tp, o in self._committed.items() if tp in self._workers}

    def _lag(self) -> Iterator[tuple[str, int, int]]:
        """``(topic, partition, high watermark - committed)`` for each partition held. Before
        the first commit the group's position is where this process started reading.

        The high watermark is the last fetch response's (``highwater``); where none came yet
        or the partition is paused, ListOffsets(latest) read by the commit loop, whichever is
        higher (both are at most the true high watermark)."""
        consumer = self._consumer
        if consumer is None or self._stopped:
            return
        for tp, worker in list(self._workers.items()):
            committed = self._committed.get(tp, worker.offsets.first)
            if committed is None:  # nothing read yet: an unreadable partition stands still
                committed = self._unreadable.position(tp)
            try:
                fetched = consumer.highwater(tp)
            except Exception:  # no longer assigned
                continue
            listed = self._listed_ends.get(tp)
            known = [h for h in (fetched, listed) if h is not None]
            if committed is None or not known:
                continue
            yield tp.topic, tp.partition, max(0, max(known) - committed)

    # --- rebalances ------------------------------------------------------------------------

    async def _drain(self, tps: frozenset[TopicPartition], timeout: float) -> None:
        workers = [self._workers[tp] for tp in tps if tp in self._workers]
        if workers:
            await asyncio.gather(*(w.stop(timeout) for w in workers))

    def _revoke_timeout(self) -> float:
        """Bound on draining at a revoke: ``drain_timeout_ms``, but at most half the
        rebalance timeout, so this member is not thrown out of the group for being slow."""
        settings = self.settings
        rebalance_ms = settings.rebalance_timeout_ms or settings.session_timeout_ms
        return min(settings.drain_timeout_ms, rebalance_ms / 2) / 1000

    async def _partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        if self._stopping or not revoked:
            return
        log.info("service %s: partitions revoked: %s", self.service, _names(revoked))
        await self._drain(revoked, self._revoke_timeout())
        await self._commit(revoked)
        for tp in revoked:
            self._workers.pop(tp, None)
            self._committed.pop(tp, None)
            self._listed_ends.pop(tp, None)
            self._past_end.discard(tp)
        self._unreadable.forget(revoked)
        self.metrics.assigned_partitions.set(len(self._workers))
        await self._call(self._revoked_callbacks, revoked, "on_revoked")

    async def _partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        if self._stopping:
            return
        log.info("service %s: partitions assigned: %s", self.service, _names(assigned))
        self.metrics.rebalances.inc()
        self.metrics.assigned_partitions.set(len(assigned))
        workers = []
        for tp in assigned:
            worker = self._workers.get(tp)
            if worker is None or worker.done:
                worker = self._workers[tp] = self._new_worker(tp)
            workers.append(worker)
        if not await self._call(self._assigned_callbacks, assigned, "on_assigned"):
            # Handling records on state that was not restored would be wrong: hold them back
            # (fetching pauses once the buffer fills) and report unhealthy, so the process is
            # restarted; a later assignment whose hooks succeed resumes.
            self._assign_failed = True
            log.error(
                "service %s: an on_assigned callback failed; records of %s are held back and "
                "/healthz reports unhealthy",
                self.service,
                _names(assigned),
            )
            return
        self._assign_failed = False
        for worker in workers:
            worker.gate.set()
        self._ready = True
        if assigned:
            task = asyncio.create_task(self._load_committed(assigned))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    async def _load_committed(self, tps: frozenset[TopicPartition]) -> None:
        """Learn the group's committed offsets of new partitions (for the lag gauge)."""
        consumer = self._consumer
        assert consumer is not None
        for tp in tps:
            try:
                committed = await consumer.committed(tp)
            except Exception:
                return
            if committed is not None and tp in self._workers:
                self._committed.setdefault(tp, committed)

    async def _call(
        self, callbacks: list[PartitionsCallback], tps: frozenset[TopicPartition], what: str
    ) -> bool:
        """Await every callback; whether all of them returned."""
        ok = True
        for callback in callbacks:
            try:
                await callback(tps)
            except Exception:
                ok = False
                log.exception("%s callback %r failed for %s", what, callback, _names(tps))
        return ok


def _names(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "none"
