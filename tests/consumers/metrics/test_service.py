"""The metrics service on the runtime against the real broker: one instance, and two
instances splitting the partitions whose counts add up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.metrics_traffic import fleet_traffic
from support.produce import produce_events, produce_raw
from support.runtime import running_consumer, wait_until

from agentstream.consumers.metrics import FleetMetrics
from agentstream.consumers.metrics.service import SERVICE
from agentstream.consumers.metrics.settings import MetricsSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas.settings import KafkaSettings


def metrics_settings(base: KafkaSettings, **overrides: Any) -> MetricsSettings:
    return MetricsSettings(
        bootstrap_servers=base.bootstrap_servers,
        topic_prefix=base.topic_prefix,
        linger_ms=1,
        commit_interval_ms=100,
        handler_retries=1,
        handler_retry_backoff_ms=1,
        batch_max_wait_ms=20,
        **overrides,
    )


@contextlib.asynccontextmanager
async def metrics_service(settings: MetricsSettings) -> AsyncIterator[CollectorRegistry]:
    registry = CollectorRegistry()
    consumer = EventConsumer(settings, service=SERVICE.name, registry=registry)
    async with SERVICE.setup(consumer, settings) as fleet:
        assert isinstance(fleet, FleetMetrics)
        async with running_consumer(consumer):
            yield registry


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
    async with metrics_service(settings) as registry:
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
        assert total(registry, "agentstream_loop_signals_total", kind="block") == 1
        assert total(registry, "agentstream_budget_signals_total", level="exceeded") == 1
        assert total(registry, "agentstream_active_sessions") == 6
        assert total(registry, "agentstream_pipeline_delay_seconds_count") == len(traffic.events)
        # The runtime's own metrics share the registry (/metrics serves both).
        consumed = total(registry, "agentstream_consumer_records_total", outcome="consumed")
        assert consumed == len(traffic.events)


async def test_two_instances_split_the_partitions_and_add_up(
    kafka_settings: KafkaSettings,
) -> None:
    settings = metrics_settings(kafka_settings)
    traffic = fleet_traffic(24)
    async with metrics_service(settings) as first, metrics_service(settings) as second:
        registries = (first, second)

        def both(name: str, **labels: str) -> float:
            return sum(total(r, name, **labels) for r in registries)

        async def split() -> bool:
            owned = [total(r, "agentstream_consumer_assigned_partitions") for r in registries]
            return all(owned) and sum(owned) == 4 * 4  # events, tokens, alerts, control

        await wait_until(split, what="the partitions split between the two instances")
        await produce_events(settings, traffic.events)
        await wait_until(
            lambda: both("agentstream_events_total") == len(traffic.events),
            what="every event counted once over both instances",
        )
        assert all(total(r, "agentstream_events_total") for r in registries)
        for event_type, count in traffic.by_type().items():
            assert both("agentstream_events_total", type=event_type) == count, event_type
        assert both("agentstream_active_sessions") == len(traffic.sessions)
        # Each call's start and outcome met on the same instance (same session, partition).
        assert both("agentstream_tool_duration_seconds_count") == 24 * 3
        assert both("agentstream_unpaired_calls_total") == 0
