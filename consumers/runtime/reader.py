"""Reading topics without a consumer group (``tail``, ``dlq``): partitions are assigned, so
services' groups are never disturbed and nothing is committed."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from agentstream.schemas.admin import fetch, start_client, stop_client
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings

from .replay import high_watermarks

log = logging.getLogger("agentstream.consumers.runtime.reader")


async def _assign(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    await consumer.topics()  # metadata
    tps = [
        TopicPartition(topic, p)
        for topic in sorted(topics)
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(tps)
    return tps


async def _seek_since(
    settings: KafkaSettings, consumer: AIOKafkaConsumer, tps: list[TopicPartition], since_ms: int
) -> bool:
    """Seek each partition to its first record at or after ``since_ms``.

    Kafka answers ``offsets_for_times`` with None for partitions without such a record (then
    we seek to the end). Some brokers (the embedded one) answer offset 0 with timestamp -1
    instead: we cannot trust that, so we return False and the caller scans from the
    beginning, filtering by timestamp.
    """
    found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
    ends = await high_watermarks(settings, tps)
    for tp in tps:
        answer = found.get(tp)
        if answer is None:
            consumer.seek(tp, ends[tp])
        elif answer.timestamp is None or answer.timestamp < 0:
            return False
        else:
            consumer.seek(tp, answer.offset)
    return True


async def read_topics(
    settings: KafkaSettings,
    topics: Iterable[str],
    *,
    start: str = "end",
    since_ms: int | None = None,
    follow: bool = True,
) -> AsyncGenerator[Any, None]:
    """Yield records (aiokafka ``ConsumerRecord``) of ``topics``.

    ``start``: ``"beginning"`` or ``"end"``; ``since_ms`` overrides it (records with a
    timestamp at or after it). Without ``follow`` the iteration ends at the end offsets
    read when it started.
    """
    consumer = AIOKafkaConsumer(**{**settings.consumer_options(), "group_id": None})
    await start_client(consumer, settings.client_options())
    try:
        names = sorted(set(topics))
        tps = await _assign(consumer, names)
        if not tps:  # a mistyped prefix would otherwise read nothing, or wait forever
            raise ConfigurationError(
                f"expected {', '.join(names)} at {settings.broker_address()}, no such topic "
                "exists (check --topic-prefix / AGENTSTREAM_TOPIC_PREFIX, or create them: "
                "`agentstream topics create`)"
            )
        min_timestamp = None
        true_end: dict[TopicPartition, int] | None = None
        if since_ms is not None and since_ms <= 0:  # before 1970: Kafka times are not negative
            await consumer.seek_to_beginning(*tps)
        elif since_ms is not None:
            if not await _seek_since(settings, consumer, tps, since_ms):
                log.info("offsets_for_times unreliable here: scanning from the beginning")
                await consumer.seek_to_beginning(*tps)
                min_timestamp = since_ms
        elif start == "beginning":
            await consumer.seek_to_beginning(*tps)
        else:  # not seek_to_end(): ListOffsets can answer short of the end (see ``replay``)
            true_end = await high_watermarks(settings, tps)
            for tp, end in true_end.items():
                consumer.seek(tp, end)
        if follow:
            ends = {}
        else:  # the true end, for the same reason
            ends = true_end if true_end is not None else await high_watermarks(settings, tps)
        positions = {tp: await consumer.position(tp) for tp in tps}
        while follow or any(positions[tp] < ends[tp] for tp in tps):
            batches = await fetch(consumer, timeout_ms=200)
            for tp, records in sorted(batches.items()):
                for record in records:
                    positions[tp] = record.offset + 1
                    if not follow and record.offset >= ends[tp]:
                        continue
                    if min_timestamp is not None and record.timestamp < min_timestamp:
                        continue
                    yield record
            if not follow and not batches:
                positions = {tp: await consumer.position(tp) for tp in tps}
    finally:
        await stop_client(consumer)
