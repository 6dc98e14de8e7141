"""Group-less reads (``runtime.replay``) against the real broker, with several produce batches
per partition: the embedded broker's ListOffsets(latest) answers the last batch's base offset
+ 1, the fetch responses the true high watermark."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from support.samples import sample_event

from agentstream.consumers.runtime.replay import (
    Window,
    committed_offsets,
    high_watermarks,
    partitions_of,
    read_to_end,
    read_window_events,
    read_windows,
)
from agentstream.schemas import encode_event, event_headers
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings

BATCHES = (5, 4, 6)  # records per produce batch, partition 0


async def _produce_batches(settings: KafkaSettings, topic: str) -> list[bytes]:
    """Batches of records on partition 0 (each batch acknowledged before the next) and one
    record on partition 1; returns partition 0's values in offset order."""
    producer = AIOKafkaProducer(**{**settings.producer_options(), "linger_ms": 50})
    await producer.start()
    values = []
    try:
        for b, size in enumerate(BATCHES):
            futures = []
            for i in range(size):
                value = f"b{b}-r{i}".encode()
                values.append(value)
                futures.append(await producer.send(topic, value, partition=0))
            for future in futures:
                await future
        await producer.send_and_wait(topic, b"alone", partition=1)
    finally:
        await producer.stop()
    return values


async def test_windows_read_up_to_the_true_high_watermark(kafka_settings: KafkaSettings) -> None:
    topic = kafka_settings.routing().events
    values = await _produce_batches(kafka_settings, topic)
    total = len(values)
    tps = await partitions_of(kafka_settings, topic)
    assert tps == [TopicPartition(topic, p) for p in range(4)]
    p0, p1, p2 = tps[0], tps[1], tps[2]

    highs = await high_watermarks(kafka_settings, tps)
    assert highs == {p0: total, p1: 1, p2: 0, tps[3]: 0}

    everything = [r async for r in read_to_end(kafka_settings, tps)]
    assert [r.value for r in everything if r.partition == 0] == values
    assert [r.value for r in everything if r.partition == 1] == [b"alone"]
    assert len(everything) == total + 1

    # A start inside the last batch, beyond the base offset + 1 ListOffsets may answer.
    last_batch = total - BATCHES[-1]
    tail = [r async for r in read_windows(kafka_settings, {p0: Window(last_batch + 2)})]
    assert [r.offset for r in tail] == list(range(last_batch + 2, total))

    middle = [r async for r in read_windows(kafka_settings, {p0: Window(3, 7), p1: Window(0, 0)})]
    assert [r.value for r in middle] == values[3:7]

    beyond = [r async for r in read_windows(kafka_settings, {p0: Window(total - 1, total + 50)})]
    assert [r.offset for r in beyond] == [total - 1], "a stop past the end ends at the end"

    started = [
        r async for r in read_to_end(kafka_settings, [p0, p2], start={p0: total - 2}, timeout_s=20)
    ]
    assert [r.offset for r in started] == [total - 2, total - 1]


async def test_committed_offsets_of_a_group(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    topic = kafka_settings.routing().events
    tps = [TopicPartition(topic, p) for p in range(3)]
    assert await committed_offsets(kafka_settings, unique_name, tps) == dict.fromkeys(tps)
    await _produce_batches(kafka_settings, topic)
    consumer = AIOKafkaConsumer(group_id=unique_name, **kafka_settings.consumer_options())
    await consumer.start()
    try:
        consumer.assign(tps)  # commits with a group id, without joining the group
        await consumer.commit({tps[0]: 7, tps[1]: 1})
    finally:
        await consumer.stop()
    found = await committed_offsets(kafka_settings, unique_name, tps)
    assert found == {tps[0]: 7, tps[1]: 1, tps[2]: None}
    assert await committed_offsets(kafka_settings, unique_name, []) == {}


async def test_window_events_leave_out_what_the_live_pass_of_the_group_left_out(
    kafka_settings: KafkaSettings,
) -> None:
    """Undecodable records, and replays sent back for another group, as the live pass does."""
    topic = kafka_settings.routing().events
    event = sample_event("tool.called", 1)
    value, headers = encode_event(event), event_headers(event)
    replay_for = "agentstream.replayed.for"
    producer = AIOKafkaProducer(**kafka_settings.producer_options())
    await producer.start()
    try:
        for record_value, record_headers in (
            (value, headers),
            (b"not json", []),
            (value, [(replay_for, b"other-group"), *headers]),
            (value, [(replay_for, b"this-group"), *headers]),
        ):
            await producer.send_and_wait(topic, record_value, partition=0, headers=record_headers)
    finally:
        await producer.stop()
    p0 = TopicPartition(topic, 0)
    windows = {p0: Window(0, 4)}
    read = [r async for r, _ in read_window_events(kafka_settings, windows, group_id="this-group")]
    assert [r.offset for r in read] == [0, 3]


async def test_looking_at_a_missing_topic_does_not_create_it(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    """The embedded broker, like Apache Kafka with auto.create.topics.enable, creates topics
    that a metadata request allowing it names: `budget show` before the budget service ever
    ran created its changelog with the broker's default partitions, and the service then
    refused to start."""
    topic = f"{unique_name}.budget-changelog"
    assert await partitions_of(kafka_settings, topic) == []
    admin = AIOKafkaAdminClient(**kafka_settings.admin_options())
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


async def test_reading_partitions_that_do_not_exist_is_refused_not_a_wait_forever(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    """aiokafka waits for the leader of a partition that does not exist for as long as it is
    asked to: a reader of a changelog with fewer partitions than its input hung there."""
    topic = kafka_settings.routing().events  # 4 partitions
    beyond = [TopicPartition(topic, 1), TopicPartition(topic, 4), TopicPartition(topic, 6)]
    with pytest.raises(ConfigurationError, match=rf"partitions \[4, 6\] of topic {topic}.*has 4"):
        async with asyncio.timeout(30):
            _ = [r async for r in read_to_end(kafka_settings, beyond)]
    missing = TopicPartition(f"{unique_name}.nowhere", 0)
    with pytest.raises(ConfigurationError, match="does not exist"):
        async with asyncio.timeout(30):
            _ = [r async for r in read_to_end(kafka_settings, [missing])]
