"""The budget service on a real broker, in process: signals once, state restored."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from support.budget import llm, read_events, turn
from support.produce import produce_events
from support.runtime import committed_offsets, running_consumer, wait_until

from agentstream.consumers.budget.accounting import Level, signal_event_id
from agentstream.consumers.budget.changelog import (
    changelog_topic,
    read_states,
    repartition_topic,
)
from agentstream.consumers.budget.config import Dimension
from agentstream.consumers.budget.service import SERVICE, BudgetService, BudgetSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings

CONFIG = """
[session]
tokens = 1000
rounds = 3

[agent_day]
tokens = 2000
"""


def budget_settings(base: KafkaSettings, config: Path, **overrides: Any) -> BudgetSettings:
    fields: dict[str, Any] = {
        "bootstrap_servers": base.bootstrap_servers,
        "topic_prefix": base.topic_prefix,
        "linger_ms": 1,
        "commit_interval_ms": 100,
        "handler_retries": 2,
        "handler_retry_backoff_ms": 1,
        "handler_retry_max_backoff_ms": 5,
        "drain_timeout_ms": 10_000,
        "budget_config": config,
        "budget_batch_wait_ms": 5,
        **overrides,
    }
    return BudgetSettings(**fields)


def three_sessions() -> list[Event]:
    """Three sessions of one agent (on different partitions): 800 tokens, 2 rounds each."""
    events = []
    for s in ("s-a", "s-b", "s-c"):
        for r in range(2):
            events.append(turn(r, session=s, seconds=r))
            events.append(llm(200, 200, session=s, seconds=r + 0.5))
    return events


async def drained(settings: BudgetSettings, service: BudgetService, group: str) -> bool:
    """Both groups committed every record of their input topics."""
    ends = {
        **await _ends(settings, settings.routing().events),
        **await _ends(settings, repartition_topic(settings.topic_prefix)),
    }
    committed = {
        **await committed_offsets(settings, group, [settings.routing().events]),
        **await committed_offsets(
            settings, f"{group}.repartition", [repartition_topic(settings.topic_prefix)]
        ),
    }
    return all(committed.get(tp, 0) >= end for tp, end in ends.items() if end > 0)


async def _ends(settings: KafkaSettings, topic: str) -> dict[Any, int]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(**settings.client_options())
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def test_warning_then_exceeded_once_each_across_partitions(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(kafka_settings, config)
    consumer = EventConsumer(settings, service=SERVICE.name)
    events = three_sessions()
    async with SERVICE.setup(consumer, settings) as service:
        assert isinstance(service, BudgetService)
        async with running_consumer(consumer):
            await wait_until(lambda: service.repartition.ready, what="repartition consumer ready")
            await produce_events(settings, events)
            await wait_until(
                lambda: drained(settings, service, consumer.group_id), what="both stages drained"
            )
    alerts = await read_events(settings, settings.routing().alerts)
    ids = collections.Counter(a.event_id for a in alerts)
    assert all(n == 1 for n in ids.values()), ids
    expected = {
        signal_event_id(f"session:{s}", Dimension.TOKENS, Level.WARNING)
        for s in ("s-a", "s-b", "s-c")
    } | {
        signal_event_id("agent:agent-a:2026-11-21", Dimension.TOKENS, Level.WARNING),
        signal_event_id("agent:agent-a:2026-11-21", Dimension.TOKENS, Level.EXCEEDED),
    }
    assert set(ids) == expected
    exceeded = next(a for a in alerts if a.type == "budget.exceeded")
    assert exceeded.data["scope"] == "agent:agent-a:2026-11-21"
    assert exceeded.data["dimension"] == "tokens"
    assert exceeded.data["limit"] == 2000
    assert exceeded.data["used"] >= 2000
    assert exceeded.data["tokens_used"] == exceeded.data["used"]
    assert exceeded.source == "agentstream-budget"
    assert exceeded.agent_id == "agent-a"

    states = await read_states(settings)
    agent = states["agent:agent-a:2026-11-21"]
    assert agent is not None
    assert (agent.tokens, agent.rounds) == (2400, 6)
    for s in ("s-a", "s-b", "s-c"):
        session = states[f"session:{s}"]
        assert session is not None
        assert (session.tokens, session.rounds, session.pending) == (800, 2, [])
    assert changelog_topic(settings.topic_prefix) in (await _topics(settings))


async def _topics(settings: KafkaSettings) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.admin_options())
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()
