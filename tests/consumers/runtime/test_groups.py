"""Group behaviour in-process: rebalances between instances, DLQ outages, lag."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from typing import Any

from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import TopicPartition
from support.produce import produce_events
from support.runtime import (
    committed_offsets,
    read_records,
    running_consumer,
    service_settings,
    wait_until,
)
from support.samples import sample_event

from agentstream.consumers.runtime import EventConsumer, Record
from agentstream.schemas import DeadLetter, Event, new_event_id
from agentstream.schemas.settings import KafkaSettings


def _events(count: int, sessions: int) -> list[Event]:
    return [
        Event(
            event_id=new_event_id(),
            type="tool.called",
            session_id=f"s{i % sessions}",
            seq=i,
            data={"name": "n"},
        )
        for i in range(count)
    ]


async def test_a_second_instance_takes_partitions_with_hooks_and_no_loss(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings, session_timeout_ms=6000, heartbeat_interval_ms=500)
    handled: Tally[str] = Tally()
    hooks: list[tuple[str, str, int]] = []

    def build(label: str) -> EventConsumer:
        consumer = EventConsumer(settings, service="shared")

        @consumer.subscribe("tool.called")
        async def handle(event: Event) -> None:
            handled[event.event_id] += 1
            await asyncio.sleep(0.002)

        @consumer.on_assigned
        async def assigned(partitions: frozenset[TopicPartition]) -> None:
            hooks.append((label, "assigned", len(partitions)))

        @consumer.on_revoked
        async def revoked(partitions: frozenset[TopicPartition]) -> None:
            hooks.append((label, "revoked", len(partitions)))

        return consumer

    first, second = build("a"), build("b")
    events = _events(300, sessions=16)
    async with running_consumer(first):
        await produce_events(settings, events[:150])
        async with running_consumer(second):
            await produce_events(settings, events[150:])
            await wait_until(lambda: set(handled) == {e.event_id for e in events}, timeout=30)
            rebalances = first.registry.get_sample_value(
                "agentstream_consumer_rebalances_total", {"service": "shared"}
            )
            assert rebalances is not None and rebalances >= 2  # joined, then shared
            held = len(first.committed_offsets()) + len(second.committed_offsets())
            assert held <= 4
        # The second instance left: the first takes everything back.
        await wait_until(lambda: hooks[-1] == ("a", "assigned", 4), timeout=20, what=str(hooks))
    assert ("a", "revoked", 4) in hooks, "the first instance gave its partitions up cleanly"
    assert any(h[0] == "b" and h[1] == "assigned" and 0 < h[2] < 4 for h in hooks), hooks
    committed = await committed_offsets(settings, settings.group_for("shared"))
    assert sum(committed.values()) == len(events), "everything committed, nothing skipped"


async def test_a_dlq_outage_keeps_the_record_uncommitted_and_other_partitions_going(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="outage")
    handled: list[Record] = []

    @consumer.subscribe("tool.called")
    async def handle(event: Event, record: Record) -> None:
        if event.data.get("poison"):
            raise DeadLetter("poison")
        handled.append(record)

    poison = Event(type="tool.called", session_id="s0", data={"name": "n", "poison": 1})
    others = _events(40, sessions=12)
    async with running_consumer(consumer):
        producer: Any = consumer._producer
        real_send = producer.send_and_wait
        outage = True

        async def flaky_send(topic: str, *args: Any, **kwargs: Any) -> Any:
            if outage and topic == settings.routing().dlq:
                raise KafkaConnectionError("simulated DLQ outage")
            return await real_send(topic, *args, **kwargs)

        producer.send_and_wait = flaky_send
        await produce_events(settings, [poison, *others])

        def dlq_errors() -> float:
            value = consumer.registry.get_sample_value(
                "agentstream_consumer_dead_letter_errors_total", {"service": "outage"}
            )
            return value or 0.0

        await wait_until(lambda: dlq_errors() >= 3, what="DLQ publish retried")
        records = await read_records(settings, settings.routing().events, len(others) + 1)
        partition_of = {r.key: r.partition for r in records}
        poison_tp = TopicPartition(settings.routing().events, partition_of[b"s0"])
        elsewhere = {
            e.event_id for e in others if partition_of[e.session_id.encode()] != poison_tp.partition
        }
        assert elsewhere, "every session landed on the poison's partition: nothing to compare"
        await wait_until(
            lambda: {r.event.event_id for r in handled} >= elsewhere,
            what="other partitions processed",
        )
        committed = await committed_offsets(settings, consumer.group_id)
        assert committed.get(poison_tp, 0) == 0, "the record waiting for the DLQ was committed"
        outage = False
        [letter] = await read_records(settings, settings.routing().dlq, 1)
        assert dict(letter.headers)["agentstream.errors.reason"] == b"poison"
        await wait_until(lambda: len(handled) == len(others))

        async def all_committed() -> bool:
            offsets = await committed_offsets(settings, consumer.group_id)
            return sum(offsets.values()) == len(others) + 1

        await wait_until(all_committed)


async def test_lag_is_high_watermark_minus_committed(kafka_settings: KafkaSettings) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="lagging")
    gate = asyncio.Event()
    handled: list[Record] = []

    @consumer.subscribe("tool.called")
    async def handle(event: Event, record: Record) -> None:
        await gate.wait()
        handled.append(record)

    events = [sample_event("tool.called", i) for i in range(10)]  # one session
    async with running_consumer(consumer):
        await produce_events(settings, events)

        def lags() -> dict[str, float]:
            return {
                s.labels["partition"]: s.value
                for metric in consumer.registry.collect()
                if metric.name == "agentstream_consumer_lag"
                for s in metric.samples
                if s.labels["topic"] == settings.routing().events
            }

        await wait_until(lambda: 10.0 in lags().values(), what="lag of 10 while blocked")
        gate.set()
        await wait_until(lambda: len(handled) == 10)
        await wait_until(lambda: set(lags().values()) == {0.0}, what="lag back to 0")


async def test_lag_counts_every_produce_batch_and_goes_on_while_paused(
    kafka_settings: KafkaSettings,
) -> None:
    """Several produce batches on one partition: the lag is the fetch responses' high watermark
    - committed (the embedded broker's ListOffsets would say the last batch's base offset + 1).
    A partition paused by backpressure is not fetched: its lag then follows ListOffsets."""
    # Paused only once the fifth batch is fetched too (20 >= 19; 16 < 19), whether batches four
    # and five come in one fetch or two: the fetch response then says 20 either way.
    settings = service_settings(kafka_settings, max_buffered_records=19)
    consumer = EventConsumer(settings, service="lag-batches")
    gate = asyncio.Event()
    handled: list[int] = []

    @consumer.subscribe("tool.called")
    async def handle(event: Event) -> None:
        await gate.wait()
        handled.append(event.seq)

    def lag() -> float:
        values = [
            s.value
            for metric in consumer.registry.collect()
            if metric.name == "agentstream_consumer_lag"
            for s in metric.samples
            if s.labels["topic"] == settings.routing().events and s.value
        ]
        return max(values, default=0.0)

    seq = iter(range(1_000))

    async def batches(count: int) -> None:
        for _ in range(count):  # one session: one partition; each call is its own batch
            await produce_events(
                settings, [sample_event("tool.called", next(seq)) for _ in range(4)]
            )

    async with running_consumer(consumer):
        await batches(3)
        await wait_until(lambda: lag() == 12.0, what="lag of all three batches")
        await batches(2)  # 20 buffered >= 19: the partition is paused
        paused = "agentstream_consumer_paused_partitions"
        await wait_until(
            lambda: consumer.registry.get_sample_value(paused, {"service": "lag-batches"}) == 1
        )
        await wait_until(lambda: lag() == 20.0, what="lag of five batches")
        await batches(2)  # not fetched while paused
        await wait_until(lambda: lag() >= 25.0, what="lag from ListOffsets while paused")
        gate.set()
        await wait_until(lambda: len(handled) == 28)
        await wait_until(lambda: lag() == 0.0, what="lag back to 0")


async def test_companion_consumers_share_metrics_readiness_and_health(
    kafka_settings: KafkaSettings,
) -> None:
    """A service running two consumer groups: both in one registry, readiness and health."""
    from prometheus_client import CollectorRegistry

    settings = service_settings(kafka_settings)
    registry = CollectorRegistry()
    main = EventConsumer(settings, service="main", registry=registry)
    side = EventConsumer(settings, service="side", registry=registry)
    seen: list[str] = []

    @main.subscribe("tool.*")
    async def on_tool(event: Event) -> None:
        seen.append(event.type)

    @side.subscribe("llm.*")
    async def on_llm(event: Event) -> None:
        seen.append(event.type)

    main.add_companion(side)
    async with running_consumer(side):
        assert not ready(main), "ready only when the companion is ready too"
        async with running_consumer(main):
            assert ready(main) and main.healthy
            await produce_events(
                settings, [sample_event("tool.called", 0), sample_event("llm.token", 1)]
            )
            await wait_until(lambda: sorted(seen) == ["llm.token", "tool.called"])
            sample = registry.get_sample_value
            for service, kind in (("main", "tool.called"), ("side", "llm.token")):
                labels = {"service": service, "type": kind, "outcome": "consumed"}
                assert sample("agentstream_consumer_records_total", labels) == 1
            lagging = {
                s.labels["service"]
                for family in registry.collect()
                if family.name == "agentstream_consumer_lag"
                for s in family.samples
            }
            assert lagging == {"main", "side"}
            await side.stop()
            assert not main.healthy, "a stopped companion makes the service unhealthy"


def ready(consumer: EventConsumer) -> bool:
    return consumer.ready
