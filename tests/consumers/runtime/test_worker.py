"""The partition worker alone, fed fetched records without a broker: handler calls, batch
deadlines, handler timing and offsets."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry
from support.runtime import wait_until

from agentstream.consumers.runtime import Record, ServiceSettings
from agentstream.consumers.runtime.dispatch import Dispatcher
from agentstream.consumers.runtime.metrics import ConsumerMetrics
from agentstream.consumers.runtime.partition import YIELD_EVERY, PartitionWorker
from agentstream.consumers.runtime.subscriptions import (
    SubscriptionTable,
    make_batch_subscription,
    make_subscription,
)
from agentstream.schemas import Event, encode_event, event_headers
from agentstream.schemas.codec import record_key

TP = TopicPartition("t.events", 0)


def fetched(count: int) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for offset in range(count):
        event = Event(type="tool.called", session_id="s", seq=offset, data={"name": "x"})
        value = encode_event(event)
        key, headers, size = record_key(event), tuple(event_headers(event)), len(value)
        topic, partition = TP.topic, TP.partition
        raw = ConsumerRecord(topic, partition, offset, 0, 0, key, value, None, 1, size, headers)
        out.append(raw)
    return out


def worker(table: SubscriptionTable, registry: CollectorRegistry) -> PartitionWorker:
    dispatcher = Dispatcher(
        settings=ServiceSettings(),
        service="svc",
        group_id="g",
        dlq_topic="t.dlq",
        metrics=ConsumerMetrics(registry, "svc"),
        producer=lambda: None,  # type: ignore[arg-type,return-value]  # no dead letters here
    )
    return PartitionWorker(TP, table, dispatcher)


async def test_a_due_batch_is_flushed_between_slow_event_handler_calls() -> None:
    handled: list[int] = []
    flushed: list[tuple[int, int]] = []  # (handled when the batch came, batch size)

    async def slow(event: Event) -> None:
        await asyncio.sleep(0.02)
        handled.append(event.seq)

    async def sink(records: list[Record]) -> None:
        flushed.append((len(handled), len(records)))

    table = SubscriptionTable()
    table.add(make_subscription("*", slow, None))
    table.add(make_batch_subscription("*", sink, None, max_records=1_000, max_wait_ms=50))
    registry = CollectorRegistry()
    unit = worker(table, registry)
    unit.gate.set()
    unit.feed(fetched(20))
    await wait_until(lambda: len(handled) == 20 and sum(size for _, size in flushed) == 20)
    assert handled == list(range(20))  # in offset order, one at a time
    # The first batch went out once it was due, while the event handler still had records.
    assert flushed[0][0] < 20 and flushed[0][1] < 20
    assert unit.offsets.committable() == 20
    assert unit.offsets.outstanding == 0
    await unit.stop(1)
    count = registry.get_sample_value(
        "agentstream_consumer_handler_duration_seconds_count",
        {"service": "svc", "handler": slow.__qualname__},
    )
    assert count == 20


async def test_handlers_get_the_record_only_when_they_take_it() -> None:
    seen: list[tuple[str, int]] = []

    async def with_record(event: Event, record: Record) -> None:
        seen.append(("with", record.offset))

    async def event_only(event: Event) -> None:
        seen.append(("event", event.seq))

    for handler in (with_record, event_only):
        table = SubscriptionTable()
        table.add(make_subscription("tool.*", handler, None))
        unit = worker(table, CollectorRegistry())
        unit.gate.set()
        unit.feed(fetched(3))
        offsets = unit.offsets
        await wait_until(lambda: offsets.committable() == 3)  # noqa: B023 - awaited here
        await unit.stop(1)
    assert seen == [("with", 0), ("with", 1), ("with", 2), ("event", 0), ("event", 1), ("event", 2)]


async def test_handlers_that_never_await_still_let_the_loop_run_between_chunks() -> None:
    """A backlog drained by handlers that complete without awaiting (the fleet metrics, a
    no-op): every YIELD_EVERY records the worker gives the loop back, so the fetch loop can
    resume paused partitions and send the next fetch while work is still queued."""
    ticks = 0
    seen_at: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def counting(event: Event) -> None:  # never awaits
        seen_at.append(ticks)

    async def sink(records: list[Record]) -> None:  # never awaits either
        seen_at.extend(ticks for _ in records)

    for subscription in (
        make_subscription("*", counting, None),
        make_batch_subscription("*", sink, None, max_records=250, max_wait_ms=10_000),
    ):
        seen_at.clear()
        table = SubscriptionTable()
        table.add(subscription)
        unit = worker(table, CollectorRegistry())
        unit.feed(fetched(2_000))
        tick = asyncio.create_task(ticker())
        unit.gate.set()
        await wait_until(lambda: len(seen_at) == 2_000)
        tick.cancel()
        await unit.stop(1)
        # Without the yields the whole backlog ran in one stretch: one tick value seen.
        assert len(set(seen_at)) >= 2_000 // YIELD_EVERY, sorted(set(seen_at))


def offsets_of(records: list[Record]) -> list[int]:
    return [record.offset for record in records]


async def test_a_log_that_restarts_below_the_expected_offset_is_processed_as_new_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The topic deleted and created again, or truncated, and the client reset its position
    (auto_offset_reset): offsets start again below those seen. They were dropped as a
    redelivery ("fetched again, ignored"), silently on a broker that never answers
    OFFSET_OUT_OF_RANGE, and the committed offset never went back."""
    handled: list[int] = []
    flushed: list[list[int]] = []

    async def each(event: Event, record: Record) -> None:
        handled.append(record.offset)

    async def sink(records: list[Record]) -> None:
        await asyncio.sleep(0.05)  # the old log's last batch is still being written
        flushed.append(offsets_of(records))

    table = SubscriptionTable()
    table.add(make_subscription("*", each, None))
    table.add(make_batch_subscription("*", sink, None, max_records=25, max_wait_ms=20))
    unit = worker(table, CollectorRegistry())
    unit.gate.set()
    unit.feed(fetched(30))
    await wait_until(lambda: len(handled) == 30)
    unit.feed(fetched(40))  # the new log, from offset 0
    unit.feed(fetched(45)[40:])  # and what follows it
    assert unit.next_offset == 45 and unit.buffered >= 45
    await wait_until(lambda: sum(map(len, flushed)) == 75)
    assert handled == list(range(30)) + list(range(45))
    assert [o for batch in flushed for o in batch] == list(range(30)) + list(range(45))
    assert all(batch == sorted(batch) for batch in flushed)  # no batch mixes the two logs
    assert unit.offsets.committable() == 45 and unit.buffered == 0
    await unit.stop(1)
    (line,) = [r.getMessage() for r in caplog.records if "restarted" in r.getMessage()]
    assert line.startswith("t.events[0]: the log restarted at offset 0, below the 30 expected")
