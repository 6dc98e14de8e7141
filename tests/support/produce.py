"""Test traffic through aiokafka and the wire format (independent of the producer package)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from agentstream.schemas import Event, encode_event, event_headers, record_key
from agentstream.schemas.settings import KafkaSettings


async def produce_events(
    settings: KafkaSettings, events: Iterable[Event], topic: str | None = None
) -> int:
    """Send ``events`` (to their routed topic, or ``topic``); return how many were acked."""
    routing = settings.routing()
    producer = AIOKafkaProducer(**settings.producer_options())
    await producer.start()
    sent = 0
    try:
        futures = [
            await producer.send(
                topic or routing.topic_for(event.type),
                encode_event(event, settings.encoding),
                key=record_key(event),
                headers=event_headers(event, settings.encoding),
                timestamp_ms=record_time(event),
            )
            for event in events
        ]
        for future in futures:
            await future
            sent += 1
    finally:
        await producer.stop()
    return sent


def record_time(event: Event) -> int | None:
    """The event's time as the record's (CreateTime), as a producer whose clock stamped both:
    the tests' events of fixed dates stay within ``max_clock_skew_ms`` of their records."""
    ms = int(event.timestamp.timestamp() * 1000)
    return ms if ms >= 0 else None


async def produce_raw(
    settings: KafkaSettings,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    partition: int | None = None,
) -> None:
    """Send arbitrary bytes (poison records for error-path tests)."""
    producer = AIOKafkaProducer(**settings.producer_options())
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, value, key=key, headers=headers or [], partition=partition
        )
    finally:
        await producer.stop()


async def produce_corrupt_batch(
    settings: KafkaSettings, topic: str, partition: int, *, damage: str = "crc"
) -> None:
    """Append a record batch aiokafka cannot read to ``topic[partition]`` (three records),
    through aiokafka's own batch builder and a raw ProduceRequest.

    ``damage="crc"``: a wrong CRC. Apache Kafka refuses it (CORRUPT_MESSAGE); the embedded
    broker stores it, as a broker with a damaged disk would serve it: consumers that check
    CRCs (aiokafka does) cannot read past it. ``damage="header_name"``: the second record has
    a header whose name is not UTF-8, the CRC right. Kafka takes it (Go clients send header
    names as bytes); aiokafka raises UnicodeDecodeError parsing it."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i in range(3):
        headers = [("QQ", b"v")] if i == 1 else []
        builder.append(i, timestamp=None, key=None, value=b"corrupt", headers=headers)
    batch = bytearray(builder.build())
    if damage == "crc":
        struct.pack_into(">I", batch, 17, zlib.crc32(batch) ^ 0x5A5A5A5A)  # CRC32C at byte 17
    else:
        at = batch.index(b"QQ")
        batch[at : at + 2] = b"\xff\xfe"
        struct.pack_into(">I", batch, 17, calc_crc32c(bytes(batch[21:])))  # of what follows
    producer = AIOKafkaProducer(**settings.producer_options())
    await producer.start()
    try:
        await producer.client._wait_on_metadata(topic)
        leader = producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 30_000, [(topic, [(partition, bytes(batch))])])
        response = await producer.client.send(leader, request)
        ((_, answers),) = response.topics
        assert answers[0][1] == 0, f"the broker refused the corrupt batch: {response}"
    finally:
        await producer.stop()
