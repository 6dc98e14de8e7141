"""The issue's outage check: the broker dies mid-stream, events keep coming for 10 s, a new
broker comes up on the same address, and every event arrives, in order per session.

The broker's address is a TCP forwarder (the broker advertises it): the restarted embedded
broker comes back empty, and it acknowledges records for topics it does not have yet and
then loses them (seen with Tansu 0.6), so the test creates the topics on the new broker
directly before its address comes back to life. Apache Kafka needs no such care.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from support.disk import files_limited_to
from support.runtime import wait_until
from support.samples import sample_event

from agentstream.consumers.broker import EmbeddedBroker, free_port
from agentstream.producer.publisher import KafkaPublisher
from agentstream.schemas import Event
from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.codec import decode_record
from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.settings import KafkaSettings

OUTAGE_SECONDS = float(os.environ.get("AGENTSTREAM_TEST_OUTAGE_SECONDS", "10"))
MAX_QUEUE = 2_000
PARTITIONS = 4


def make_events(start: int, n: int) -> list[Event]:
    out = []
    for i in range(start, start + n):
        event = sample_event("tool.called", i)
        event.session_id = f"session-{i % 13:02d}"
        out.append(event)
    return out


def check_order(records: list[ConsumerRecord[bytes, bytes]]) -> set[str]:
    """Each session on its partition, in publish (seq) order; returns the event ids."""
    per_session: dict[str, list[int]] = defaultdict(list)
    where: dict[int, tuple[int, int]] = {}
    ids = set()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = decode_record(record.value, record.headers)
        assert record.partition == partition_for(event.session_id.encode(), PARTITIONS)
        per_session[event.session_id].append(event.seq)
        where[event.seq] = (record.partition, record.offset)
        ids.add(event.event_id)
    for session, seqs in per_session.items():
        wrong = [(a, b) for a, b in itertools.pairwise(seqs) if a >= b]
        first = [(s, where[s]) for s in wrong[0]] if wrong else []
        assert not wrong, f"{session}: {len(wrong)} inversions or repeats, first {first}"
    return ids


async def broker_behind_proxy(
    broker_factory: type[EmbeddedBroker], tcp_proxy: Callable[[int, int], Any]
) -> tuple[EmbeddedBroker, Any, int]:
    """A broker advertising a forwarder's address (which tests stop and start): the broker,
    the forwarder and its port."""
    address = free_port()
    broker = broker_factory(advertised_port=address)
    broker.start()
    proxy = tcp_proxy(address, broker.port)
    await broker.wait_ready()
    return broker, proxy, address


async def topics_on(broker: EmbeddedBroker, prefix: str) -> KafkaSettings:
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix, linger_ms=1
    )
    await ensure_topics(
        settings.admin_options(), settings.routing(), TopicSpec(partitions=PARTITIONS)
    )
    return settings


@pytest.mark.slow
async def test_outage_every_event_arrives_publish_never_blocks_memory_bounded(
    tmp_path: Path,
    broker_factory: type[EmbeddedBroker],
    tcp_proxy: Callable[[int, int], Any],
    create_topics: Callable[[int, list[str], int], Awaitable[None]],
    consume: Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]],
) -> None:
    address = free_port()
    first = broker_factory(advertised_port=address)
    first.start()
    proxy = tcp_proxy(address, first.port)
    publisher: KafkaPublisher | None = None
    try:
        await first.wait_ready()
        settings = KafkaSettings(
            bootstrap_servers=first.bootstrap_servers, topic_prefix="outage", linger_ms=1
        )
        routing = settings.routing()
        await ensure_topics(settings.admin_options(), routing, TopicSpec(partitions=PARTITIONS))
        publisher = KafkaPublisher(
            settings, spool_dir=tmp_path / "spool", max_queue_events=MAX_QUEUE, redact=None
        )
        before = make_events(0, 500)
        for event in before:
            publisher.publish(event)
        assert publisher.flush(30)
        seen_before = await consume(settings, routing.events, len(before))
        assert check_order(seen_before) == {e.event_id for e in before}

        # mid-stream: the publisher holds live connections to the broker that dies
        proxy.stop()
        first.stop()
        during: list[Event] = []
        slowest = 0.0
        deepest = 0
        deadline = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < deadline:
            for event in make_events(len(before) + len(during), 20):
                start = time.perf_counter()
                publisher.publish(event)
                slowest = max(slowest, time.perf_counter() - start)
                during.append(event)
            deepest = max(deepest, publisher.stats().in_memory)
            await asyncio.sleep(0.01)
        stats = publisher.stats()
        assert stats.spooled > 0, f"the outage should go to the disk spool: {stats}"
        assert sum(stats.dropped.values()) == 0, stats

        second = broker_factory(port=first.port, advertised_port=address)  # empty broker
        second.start()
        await create_topics(second.port, routing.all_topics(), PARTITIONS)
        tcp_proxy(address, second.port)  # the same address answers again
        assert await asyncio.to_thread(publisher.flush, 60), publisher.stats()
        assert publisher.stats().queue_depth == 0
        seen_after = await consume(settings, routing.events, len(during), timeout=30)
    finally:
        if publisher is not None:
            await asyncio.to_thread(publisher.close, 5)
    missing = {e.event_id for e in during} - check_order(seen_after)
    assert not missing, f"{len(missing)} of {len(during)} events published during the outage lost"
    # "never blocked": no network wait, which lasts the client's timeouts (seconds). Below
    # that, the worst call measures the machine (a garbage collection, a thread not scheduled
    # on a loaded 2-core box: 0.5 s seen with four test workers beside), not the publisher.
    assert slowest < 2.0, f"publish() took {slowest * 1000:.1f} ms at worst"
    assert deepest <= MAX_QUEUE


async def test_close_during_an_outage_keeps_every_event_for_the_next_process(
    tmp_path: Path,
    broker_factory: type[EmbeddedBroker],
    tcp_proxy: Callable[[int, int], Any],
    consume: Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]],
) -> None:
    broker, proxy, address = await broker_behind_proxy(broker_factory, tcp_proxy)
    settings = await topics_on(broker, "closing")
    routing = settings.routing()
    sent = make_events(0, 300)
    publisher = KafkaPublisher(settings, spool_dir=tmp_path, redact=None, spool_after_ms=60_000)
    try:
        for event in sent[:100]:
            publisher.publish(event)
        assert await asyncio.to_thread(publisher.flush, 30)
        proxy.stop()  # the broker keeps its data; its address goes dark
        for event in sent[100:]:
            publisher.publish(event)  # in memory and in flight, not yet spooled
        assert publisher.stats().spooled == 0
    finally:
        await asyncio.to_thread(publisher.close, 0.5)
    assert publisher.stats().spooled == 200  # close() put everything undelivered on disk

    tcp_proxy(address, broker.port)
    successor = KafkaPublisher(settings, spool_dir=tmp_path, redact=None)
    try:
        assert await asyncio.to_thread(successor.flush, 30)
    finally:
        await asyncio.to_thread(successor.close, 5)
    records = await consume(settings, routing.events, len(sent))
    ids = {decode_record(r.value, r.headers).event_id for r in records}
    assert ids == {e.event_id for e in sent}  # at-least-once: a duplicate would be allowed


async def test_a_disk_that_refuses_spool_writes_holds_events_in_memory_and_loses_none(
    tmp_path: Path,
    broker_factory: type[EmbeddedBroker],
    tcp_proxy: Callable[[int, int], Any],
    consume: Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, proxy, address = await broker_behind_proxy(broker_factory, tcp_proxy)
    settings = await topics_on(broker, "diskfull")
    routing = settings.routing()
    proxy.stop()  # the broker is away: events go to the spool, whose disk fills up
    sent = make_events(0, 300)
    publisher = KafkaPublisher(settings, spool_dir=tmp_path, redact=None, max_queue_events=1000)
    try:
        with files_limited_to(20_000):
            for event in sent:
                publisher.publish(event)
            await wait_until(
                lambda: publisher.stats().spool_write_errors > 0, what="a refused spool write"
            )
            stats = publisher.stats()
            assert 0 < stats.spooled < len(sent)
            assert sum(stats.dropped.values()) == 0, stats
            assert stats.spooled + stats.in_memory == len(sent)
        assert "cannot write to the spool" in caplog.text and "File too large" in caplog.text
        tcp_proxy(address, broker.port)  # the broker is back (and the disk has room)
        assert await asyncio.to_thread(publisher.flush, 30), publisher.stats()
        assert publisher.stats().in_memory_bytes == 0  # through the spool and back
    finally:
        await asyncio.to_thread(publisher.close, 5)
    records = await consume(settings, routing.events, len(sent))
    assert check_order(records) == {e.event_id for e in sent}
    assert len(records) == len(sent)
