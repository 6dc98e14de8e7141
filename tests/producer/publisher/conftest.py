"""Fixtures for the publisher tests: reading back what the publisher sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from agentstream.schemas.settings import KafkaSettings

Consume = Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]]


async def consume_records(
    settings: KafkaSettings, topic: str, expected: int, *, timeout: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until ``expected`` records came or ``timeout`` passed
    (then return what came, for the assertion to show)."""
    consumer = AIOKafkaConsumer(topic, **settings.consumer_options(), group_id=None)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
        # a short extra read catches duplicates beyond the expected count
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return records


@pytest.fixture
def consume() -> Consume:
    return consume_records


def run(coroutine: Awaitable[object]) -> None:
    asyncio.get_event_loop().run_until_complete(coroutine)
