"""The budget service's own topics and its changelog store.

``<prefix>.budget-changelog`` (``cleanup.policy=compact``)
    One record per scope, key = the scope (``session:...``, ``agent:...:<day>``,
    ``user:...:<day>``), value = its :class:`~.accounting.ScopeState` as JSON, a tombstone
    when the scope is evicted. It has as many partitions as the events topic: the session
    scopes of events partition *p* live in changelog partition *p*, the day scopes of
    repartition partition *r* in changelog partition *r* (restores filter by scope kind).
``<prefix>.budget-repartition``
    Usage deltas keyed by day scope, so every agent's and user's day is summed on one
    partition, whatever partitions its sessions are on (Kafka Streams' repartition topic).

Reads here are group-less (``assign`` + seek), never committing anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from agentstream.schemas import Event, encode_event, event_headers, header, record_key
from agentstream.schemas.admin import DAY_MS, ensure_topics
from agentstream.schemas.codec import Headers
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings

from .accounting import ScopeState

log = logging.getLogger("agentstream.consumers.budget")

MAX_IDLE_FETCHES = 20
"""Empty fetches (of up to 0.5 s) in a row before a read gives up short of the end offset."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ScopeState)


def changelog_topic(prefix: str) -> str:
    return f"{prefix}.budget-changelog"


def repartition_topic(prefix: str) -> str:
    return f"{prefix}.budget-repartition"


def encode_state(state: ScopeState) -> bytes:
    return _encoder.encode(state)


def decode_state(value: bytes) -> ScopeState:
    return _decoder.decode(value)


async def partition_count(settings: KafkaSettings, topic: str) -> int | None:
    """How many partitions ``topic`` has, or None when it does not exist."""
    admin = AIOKafkaAdminClient(**settings.admin_options())
    await admin.start()
    try:
        for entry in await admin.describe_topics([topic]):
            if entry["topic"] == topic and entry["error_code"] == 0 and entry["partitions"]:
                return len(entry["partitions"])
        return None
    finally:
        await admin.close()


async def ensure_budget_topics(settings: KafkaSettings, *, replication_factor: int = 1) -> int:
    """Create the changelog and repartition topics with the events topic's partition count.

    Returns that count. Raises :class:`ConfigurationError` when the events topic is missing
    or an existing budget topic has another partition count (state would land elsewhere).
    """
    routing = settings.routing()
    partitions = await partition_count(settings, routing.events)
    if partitions is None:
        raise ConfigurationError(
            f"expected the events topic {routing.events} to exist (agentstream topics create), "
            "it does not"
        )
    changelog, repartition = changelog_topic(routing.prefix), repartition_topic(routing.prefix)
    await ensure_topics(
        settings.admin_options(),
        routing,
        extra=[
            NewTopic(
                changelog,
                partitions,
                replication_factor,
                topic_configs={"cleanup.policy": "compact"},
            ),
            NewTopic(
                repartition,
                partitions,
                replication_factor,
                topic_configs={"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
            ),
        ],
    )
    for topic in (changelog, repartition):
        found = await partition_count(settings, topic)
        if found != partitions:
            raise ConfigurationError(
                f"expected {topic} to have {partitions} partitions like {routing.events}, "
                f"it has {found}; state partitions must match input partitions"
            )
    return partitions


async def read_partitions(
    settings: KafkaSettings,
    topic: str,
    partitions: Collection[int] | None = None,
    *,
    start: Mapping[int, int] | None = None,
) -> AsyncIterator[Any]:
    """Every record of ``partitions`` of ``topic`` (all when None), from the beginning (or
    ``start[partition]``) up to its high watermark. Group-less; yields aiokafka
    ``ConsumerRecord``s.

    The end is the high watermark of the fetch responses, not only ListOffsets: the embedded
    broker answers ListOffsets(latest) with the base offset of the last batch + 1.
    """
    consumer = AIOKafkaConsumer(
        **{**settings.client_options(), "enable_auto_commit": False, "group_id": None},
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        if partitions is None:
            partitions = sorted(await _partitions_of(consumer, topic))
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            if start and tp.partition in start:
                starts[tp] = max(starts[tp], start[tp.partition])
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        for tp in tps:
            consumer.seek(tp, starts[tp])
        idle = dict.fromkeys(remaining, 0)
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=5_000)
            for tp in list(remaining):
                high = consumer.highwater(tp)
                if high is not None and high > ends[tp]:
                    ends[tp] = high
                records = batches.get(tp, ())
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                idle[tp] = 0 if records else idle[tp] + 1
                position = await consumer.position(tp)
                if position >= ends[tp]:
                    remaining.discard(tp)
                elif idle[tp] >= MAX_IDLE_FETCHES:  # nothing readable up to the end offset
                    log.warning(
                        "%s[%d]: no records between %d and the end offset %d after %d fetches; "
                        "reading stops there",
                        tp.topic,
                        tp.partition,
                        position,
                        ends[tp],
                        idle[tp],
                    )
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def high_watermarks(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """The high watermark of every partition of ``topic``, from fetch responses (see
    :func:`read_partitions` for why ListOffsets alone is not enough)."""
    consumer = AIOKafkaConsumer(
        **{**settings.client_options(), "enable_auto_commit": False, "group_id": None}
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await _partitions_of(consumer, topic))]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        result = {tp.partition: int(ends[tp]) for tp in tps}
        pending = [tp for tp in tps if ends[tp] > 0]
        for tp in pending:
            consumer.seek(tp, ends[tp] - 1)
        if pending:
            await consumer.getmany(*pending, timeout_ms=1_000, max_records=1)
        for tp in pending:
            high = consumer.highwater(tp)
            if high is not None:
                result[tp.partition] = max(result[tp.partition], int(high))
        return result
    finally:
        await consumer.stop()


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await consumer.topics()  # refreshes the cluster metadata
        await asyncio.sleep(0.05)
    raise ConfigurationError(f"expected topic {topic} to exist, the cluster does not know it")


async def read_states(
    settings: KafkaSettings,
    partitions: Collection[int] | None = None,
    *,
    start: Mapping[int, int] | None = None,
) -> dict[str, ScopeState | None]:
    """The latest state of every scope in the changelog; None for a tombstoned scope."""
    states: dict[str, ScopeState | None] = {}
    for found in (await read_partition_states(settings, partitions, start=start)).values():
        states.update(found)
    return states


async def read_partition_states(
    settings: KafkaSettings,
    partitions: Collection[int] | None = None,
    *,
    start: Mapping[int, int] | None = None,
) -> dict[int, dict[str, ScopeState | None]]:
    """Per changelog partition, the latest state of each scope (None: tombstoned), in one
    pass over all the partitions asked for."""
    result: dict[int, dict[str, ScopeState | None]] = {p: {} for p in partitions or ()}
    topic = changelog_topic(settings.topic_prefix)
    async for record in read_partitions(settings, topic, partitions, start=start):
        states = result.setdefault(record.partition, {})
        key = record.key.decode("utf-8", "replace") if record.key else ""
        if record.value is None:
            states[key] = None
            continue
        try:
            states[key] = decode_state(record.value)
        except msgspec.DecodeError as exc:
            log.error(
                "changelog record %s[%d]@%d is not a scope state, ignored: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
    return result


async def find_event_ids(settings: KafkaSettings, topic: str, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` event ids are on ``topic`` already (by the ``ce_id`` header)."""
    found: set[str] = set()
    if not wanted:
        return found
    async for record in read_partitions(settings, topic):
        value = header(record.headers, "ce_id")
        if value is not None and (text := value.decode("ascii", "replace")) in wanted:
            found.add(text)
            if found == wanted:
                break
    return found


class ChangelogWriter:
    """Writes scope states to an explicit changelog partition; returns once acknowledged."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.topic = changelog_topic(settings.topic_prefix)
        self._producer = AIOKafkaProducer(**settings.producer_options())
        self.records_written = 0

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def write(
        self, partition: int, states: Iterable[ScopeState], tombstones: Iterable[str] = ()
    ) -> int | None:
        """Write ``states`` (and tombstones for ``tombstones``) to ``partition``, in order.
        Returns the offset of the last record written (None: nothing to write)."""
        send = self._producer.send
        futures = [
            await send(self.topic, encode_state(s), key=s.scope.encode(), partition=partition)
            for s in states
        ]
        futures += [
            await send(self.topic, None, key=scope.encode(), partition=partition)
            for scope in tombstones
        ]
        if not futures:
            return None
        results = await asyncio.gather(*futures)
        self.records_written += len(results)
        return max(int(r.offset) for r in results)

    async def send_ordered(
        self, records: Iterable[tuple[str, bytes | None, bytes, Headers]]
    ) -> None:
        """Send ``(topic, key, value, headers)`` records, enqueued in the order given
        (per partition the broker keeps it), and wait for every acknowledgement."""
        send = self._producer.send
        futures = [
            await send(topic, value, key=key, headers=list(headers))
            for topic, key, value, headers in records
        ]
        if futures:
            await asyncio.gather(*futures)

    async def send_events(self, events: Iterable[tuple[str, Event]]) -> None:
        """Publish ``(topic, event)`` pairs in the wire format ``consumer.send`` uses (value
        in ``settings.encoding``, CloudEvents headers, key = :func:`record_key`), enqueued in
        order, and wait for every acknowledgement: one round trip for a whole batch."""
        encoding, limit = self.settings.encoding, self.settings.max_request_size
        await self.send_ordered(
            (
                topic,
                record_key(event),
                encode_event(event, encoding, max_bytes=limit),
                event_headers(event, encoding),
            )
            for topic, event in events
        )
