"""Fixtures for the publisher tests: reading back what the publisher sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.admin import CreateTopicsRequest
from aiokafka.structs import ConsumerRecord
from support.proxy import TcpProxy

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


async def create_topics_direct(port: int, topics: list[str], partitions: int) -> None:
    """CreateTopics sent straight to the broker listening on ``port``, whatever it advertises
    (the admin client would follow the advertised address)."""
    deadline = time.monotonic() + 30
    while True:  # readiness: the broker accepts a Kafka connection (ApiVersions)
        try:
            conn = await create_conn("127.0.0.1", port)
            break
        except (OSError, KafkaConnectionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    try:
        request = CreateTopicsRequest(
            create_topic_requests=[(topic, partitions, 1, [], []) for topic in topics],
            timeout=10_000,
            validate_only=False,
        )
        response = await conn.send(request)
        errors = [entry for entry in response.topic_errors if entry[1] not in (0, 36)]
        assert not errors, errors
    finally:
        conn.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int, int], TcpProxy]]:
    """Start TCP forwarders (``tcp_proxy(port, target)``); all are stopped at teardown."""
    started: list[TcpProxy] = []

    def start(port: int, target: int) -> TcpProxy:
        proxy = TcpProxy(port, target).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def create_topics() -> Callable[[int, list[str], int], Awaitable[None]]:
    return create_topics_direct
