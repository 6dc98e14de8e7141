"""Running consumers in tests: in-process (a background task) and as ``agentstream consume``
subprocesses, plus reading topics and committed offsets back. Every wait is a condition
polled against a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from agentstream.consumers.runtime import EventConsumer, ServiceSettings
from agentstream.schemas.settings import KafkaSettings

POLL = 0.02


def service_settings(base: KafkaSettings, **overrides: Any) -> ServiceSettings:
    """ServiceSettings on ``base``'s broker and topics, tuned for quick tests."""
    fields = {
        "bootstrap_servers": base.bootstrap_servers,
        "topic_prefix": base.topic_prefix,
        "linger_ms": 1,
        "fetch_max_wait_ms": 100,
        "commit_interval_ms": 100,
        "handler_retries": 2,
        "handler_retry_backoff_ms": 1,
        "handler_retry_max_backoff_ms": 5,
        "drain_timeout_ms": 10_000,
        **overrides,
    }
    return ServiceSettings(**fields)


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float = 20.0, what: str = ""
) -> None:
    """Poll ``predicate`` (sync or async) until true; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {what or predicate!r}")
        await asyncio.sleep(POLL)


@contextlib.asynccontextmanager
async def running_consumer(
    consumer: EventConsumer, *, timeout: float = 30.0
) -> AsyncIterator[EventConsumer]:
    """Run ``consumer`` in a background task until the block ends; enter once it is ready
    (partitions assigned). Leaving stops it (drain, commit, leave the group)."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = time.monotonic() + timeout
        while not consumer.ready:
            if task.done():
                task.result()
                raise RuntimeError("the consumer stopped before partitions were assigned")
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer {consumer.service} not ready within {timeout} s")
            await asyncio.sleep(POLL)
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=consumer.settings.drain_timeout_ms / 1000 + 15)


async def read_records(
    settings: KafkaSettings, topic: str, count: int, *, timeout: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` records of ``topic`` (all partitions, no consumer group)."""
    consumer = AIOKafkaConsumer(**{**settings.consumer_options(), "auto_offset_reset": "earliest"})
    await consumer.start()
    try:
        await consumer.topics()  # metadata
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        found: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} records on {topic}, got {len(found)}")
            batches = await consumer.getmany(timeout_ms=100)
            for records in batches.values():
                found.extend(records)
        return found
    finally:
        await consumer.stop()


async def committed_offsets(
    settings: KafkaSettings, group_id: str, topics: list[str] | None = None
) -> dict[TopicPartition, int]:
    """The offsets ``group_id`` committed on ``topics`` (default: the prefix's five topics),
    as the group coordinator reports them; partitions without a commit are left out."""
    consumer = AIOKafkaConsumer(group_id=group_id, **settings.consumer_options())
    await consumer.start()
    try:
        found: dict[TopicPartition, int] = {}
        await consumer.topics()  # metadata
        for topic in topics or settings.routing().all_topics():
            for partition in sorted(consumer.partitions_for_topic(topic) or ()):
                tp = TopicPartition(topic, partition)
                offset = await consumer.committed(tp)
                if offset is not None and offset >= 0:
                    found[tp] = offset
        return found
    finally:
        await consumer.stop()
