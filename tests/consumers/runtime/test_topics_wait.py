"""A service started before its topics exist waits for them instead of creating them."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from support.runtime import service_settings, wait_until

from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event
from agentstream.schemas.admin import TopicSpec, ensure_topics, missing_topics
from agentstream.schemas.settings import KafkaSettings


async def test_a_service_waits_for_its_topics_and_never_creates_them(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka's metadata requests ask the brokers to create a missing topic, which Apache
    Kafka does by default with one partition: a service that started before `topics create`
    left the events topic at one partition for good. It now waits for the topics."""
    base = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:12]}"
    )
    settings = service_settings(base)
    consumer = EventConsumer(settings, service="early")
    seen: list[Event] = []

    @consumer.subscribe("tool.*")
    async def record(event: Event) -> None:
        seen.append(event)

    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="agentstream.consumers.runtime"):
        task = asyncio.create_task(consumer.run(stop))
        try:
            await wait_until(lambda: "waiting for topics" in caplog.text, what="the wait said")
            await asyncio.sleep(1.5)  # the consumer asks again meanwhile: it must create nothing
            admin = AIOKafkaAdminClient(**settings.admin_options())
            await admin.start()
            try:
                assert await missing_topics(admin, consumer.topics()) == consumer.topics()
            finally:
                await admin.close()
            assert not consumer.ready
            # `topics create`, with 3 partitions (the embedded broker's own default is 4)
            await ensure_topics(base.admin_options(), base.routing(), TopicSpec(partitions=3))
            await wait_until(lambda: consumer.ready, timeout=30, what="assigned once they exist")
            assigned = consumer._consumer.assignment() if consumer._consumer else set()
            assert {tp.partition for tp in assigned if tp.topic == base.routing().events} == {
                0,
                1,
                2,
            }
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    assert f"service early: waiting for topics {', '.join(consumer.topics())}" in caplog.text


async def test_a_stop_while_waiting_for_the_topics_ends_the_wait(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM while a service waited for its topics ran out the 30 s shutdown bound and
    exited 1: the wait did not watch the stop."""
    base = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:12]}"
    )
    consumer = EventConsumer(service_settings(base), service="waiting")

    @consumer.subscribe("*")
    async def ignore(event: Event) -> None:
        pass

    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="agentstream.consumers.runtime"):
        task = asyncio.create_task(consumer.run(stop))
        await wait_until(lambda: "waiting for topics" in caplog.text, what="the wait said")
        stop.set()
        await asyncio.wait_for(task, 20)  # it never ended: the topics never come
    assert "service waiting stopped while waiting for its topics" in caplog.text
    assert consumer._consumer is None and consumer._producer is None  # nothing connected
