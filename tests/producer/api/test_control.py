"""The control channel, pod side, against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import pytest
from support.produce import produce_corrupt_batch, produce_events, produce_raw

from agentstream.consumers.broker import EmbeddedBroker, free_port
from agentstream.producer import ControlListener, Event, EventBus, EventType
from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.errors import BrokerUnavailableError, ConfigurationError
from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.settings import KafkaSettings

if TYPE_CHECKING:
    from conftest import RecordingPublisher

logger = logging.getLogger(__name__)


def running(listener: ControlListener) -> bool:
    return listener.running


def directive(agent_id: str, session_id: str, reason: str = "loop") -> Event:
    return Event(
        type=EventType.CONTROL_AGENT_PAUSED,
        agent_id=agent_id,
        session_id=session_id,
        data={"reason": reason, "service": "loops", "finding_id": "f-1", "tool_name": "search"},
    )


async def test_directives_for_this_agent_reach_local_handlers_only(
    kafka_settings: KafkaSettings, recording: type[RecordingPublisher]
) -> None:
    publisher = recording()
    listener = ControlListener(kafka_settings)
    bus = EventBus(publisher, agent_id="agent-a", control=listener)
    received: asyncio.Queue[tuple[Event, float]] = asyncio.Queue()

    async def guard(event: Event) -> None:
        received.put_nowait((event, time.monotonic()))

    bus.subscribe(EventType.CONTROL_AGENT_PAUSED, guard)
    async with bus:
        assert listener.running
        with bus.scope(session_id="sess-of-a"):
            await bus.emit(Event(type=EventType.TOOL_CALLED, data={"name": "search"}))
        topic = kafka_settings.routing().control
        latencies = []
        for i in range(5):
            sent = time.monotonic()
            await produce_events(kafka_settings, [directive("agent-b", f"s{i}")], topic=topic)
            await produce_events(kafka_settings, [directive("agent-a", f"s{i}")], topic=topic)
            event, at = await asyncio.wait_for(received.get(), 10)
            latencies.append(at - sent)
            assert (event.agent_id, event.session_id) == ("agent-a", f"s{i}")
            assert event.type.value == "control.agent.paused"  # type: ignore[attr-defined]
            assert event.data["reason"] == "loop"
        # addressed by session only (no agent id): this bus emitted in that session
        await produce_events(kafka_settings, [directive("", "sess-of-a", "budget")], topic=topic)
        event, _ = await asyncio.wait_for(received.get(), 10)
        assert event.data["reason"] == "budget"
        await produce_events(kafka_settings, [directive("", "someone-else")], topic=topic)
        # a poison record on the control topic is skipped, not fatal
        await produce_raw(kafka_settings, topic, b"not an event", headers=[])
        await produce_events(kafka_settings, [directive("agent-a", "last")], topic=topic)
        event, _ = await asyncio.wait_for(received.get(), 10)
        assert event.session_id == "last"
        assert received.empty()
        assert running(listener)
    assert not running(listener)
    # received directives are local: never shipped back to Kafka
    assert [e.type for e in publisher.events] == [EventType.TOOL_CALLED]
    assert sum(1 for e in bus.history if e.type == EventType.CONTROL_AGENT_PAUSED) == 7
    counts = {
        s.labels["outcome"]: s.value
        for m in listener.registry.collect()
        for s in m.samples
        if s.name == "agentstream_control_directives_total"
    }
    assert counts == {"delivered": 7, "ignored": 6, "malformed": 1}
    latencies.sort()
    logger.info("directive -> local handler latency: %s", [f"{x * 1000:.0f} ms" for x in latencies])


async def test_directives_published_before_start_are_not_replayed(
    kafka_settings: KafkaSettings,
) -> None:
    """Several directives in one batch (the budget service sends a batch's at once): the
    embedded broker's ListOffsets answer stops after the batch's first record, and a pod that
    started later was paused by the others."""
    topic = kafka_settings.routing().control
    old = [directive("agent-a", "old") for _ in range(5)]  # one session: one partition, one batch
    await produce_events(kafka_settings, old, topic=topic)
    received: list[Event] = []
    arrived = asyncio.Event()

    def guard(event: Event) -> None:
        received.append(event)
        arrived.set()

    bus = EventBus(agent_id="agent-a")
    bus.subscribe("control.*", guard)
    listener = await bus.enable_control(kafka_settings)
    try:
        await produce_events(kafka_settings, [directive("agent-a", "new")], topic=topic)
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        await bus.close()
    assert [e.session_id for e in received] == ["new"]
    assert not running(listener)


async def test_missing_control_topic_is_a_clear_error(kafka_bootstrap: str) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix="no-such-prefix-x")
    bus = EventBus(agent_id="a", control=ControlListener(settings))
    with pytest.raises(ConfigurationError, match=r"no-such-prefix-x\.control"):
        await bus.start()


async def test_a_broker_refusing_the_pod_or_not_answering_is_a_clear_error(
    sasl_broker: str,
) -> None:
    """Before, aiokafka's own error came out of ``bus.start()`` ("Unable to bootstrap", or a
    bare ``KeyError: 'v'`` for refused SCRAM credentials), its consumer left unstopped."""
    refused = KafkaSettings(
        bootstrap_servers=sasl_broker,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="agent",
        sasl_plain_password="not-known",
    )
    bus = EventBus(agent_id="a", control=ControlListener(refused))
    with pytest.raises(ConfigurationError, match="refused SASL authentication as 'agent'"):
        await bus.start()
    nobody = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    bus = EventBus(agent_id="a", control=ControlListener(nobody))
    with pytest.raises(BrokerUnavailableError, match="none answered"):
        await bus.start()


async def test_closing_the_bus_after_its_broker_died_does_not_raise(
    broker_factory: type[EmbeddedBroker], unique_name: str, recording: type[RecordingPublisher]
) -> None:
    """The agent's ``await bus.close()`` with the broker gone: the listener's consumer cannot
    say goodbye, and the agent must not get aiokafka's CancelledError for it."""
    broker = broker_factory()
    broker.start()
    await broker.wait_ready()
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=unique_name,
        retry_backoff_ms=2000,  # stopping finds the fetcher in its retry wait, as after an outage
    )
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=1))
    listener = ControlListener(settings)
    bus = EventBus(recording(), agent_id="agent-a", control=listener)
    await bus.start()
    assert listener.running
    broker.stop()
    await asyncio.sleep(1)  # the fetcher fails and waits to retry
    consumer = listener._consumer
    assert consumer is not None
    await asyncio.wait_for(bus.close(), 30)
    assert not listener.running
    assert consumer._client._sync_task is None, "its metadata task would reconnect forever"


async def test_a_record_the_client_cannot_parse_sets_its_partition_aside_only(
    kafka_settings: KafkaSettings,
    recording: type[RecordingPublisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a header name that is not UTF-8 raised UnicodeDecodeError out of getmany: the listener
    # task ended without a word, and no directive reached the pod any more
    listener = ControlListener(kafka_settings)
    bus = EventBus(recording(), agent_id="agent-a", control=listener)
    received: asyncio.Queue[Event] = asyncio.Queue()
    bus.subscribe(EventType.CONTROL_AGENT_PAUSED, received.put)
    topic = kafka_settings.routing().control
    session = next(f"s{i}" for i in range(100) if partition_for(f"s{i}".encode(), 4) != 0)
    async with bus:
        await produce_corrupt_batch(kafka_settings, topic, 0, damage="header_name")
        await produce_events(kafka_settings, [directive("agent-a", session)], topic=topic)
        event = await asyncio.wait_for(received.get(), 20)
        assert event.session_id == session and listener.running
    assert f"control listener: cannot read {topic}[0] at offset" in caplog.text


async def test_a_control_topic_created_again_is_read_from_its_start(
    broker_factory: type[EmbeddedBroker], unique_name: str
) -> None:
    """The embedded broker restarted (it keeps records in memory) and the topic was made
    again: the listener kept reading at offset 5 of a log that started at 0 again, deaf to
    the directives until the log grew past it (and without a line: aiokafka retries the
    connection itself)."""
    broker = broker_factory()
    broker.start()
    await broker.wait_ready()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=unique_name)
    topics = (settings.admin_options(), settings.routing(), TopicSpec(partitions=1))
    await ensure_topics(*topics)
    topic = settings.routing().control
    await produce_events(settings, [directive("agent-a", f"before-{i}") for i in range(5)], topic)
    received: list[str] = []
    three = asyncio.Event()

    def guard(event: Event) -> None:
        received.append(event.session_id)
        if len(received) == 3:
            three.set()

    bus = EventBus(agent_id="agent-a")
    bus.subscribe("control.*", guard)
    await bus.enable_control(settings)
    try:
        broker.stop()
        broker = broker_factory(broker.port)
        broker.start()
        await broker.wait_ready()
        await ensure_topics(*topics)
        after = [directive("agent-a", f"after-{i}") for i in range(3)]
        await produce_events(settings, after, topic)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(three.wait(), 30)
    finally:
        await bus.close()
    assert received == ["after-0", "after-1", "after-2"]
