"""Every EventType through a real broker, in both encodings: key, headers and payload intact."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from support.samples import all_sample_events

from agentstream.consumers.runtime.reader import read_topics
from agentstream.producer.publisher import KafkaPublisher
from agentstream.schemas import (
    EventType,
    decode_record,
    encode_event,
    event_headers,
    header,
    payload_of,
    record_key,
)
from agentstream.schemas.settings import KafkaSettings


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_every_type_round_trips_through_the_broker(
    kafka_settings: KafkaSettings, unique_name: str, encoding: str
) -> None:
    events = all_sample_events()
    routing = kafka_settings.routing()
    producer = AIOKafkaProducer(**kafka_settings.producer_options())
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                routing.topic_for(event.type),
                encode_event(event, encoding),  # type: ignore[arg-type]
                key=record_key(event),
                headers=event_headers(event, encoding),  # type: ignore[arg-type]
            )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        *routing.topics_for_pattern("*"), group_id=unique_name, **kafka_settings.consumer_options()
    )
    await consumer.start()
    received = {}
    try:
        while len(received) < len(events):
            batches = await consumer.getmany(timeout_ms=5_000)
            assert batches, f"no records after {len(received)} of {len(events)}"
            for records in batches.values():
                for record in records:
                    event = decode_record(record.value, record.headers)
                    received[event.event_id] = (record, event)
    finally:
        await consumer.stop()

    for sent in events:
        record, got = received[sent.event_id]
        assert record.topic == routing.topic_for(sent.type)
        assert record.key == sent.session_id.encode()
        assert header(record.headers, "ce_type") == str(sent.type).encode()
        assert header(record.headers, "ce_id") == sent.event_id.encode()
        assert header(record.headers, "ce_sessionid") == sent.session_id.encode()
        assert got == sent  # every envelope field and the data dict, extras included
        assert got.payload == payload_of(sent.type, sent.data)
    assert {e.type for _, e in received.values()} == {t.value for t in EventType}


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_batches_in_every_codec_kafka_has_are_read(
    kafka_settings: KafkaSettings, codec: str
) -> None:
    # A consumer cannot choose what its producers compress with: without a codec's library
    # every fetch of the partition fails, for good (the library comes with the package).
    settings = kafka_settings.model_copy(update={"compression_type": codec})
    events = all_sample_events()
    publisher = KafkaPublisher(settings, redact=None)
    try:
        for event in events:
            publisher.publish(event)
        assert await asyncio.to_thread(publisher.flush, 30), publisher.stats()
    finally:
        await asyncio.to_thread(publisher.close, 5)
    routing = settings.routing()
    records = read_topics(
        settings, routing.topics_for_pattern("*"), start="beginning", follow=False
    )
    got = set()
    async with contextlib.aclosing(records):
        async for record in records:
            got.add(decode_record(record.value, record.headers).event_id)
    assert got == {event.event_id for event in events}
