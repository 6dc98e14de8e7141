"""The metrics service on the runtime against the real broker, in-process. (Two instances
splitting the partitions: test_prometheus.py, where Prometheus adds them up.)"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from support.metrics_service import fleet_traffic, metrics_service, metrics_settings
from support.produce import produce_events, produce_raw
from support.runtime import wait_until

from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.settings import KafkaSettings


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Sum of a family's samples matching ``labels``."""
    found = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


async def test_one_instance_counts_the_fleet(kafka_settings: KafkaSettings) -> None:
    settings = metrics_settings(kafka_settings, agent_labels="planner,writer")
    traffic = fleet_traffic(6)
    async with metrics_service(settings) as service:
        registry = service.registry
        await produce_raw(settings, settings.routing().events, b"\x00not json", key=b"k")
        await produce_events(settings, traffic.events)
        await wait_until(
            lambda: (
                total(registry, "agentstream_events_total") == len(traffic.events)
                and total(registry, "agentstream_consumer_records_total", outcome="dead_lettered")
                == 1
            ),
            what="every event counted, the undecodable record dead-lettered",
        )
        events = "agentstream_events_total"
        assert total(registry, events, type="tool.called") == traffic.by_type()["tool.called"]
        assert total(registry, events, agent="planner") == traffic.by_agent()["planner"]
        assert total(registry, events, agent="other") == traffic.by_agent()["researcher"]
        assert total(registry, events, type="llm.token") == 6  # from the tokens topic
        calls = "agentstream_tool_calls_total"
        assert total(registry, calls, outcome="success") == 12  # 6 tool.result + 6 audit
        assert total(registry, calls, outcome="error") == 12
        assert total(registry, "agentstream_tool_duration_seconds_count") == 6 * 3
        assert total(registry, "agentstream_llm_call_duration_seconds_sum") == pytest.approx(4.8)
        assert total(registry, "agentstream_llm_tokens_total", kind="input") == 6 * 500
        assert total(registry, "agentstream_turns_total", stop_reason="guard_blocked") == 6
        assert total(registry, "agentstream_loop_events_total", kind="block") == 1
        assert total(registry, "agentstream_budget_events_total", level="exceeded") == 1
        assert total(registry, "agentstream_active_sessions") == 6
        assert total(registry, "agentstream_pipeline_delay_seconds_count") == len(traffic.events)
        # The runtime's own metrics share the registry (/metrics serves both).
        consumed = total(registry, "agentstream_consumer_records_total", outcome="consumed")
        assert consumed == len(traffic.events)


async def test_a_rebalance_keeps_the_sessions_of_the_partitions_kept(
    kafka_settings: KafkaSettings,
) -> None:
    """A second instance joining revoked every partition of the first, which then forgot the
    active sessions of all of them, those it was assigned back included: the sum over the
    instances read 0 until the sessions' next events."""
    settings = metrics_settings(kafka_settings)
    events = settings.routing().events
    traffic = fleet_traffic(12)

    def held(consumer: EventConsumer) -> set[int]:
        client = consumer._consumer
        return (
            {tp.partition for tp in client.assignment() if tp.topic == events} if client else set()
        )

    async with metrics_service(settings) as first:
        await produce_events(settings, traffic.events)
        await wait_until(
            lambda: total(first.registry, "agentstream_events_total") == len(traffic.events),
            what="every event counted",
        )
        assert total(first.registry, "agentstream_active_sessions") == 12
        count = first.consumer.partition_count(events)
        assert count is not None
        async with metrics_service(settings) as second:
            await wait_until(
                lambda: (
                    held(first.consumer) | held(second.consumer) == set(range(count))
                    and not held(first.consumer) & held(second.consumer)
                ),
                what="the partitions split between the two instances",
            )
            kept = held(first.consumer)
            on_kept = sum(partition_for(s.encode(), count) in kept for s in traffic.sessions)
            assert 0 < on_kept < 12
            await wait_until(
                lambda: total(first.registry, "agentstream_active_sessions") == on_kept,
                what="the first instance still counting the sessions of the partitions it kept",
            )
