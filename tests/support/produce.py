"""Test traffic through aiokafka and the wire format (independent of the producer package)."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

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
            )
            for event in events
        ]
        for future in futures:
            await future
            sent += 1
    finally:
        await producer.stop()
    return sent


async def produce_raw(
    settings: KafkaSettings,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Send arbitrary bytes (poison records for error-path tests)."""
    producer = AIOKafkaProducer(**settings.producer_options())
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=headers or [])
    finally:
        await producer.stop()
