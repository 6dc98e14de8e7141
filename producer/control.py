"""The pod side of the control channel: directives from the services, as local bus events.

The loops and budget services publish directives (``control.agent.paused`` ...) on
``<prefix>.control``, keyed by session. A :class:`ControlListener` attached to an
:class:`~agentstream.producer.bus.EventBus` reads that topic without a consumer group (every
partition assigned, starting at the end when it starts), keeps the directives addressed to
this pod -- ``agent_id`` equal to the bus's agent, or ``session_id`` one the bus emitted in
recently -- and re-emits them on the bus with :meth:`EventBus.emit_local`: handlers run, the
event is in the history, and it is never shipped back to Kafka.

Semantics: at-most-once per pod lifetime. Directives published while no listener runs are
not replayed when one starts (a paused session stays paused by whatever policy the service
applies next; a restarted pod starts unpaused). A record that does not decode is logged and
counted and skipped; a broker outage is retried without ending the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter

from agentstream.schemas import DecodeError, Event, EventType, RecordLocation, decode_record
from agentstream.schemas.admin import (
    UNREADABLE_ERRORS,
    fetch,
    start_client,
    stop_client,
    true_ends,
)
from agentstream.schemas.errors import ConfigurationError

if TYPE_CHECKING:
    from agentstream.schemas.settings import KafkaSettings

    from .bus import EventBus

__all__ = ["ControlListener"]

logger = logging.getLogger(__name__)

_KNOWN_TYPES = frozenset(t.value for t in EventType)


class ControlListener:
    """Consumes ``<prefix>.control`` and delivers this pod's directives to its bus.

    ``fetch_max_wait_ms`` bounds how long a fetch waits for new records (it is the latency
    floor on brokers that do not answer a long poll as soon as data arrives).
    ``registry``: where ``agentstream_control_directives_total{outcome}`` is registered
    (a private registry when ``None``).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        fetch_max_wait_ms: int = 100,
        retry_backoff_s: float = 1.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.topic = settings.routing().control
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.retry_backoff_s = retry_backoff_s
        self.registry = registry if registry is not None else CollectorRegistry()
        self._directives = Counter(
            "agentstream_control_directives_total",
            "Records read from the control topic, by outcome "
            "(delivered to the local bus, ignored: for another agent, malformed: not decodable)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("delivered", "ignored", "malformed"):
            self._directives.labels(outcome)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._expected: dict[TopicPartition, int] = {}  # per partition, the next offset to read
        self._bus: EventBus | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, bus: EventBus) -> None:
        """Assign every partition of the control topic at its current end; returns once the
        positions are known, so a directive published after this returns is received."""
        if self._task is not None:
            raise RuntimeError("expected a stopped ControlListener, this one is running")
        options = {
            **self.settings.consumer_options(),
            "group_id": None,
            "auto_offset_reset": "latest",
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
        }
        consumer = AIOKafkaConsumer(**options)
        await start_client(consumer, options)  # says what failed, and stops the client
        try:
            await consumer.topics()  # fetches metadata for every topic
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise ConfigurationError(
                    f"expected the control topic {self.topic!r} to exist on "
                    f"{self.settings.bootstrap_servers}, found no partitions "
                    "(create it with `agentstream topics create`)"
                )
            assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            # ListOffsets can stop short of the end (the embedded broker: within the last
            # batch): the directives after that point were published before this pod started.
            ends, _ = await true_ends(consumer, assigned, timeout_s=5.0)
            for tp, end in ends.items():
                consumer.seek(tp, end)
            self._expected = dict(ends)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._bus = bus
        self._task = asyncio.create_task(self._run(consumer, bus), name="agentstream-control")

    async def stop(self) -> None:
        task, consumer = self._task, self._consumer
        self._task = self._consumer = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if consumer is not None:
            await stop_client(consumer)  # without a broker too: the agent's close() never raises

    async def _run(self, consumer: AIOKafkaConsumer, bus: EventBus) -> None:
        while True:
            try:
                batches = await fetch(consumer, timeout_ms=1_000)
            except UNREADABLE_ERRORS:  # the same batch every time: the task ended on it, unseen
                if not await self._set_aside(consumer, bus):
                    await asyncio.sleep(self.retry_backoff_s)
                continue
            except KafkaError as exc:
                logger.warning(
                    "control listener: fetching %s failed, retrying in %ss: %r",
                    self.topic,
                    self.retry_backoff_s,
                    exc,
                )
                await asyncio.sleep(self.retry_backoff_s)
                continue
            await self._dispatch(bus, batches)
            self._restarted_logs(consumer)

    def _restarted_logs(self, consumer: AIOKafkaConsumer) -> None:
        """A partition whose end is below where the listener reads restarted under it (the
        topic was created again: an embedded broker restarted, keeping records in memory only;
        a topic deleted and made again). The broker may never say so (the embedded broker
        answers no OFFSET_OUT_OF_RANGE): the listener waited, deaf, until the new log grew
        past its old position. Its records were published since: read from its start."""
        for tp, expected in self._expected.items():
            high = consumer.highwater(tp)
            if high is None or high >= expected:
                continue
            logger.warning(
                "control listener: %s[%d] ends at offset %d, below the %d expected next (the "
                "topic was created again): reading it from its start",
                tp.topic,
                tp.partition,
                high,
                expected,
            )
            consumer.seek(tp, 0)
            self._expected[tp] = 0

    async def _dispatch(self, bus: EventBus, batches: dict[TopicPartition, list[Any]]) -> None:
        expected = self._expected
        for tp, records in batches.items():
            for record in records:
                expected[tp] = record.offset + 1
                where = RecordLocation(tp.topic, tp.partition, record.offset)
                await self._handle(bus, record.value, record.headers, where)

    async def _set_aside(self, consumer: AIOKafkaConsumer, bus: EventBus) -> bool:
        """After a fetch found a batch it cannot read (a bad CRC, a record the client cannot
        parse): fetch each partition alone, handle what comes, and pause those that fail on
        their own, with an error line. Whether one did."""
        found = False
        for tp, offset in self._expected.items():  # records the failed fetch took: again
            consumer.seek(tp, offset)
        for tp in sorted(consumer.assignment() - consumer.paused()):
            try:
                batches = await fetch(consumer, tp, timeout_ms=500)
            except UNREADABLE_ERRORS as exc:
                found = True
                consumer.pause(tp)
                logger.error(
                    "control listener: cannot read %s[%d] at offset %d (%r): that partition "
                    "is left, and directives on it do not reach this pod until it restarts",
                    tp.topic,
                    tp.partition,
                    await consumer.position(tp),
                    exc,
                )
                continue
            except KafkaError:  # the broker, not this partition's data: tried again later
                continue
            await self._dispatch(bus, batches)
        return found

    async def _handle(
        self,
        bus: EventBus,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]] | None,
        where: RecordLocation,
    ) -> None:
        try:
            event = decode_record(value, headers, where=where)
        except DecodeError as exc:
            self._directives.labels("malformed").inc()
            logger.warning("control listener: skipping a record that does not decode: %s", exc)
            return
        if not self.addressed_to(bus, event):
            self._directives.labels("ignored").inc()
            return
        self._directives.labels("delivered").inc()
        if event.type in _KNOWN_TYPES:  # as built in the pod: Corail handlers use .type.value
            event.type = EventType(event.type)
        await bus.emit_local(event)

    @staticmethod
    def addressed_to(bus: EventBus, event: Event) -> bool:
        """Whether a directive is for ``bus``: an agent it emitted for (its own, or one its
        scopes named: a pod serving several agents), or, without an agent, a session it
        emitted in."""
        if event.agent_id:
            return bus.has_agent(event.agent_id)
        return bool(event.session_id) and bus.has_session(event.session_id)
