"""A partition whose fetched batch cannot be read: set aside, and nothing of the others lost."""

from __future__ import annotations

import logging

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CorruptRecordException, KafkaError, TopicAuthorizationFailedError
from aiokafka.structs import TopicPartition
from support.produce import produce_corrupt_batch, produce_events
from support.runtime import running_consumer, service_settings, wait_until
from support.samples import sample_event

from agentstream.consumers.runtime import EventConsumer
from agentstream.consumers.runtime.unreadable import Batches, UnreadablePartitions, isolate
from agentstream.schemas import Event
from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.settings import KafkaSettings


def events_for(partition: int, count: int, start: int) -> list[Event]:
    """``count`` events whose sessions land on ``partition`` of 4."""
    out: list[Event] = []
    i = start
    while len(out) < count:
        session = f"session-{i}"
        i += 1
        if partition_for(session.encode(), 4) == partition:
            event = sample_event("tool.called", i)
            event.session_id = session
            out.append(event)
    return out


def lag_of(consumer: EventConsumer, topic: str, partition: int) -> int:
    return next((lag for t, p, lag in consumer._lag() if (t, p) == (topic, partition)), 0)


@pytest.mark.parametrize("damage", ["crc", "header_name"])
async def test_an_unreadable_partition_is_set_aside_and_no_other_record_is_lost(
    kafka_settings: KafkaSettings, broker_kind: str, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    # a header name that is not UTF-8 (UnicodeDecodeError, no KafkaError) killed every service
    if broker_kind != "embedded" and damage == "crc":
        pytest.skip("Apache Kafka refuses a batch with a wrong CRC: it cannot be built there")
    settings = service_settings(kafka_settings)
    topic = settings.routing().events
    before = events_for(0, 5, 0)
    await produce_events(settings, before)
    await produce_corrupt_batch(settings, topic, 0, damage=damage)
    stuck = events_for(0, 20, 10_000)
    await produce_events(settings, stuck)

    consumer = EventConsumer(settings, service="unreadable")
    handled: list[str] = []

    @consumer.subscribe("*")
    async def record(event: Event) -> None:
        handled.append(event.event_id)

    healthy = [e for p in (1, 2, 3) for e in events_for(p, 150, 20_000 + 1_000 * p)]
    with caplog.at_level(logging.WARNING, logger="agentstream.consumers.runtime"):
        async with running_consumer(consumer):
            for start in range(0, len(healthy), 50):  # while fetches keep failing
                await produce_events(settings, healthy[start : start + 50])
            wanted = {e.event_id for e in healthy}
            await wait_until(lambda: wanted <= set(handled), what="every healthy record")
            # the unreadable partition's lag is on the gauge, where the lag alert sees it
            await wait_until(
                lambda: lag_of(consumer, topic, 0) >= len(before) + 3 + len(stuck),
                what="the unreadable partition's lag",
            )
    assert not {e.event_id for e in stuck} & set(handled)  # nothing skipped past the batch
    assert f"cannot read {topic}[0] at or after offset" in caplog.text
    assert f"--topic {topic}:0" in caplog.text


async def test_isolate_finds_the_partition_an_error_does_not_name(
    kafka_settings: KafkaSettings, broker_kind: str
) -> None:
    # A codec error (a library missing) names no partition: each one is fetched alone.
    if broker_kind != "embedded":
        pytest.skip("Apache Kafka refuses a batch with a wrong CRC: it cannot be built there")
    topic = kafka_settings.routing().events
    await produce_events(kafka_settings, events_for(0, 3, 0))
    await produce_corrupt_batch(kafka_settings, topic, 0)
    healthy = events_for(1, 10, 5_000)
    await produce_events(kafka_settings, healthy)
    consumer = AIOKafkaConsumer(**kafka_settings.consumer_options())
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        fed: Batches = {}
        failed = await isolate(consumer, KafkaError("names no partition"), 1_000, fed.update)
    finally:
        await consumer.stop()
    assert list(failed) == [tps[0]]
    assert isinstance(failed[tps[0]], CorruptRecordException)
    assert len(fed[tps[1]]) == len(healthy)


def test_held_partitions_come_due_after_the_retry_interval_and_say_what_to_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    held = UnreadablePartitions("svc", retry_s=60, clock=lambda: now[0])
    corrupt, denied = TopicPartition("t", 0), TopicPartition("t", 1)
    with caplog.at_level(logging.ERROR, logger="agentstream.consumers.runtime"):
        held.hold(corrupt, 17, CorruptRecordException("Invalid CRC"))
        held.hold(denied, None, TopicAuthorizationFailedError())
    assert corrupt in held and denied in held and held.position(corrupt) == 17
    first, second = caplog.records
    assert "cannot read t[0] at or after offset 17" in first.getMessage()
    assert "--reset-offsets --to-offset N --topic t:0" in first.getMessage()
    assert "cannot read t[1] at or after offset ?" in second.getMessage()
    assert "reset-offsets" not in second.getMessage()  # no batch to move past
    now[0] += 59
    assert held.due() == []
    now[0] += 1
    assert held.due() == [corrupt, denied] and not held
    held.hold(corrupt, 17, CorruptRecordException("Invalid CRC"))
    held.forget([corrupt])
    assert not held
