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

Reads here are group-less (:mod:`agentstream.consumers.runtime.replay`: ``assign`` + seek, up
to the true high watermark), never committing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterable, Mapping

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic
from aiokafka.structs import TopicPartition

from agentstream.consumers.runtime.consumer import wait_for_topics
from agentstream.consumers.runtime.replay import partitions_of, read_to_end, topic_metadata
from agentstream.schemas import Event, encode_event, event_headers, header, record_key
from agentstream.schemas.admin import DAY_MS, create_missing_topics
from agentstream.schemas.codec import Headers
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings

from .accounting import ScopeState

log = logging.getLogger("agentstream.consumers.budget")

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


async def topic_shape(settings: KafkaSettings, topic: str) -> tuple[int, int] | None:
    """``(partitions, replication factor)`` of ``topic`` (the replicas of its first
    partition), or None when it does not exist (never created here)."""
    found = await topic_metadata(settings, topic)
    partitions = (found or {}).get("partitions") or []
    if not partitions:
        return None
    first = min(partitions, key=lambda p: p["partition"])
    return len(partitions), max(1, len(first.get("replicas") or ()))


async def ensure_budget_topics(
    settings: KafkaSettings, *, replication_factor: int | None = None
) -> int:
    """Create the changelog and repartition topics like the events topic: as many partitions
    (state partition *p* goes with input partition *p*) and, unless ``replication_factor`` is
    given, as many replicas (a changelog on one broker of three loses the budgets with it).

    Returns the partition count. Waits for the events topic when it does not exist yet (a
    topics Job starting with the services), as the runtime waits for every service's topics
    (:func:`~agentstream.consumers.runtime.consumer.wait_for_topics`). Raises
    :class:`ConfigurationError` when an existing budget topic has another partition count
    (state would land elsewhere).
    """
    partitions, _ = await create_budget_topics(settings, replication_factor=replication_factor)
    return partitions


async def create_budget_topics(
    settings: KafkaSettings, *, replication_factor: int | None = None
) -> tuple[int, dict[str, str]]:
    """:func:`ensure_budget_topics`, also returning what became of each topic
    (``created``, ``exists``), for ``agentstream topics create --budget``."""
    routing = settings.routing()
    await wait_for_topics(settings, [routing.events], "budget")
    shape = await topic_shape(settings, routing.events)
    if shape is None:  # deleted since
        raise ConfigurationError(f"expected the events topic {routing.events}, it is gone")
    partitions, replicas = shape
    replicas = replication_factor or replicas
    changelog, repartition = changelog_topic(routing.prefix), repartition_topic(routing.prefix)
    outcome = await create_missing_topics(
        settings.admin_options(),
        [
            NewTopic(changelog, partitions, replicas, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(
                repartition,
                partitions,
                replicas,
                topic_configs={"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
            ),
        ],
        required={
            changelog: f"it holds the budgets, each with the partition of {routing.events} "
            "its events come on (partitions alike), and a state deleted by retention is a "
            "budget restored as zero (cleanup.policy=compact)",
            repartition: f"its partition r feeds changelog partition r, one per partition of "
            f"{routing.events}, and compaction would drop usage records, so day budgets would "
            "count too little (cleanup.policy=delete)",
        },
    )
    return partitions, outcome


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
    if partitions is None:
        tps = await partitions_of(settings, topic)
    else:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    starts = {TopicPartition(topic, p): o for p, o in (start or {}).items()}
    async for record in read_to_end(settings, tps, start=starts, name="budget-changelog"):
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
    tps = await partitions_of(settings, topic)
    async with contextlib.aclosing(read_to_end(settings, tps, name="budget-ids")) as records:
        async for record in records:
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
