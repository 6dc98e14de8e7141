"""Group-less reads of partitions: committed offsets, true high watermarks, windows.

Services rebuild state from Kafka itself (a detector's recent history, a trace's open turns,
a budget changelog) with a separate consumer that is *assigned* partitions: it never joins a
group, never disturbs one and commits nothing. Only offsets are used, never
``offsets_for_times`` (unreliable on the embedded broker).

The end of a partition is its **high watermark as fetch responses report it**. ListOffsets
(``end_offsets``, ``seek_to_end``) is not enough: the embedded broker answers it with the base
offset of the last batch + 1, short of the records after the first one of that batch. Apache
Kafka answers the high watermark there; both agree with the fetch responses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from agentstream.schemas.admin import (
    admin_client,
    describe_topics,
    fetch,
    start_client,
    stop_client,
    true_ends,
)
from agentstream.schemas.codec import decode_record
from agentstream.schemas.envelope import Event
from agentstream.schemas.errors import ConfigurationError, DecodeError, RecordLocation
from agentstream.schemas.settings import KafkaSettings

from .deadletter import replayed_for_another

log = logging.getLogger("agentstream.consumers.runtime.replay")

MAX_IDLE_FETCHES = 20
"""Fetch rounds in a row without progress before a partition is left short of its end
(records missing below the high watermark: transaction markers, compaction)."""

FETCH_WAIT_MS = 500
"""Longest wait of one fetch round."""


@dataclass(frozen=True, slots=True)
class Window:
    """Offsets ``[start, stop)`` of one partition; ``stop=None``: up to the partition's high
    watermark as the first fetch reports it (records appended later are not waited for)."""

    start: int = 0
    stop: int | None = None

    def __bool__(self) -> bool:
        return self.stop is None or self.stop > self.start


def reader(settings: KafkaSettings, name: str) -> AIOKafkaConsumer:
    """A group-less consumer (assign and seek only; commits nothing), ``client_id``
    suffixed with ``name`` so brokers' logs tell readers apart."""
    options = settings.consumer_options()
    options.update(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a start below the log start (retention) reads from it
        client_id=f"{settings.client_id}-{name}",
    )
    return AIOKafkaConsumer(**options)


CHECK_PARTITIONS_S = 2.0
"""How long a read waits for partitions it asks for to appear in the metadata."""


async def topic_metadata(settings: KafkaSettings, topic: str) -> dict[str, Any] | None:
    """``topic``'s metadata (``partitions``: each with ``partition``, ``leader``,
    ``replicas``), or None when it does not exist (never created here, even by brokers that
    create topics on demand)."""
    async with admin_client(settings.admin_options()) as admin:
        described = await describe_topics(admin, [topic])
    for found in described:
        if found.get("topic") == topic and not found.get("error_code"):
            return dict(found)
    return None


async def partitions_of(settings: KafkaSettings, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, sorted; none when it does not exist (never created)."""
    found = await topic_metadata(settings, topic)
    partitions = found.get("partitions", ()) if found is not None else ()
    return sorted(TopicPartition(topic, p["partition"]) for p in partitions)


async def _check_partitions(settings: KafkaSettings, tps: Iterable[TopicPartition]) -> None:
    """Raise :class:`ConfigurationError` for partitions that do not exist: aiokafka would wait
    for their leader forever (a changelog with fewer partitions than its input topic). A
    topic created a moment ago may not be known to every broker yet: asked again for up to
    :data:`CHECK_PARTITIONS_S` before the error."""
    by_topic: dict[str, set[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, set()).add(tp.partition)
    deadline = time.monotonic() + CHECK_PARTITIONS_S
    for topic, asked in sorted(by_topic.items()):
        while True:
            found = {tp.partition for tp in await partitions_of(settings, topic)}
            missing = sorted(asked - found)
            if not missing:
                break
            if time.monotonic() >= deadline:
                has = f"has {len(found)} partitions" if found else "does not exist"
                raise ConfigurationError(
                    f"expected partitions {missing} of topic {topic} to read, the topic {has}"
                )
            await asyncio.sleep(0.25)


async def committed_offsets(
    settings: KafkaSettings, group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The offset ``group_id`` committed on each partition (None: nothing committed), as the
    group coordinator reports it. Does not join the group."""
    tps = list(partitions)
    if not tps:
        return {}
    async with admin_client(settings.admin_options()) as admin:
        found = await admin.list_consumer_group_offsets(group_id, partitions=tps)
    result: dict[TopicPartition, int | None] = {}
    for tp in tps:
        meta = found.get(tp)
        result[tp] = meta.offset if meta is not None and meta.offset >= 0 else None
    return result


async def high_watermarks(
    settings: KafkaSettings,
    partitions: Iterable[TopicPartition],
    *,
    timeout_s: float = 10.0,
    listed_fallback: bool = True,
) -> dict[TopicPartition, int]:
    """The high watermark of each partition, from a fetch response (ListOffsets alone can
    understate it, see the module doc). Falls back to ListOffsets for a partition whose fetch
    did not answer within ``timeout_s``; without ``listed_fallback``, such a partition is
    left out (for a caller that must not take a low figure)."""
    tps = sorted(set(partitions))
    if not tps:
        return {}
    consumer = reader(settings, "highwater")
    await start_client(consumer, settings.client_options())
    try:
        consumer.assign(tps)
        result, pending = await true_ends(consumer, tps, timeout_s=timeout_s, wait_ms=FETCH_WAIT_MS)
        if pending and not listed_fallback:
            return {tp: end for tp, end in result.items() if tp not in pending}
        if pending:
            log.warning("no fetch response for %s: high watermark from ListOffsets", pending)
        return result
    finally:
        await stop_client(consumer)


async def read_windows(
    settings: KafkaSettings,
    windows: Mapping[TopicPartition, Window],
    *,
    timeout_s: float | None = None,
    name: str = "replay",
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """Every record of each window, in offset order per partition (partitions interleave).

    A window ends at ``stop`` or, without one, at the high watermark the partition's first
    fetch response reports; a partition whose records stop short of it (transaction markers,
    compaction) is left after :data:`MAX_IDLE_FETCHES` rounds without progress. With
    ``timeout_s`` the read gives up at that bound (logged: the caller's state is partial).
    """
    wanted = {tp: w for tp, w in windows.items() if w}
    if not wanted:
        return
    await _check_partitions(settings, wanted)
    consumer = reader(settings, name)
    await start_client(consumer, settings.client_options())
    try:
        consumer.assign(list(wanted))
        begins = await consumer.beginning_offsets(list(wanted))
        for tp, window in wanted.items():
            consumer.seek(tp, max(window.start, begins.get(tp, 0)))
        ends: dict[TopicPartition, int] = {}  # learned from the first fetch of each partition
        idle = dict.fromkeys(wanted, 0)
        pending = set(wanted)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            wait_ms = FETCH_WAIT_MS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "reading %s: gave up after %.1f s with %d partitions unfinished",
                        name,
                        timeout_s,
                        len(pending),
                    )
                    return
                wait_ms = max(1, int(min(remaining * 1000, FETCH_WAIT_MS)))
            batches = await fetch(consumer, *pending, timeout_ms=wait_ms, max_records=5_000)
            for tp in sorted(pending):
                end = ends.get(tp)
                if end is None:
                    high = consumer.highwater(tp)
                    if high is None:  # no fetch response for it yet
                        continue
                    stop = wanted[tp].stop
                    end = ends[tp] = int(high) if stop is None else min(stop, int(high))
                records = batches.get(tp, ())
                for record in records:
                    if record.offset >= end:
                        break
                    yield record
                idle[tp] = 0 if records else idle[tp] + 1
                position = await consumer.position(tp)
                if position >= end:
                    pending.discard(tp)
                elif idle[tp] >= MAX_IDLE_FETCHES:
                    log.warning(
                        "%s[%d]: no records between %d and the end %d after %d fetches; "
                        "reading stops there",
                        tp.topic,
                        tp.partition,
                        position,
                        end,
                        idle[tp],
                    )
                    pending.discard(tp)
                if tp not in pending:
                    consumer.pause(tp)
    finally:
        await stop_client(consumer)


async def read_to_end(
    settings: KafkaSettings,
    partitions: Iterable[TopicPartition],
    *,
    start: Mapping[TopicPartition, int] | None = None,
    timeout_s: float | None = None,
    name: str = "replay",
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """Every record of ``partitions`` from the beginning (or ``start[tp]``) to the high
    watermark: :func:`read_windows` with open windows."""
    start = start or {}
    windows = {tp: Window(start.get(tp, 0)) for tp in partitions}
    async for record in read_windows(settings, windows, timeout_s=timeout_s, name=name):
        yield record


async def read_window_events(
    settings: KafkaSettings,
    windows: Mapping[TopicPartition, Window],
    *,
    timeout_s: float | None = None,
    name: str = "replay",
    group_id: str,
) -> AsyncGenerator[tuple[ConsumerRecord[bytes, bytes], Event], None]:
    """:func:`read_windows`, decoded as the live pass decodes (the envelope only; payloads
    validate lazily). Records the live pass of group ``group_id`` left out are left out:
    undecodable ones (dead-lettered) and replays sent back for another group."""
    group = group_id.encode()
    async for record in read_windows(settings, windows, timeout_s=timeout_s, name=name):
        if replayed_for_another(record.headers, group):
            continue
        where = RecordLocation(record.topic, record.partition, record.offset)
        try:
            event = decode_record(record.value, record.headers, validate=False, where=where)
        except DecodeError:
            continue
        yield record, event
