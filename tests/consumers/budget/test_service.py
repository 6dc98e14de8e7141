"""The budget service on a real broker, in process: signals once, state restored."""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from support.budget import budget_settings, drained, llm, read_events, tool, turn
from support.produce import produce_events, produce_raw
from support.runtime import running_consumer, wait_until

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.consumers.budget.accounting import Level, ScopeState, Signal, signal_event_id
from agentstream.consumers.budget.changelog import (
    ChangelogWriter,
    changelog_topic,
    ensure_budget_topics,
    read_states,
    repartition_topic,
    topic_shape,
)
from agentstream.consumers.budget.config import Dimension
from agentstream.consumers.budget.service import SERVICE, BudgetService, BudgetSettings
from agentstream.consumers.budget.signals import signal_event
from agentstream.consumers.runtime import EventConsumer
from agentstream.consumers.runtime.replay import partitions_of
from agentstream.schemas import Event, encode_event, event_headers
from agentstream.schemas.admin import TopicSpec, create_missing_topics, ensure_topics
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.settings import KafkaSettings

CONFIG = """
[session]
tokens = 1000
rounds = 3

[agent_day]
tokens = 2000
"""


def three_sessions() -> list[Event]:
    """Three sessions of one agent (on different partitions): 800 tokens, 2 rounds each."""
    events = []
    for s in ("s-a", "s-b", "s-c"):
        for r in range(2):
            events.append(turn(r, session=s, seconds=r))
            events.append(llm(200, 200, session=s, seconds=r + 0.5))
    return events


async def test_warning_then_exceeded_once_each_across_partitions(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(  # the events are of a fixed day: no age limit on directives
        kafka_settings, config, budget_pause_on_exceeded=True, budget_pause_max_age_s=0
    )
    consumer = EventConsumer(settings, service=SERVICE.name)
    events = three_sessions()
    async with SERVICE.setup(consumer, settings) as service:
        assert isinstance(service, BudgetService)
        assert consumer.topics() == [settings.routing().events], "no tokens/alerts/control"
        async with running_consumer(consumer):
            await wait_until(lambda: service.repartition.ready, what="repartition consumer ready")
            await produce_events(settings, events)
            await wait_until(
                lambda: drained(settings, consumer.group_id), what="both stages drained"
            )
            # the repartition group is in the service's /metrics and /readyz too
            assert consumer.ready and consumer.healthy
            sample = consumer.registry.get_sample_value
            consumed = {"type": "other", "outcome": "consumed"}  # budget.usage: not catalogued
            assert sample(
                "agentstream_consumer_records_total", {"service": "budget-repartition", **consumed}
            )
            lagged = {
                s.labels["topic"]
                for family in consumer.registry.collect()
                if family.name == "agentstream_consumer_lag"
                for s in family.samples
                if s.labels["service"] == "budget-repartition"
            }
            assert lagged == {f"{settings.topic_prefix}.budget-repartition"}
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

    directives = await read_events(settings, settings.routing().control)
    assert [(d.type, d.agent_id, d.data["finding_id"], d.data["service"]) for d in directives] == [
        ("control.agent.paused", "agent-a", exceeded.event_id, "budget")
    ]

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


async def test_budget_topics_follow_the_events_topic_and_leave_the_others_alone(
    kafka_settings: KafkaSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The service creates only its two topics, with the events topic's partition count (4
    here, not the default 6), and has nothing to say about the topics the operator made."""
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(kafka_settings, config)
    with caplog.at_level(logging.WARNING, logger="agentstream"):
        assert await ensure_budget_topics(settings) == 4
        assert await ensure_budget_topics(settings) == 4  # again: all exist
    assert [r.getMessage() for r in caplog.records if r.name.startswith("agentstream")] == []
    for topic in (changelog_topic(settings.topic_prefix), repartition_topic(settings.topic_prefix)):
        assert len(await partitions_of(settings, topic)) == 4


async def test_budget_topics_are_replicated_like_the_events_topic(
    broker_factory: type[EmbeddedBroker], unique_name: str
) -> None:
    """Before, the service created its changelog with one replica whatever the cluster: on
    three brokers, losing the one that held it lost the budgets. ``agentstream topics create
    --budget`` makes the same two topics ahead, for clusters where services may not create
    topics. (The embedded broker reports as many replicas as asked for, on its one node.)"""
    broker = broker_factory()
    broker.start()
    await broker.wait_ready()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=unique_name)
    spec = TopicSpec(partitions=3, replication_factor=3)
    await ensure_topics(settings.admin_options(), settings.routing(), spec)
    assert await ensure_budget_topics(settings) == 3
    for topic in (changelog_topic(unique_name), repartition_topic(unique_name)):
        assert await topic_shape(settings, topic) == (3, 3)
    ahead = f"{unique_name}x"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentstream.consumers.cli", "topics", "create", "--budget",
        "--bootstrap-servers", broker.bootstrap_servers, "--topic-prefix", ahead,
        "--partitions", "2", "--replication-factor", "3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().count("\tcreated") == 7
    for topic in (changelog_topic(ahead), repartition_topic(ahead)):
        assert await topic_shape(settings, topic) == (2, 3)


async def test_a_changelog_made_ahead_with_another_partition_count_is_refused(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Its partition p must hold the state of events partition p (4 here)."""
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(kafka_settings, config)
    topic = changelog_topic(settings.topic_prefix)
    compact = {"cleanup.policy": "compact"}
    await create_missing_topics(
        settings.admin_options(), [NewTopic(topic, 2, 1, topic_configs=compact)]
    )
    with pytest.raises(ConfigurationError) as refused:
        await ensure_budget_topics(settings)
    text = str(refused.value)
    assert f"expected topic {topic} with 4 partitions, it has 2: it holds the budgets" in text


@pytest.mark.parametrize(
    ("which", "wrong", "said"),
    [
        ("changelog", "delete", "a budget restored as zero"),
        ("repartition", "compact", "day budgets would count too little"),
    ],
)
async def test_budget_topics_made_with_the_wrong_cleanup_policy_are_refused(
    kafka_settings: KafkaSettings, tmp_path: Path, which: str, wrong: str, said: str
) -> None:
    """An operator made the topic ahead with the wrong policy. Before, the service used it:
    retention deleted the changelog's states (budgets back to zero at the next restore), or
    compaction dropped usage records of the repartition topic."""
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(kafka_settings, config)
    topic = (changelog_topic if which == "changelog" else repartition_topic)(settings.topic_prefix)
    await create_missing_topics(
        settings.admin_options(), [NewTopic(topic, 4, 1, topic_configs={"cleanup.policy": wrong})]
    )
    with pytest.raises(ConfigurationError) as refused:
        await ensure_budget_topics(settings)
    text = str(refused.value)
    assert f"expected topic {topic} with cleanup.policy=" in text and f"it has {wrong}" in text
    assert said in text and f"--entity-name {topic} --add-config cleanup.policy=" in text


async def test_a_session_split_over_partitions_by_another_producer_is_counted(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A session's usage on two partitions is counted in two session scopes, each under the
    limit: an exceeded budget nobody hears of. Now the split is counted."""
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(kafka_settings, config)
    consumer = EventConsumer(settings, service=SERVICE.name)
    first, second = llm(100, 100, session="split-1"), llm(100, 100, session="split-1", seconds=1)
    right = partition_for(b"split-1", 4)
    async with SERVICE.setup(consumer, settings) as service:
        assert isinstance(service, BudgetService)
        async with running_consumer(consumer):
            await wait_until(lambda: service.repartition.ready, what="repartition consumer ready")
            await produce_events(settings, [first])
            await produce_raw(
                settings,
                settings.routing().events,
                encode_event(second),
                key=None,  # a producer without keys
                headers=event_headers(second),
                partition=(right + 1) % 4,
            )
            await wait_until(
                lambda: drained(settings, consumer.group_id), what="both stages drained"
            )
            labels = {"service": "budget", "topic": settings.routing().events}
            misplaced = consumer.registry.get_sample_value(
                "agentstream_consumer_misplaced_events_total", labels
            )
            assert misplaced == 1


async def test_an_event_stamped_far_from_its_record_is_timed_by_the_record(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A Go producer's zero time and a year 9999 in one session: the session lasted eight
    thousand years, its wall-time budget was exceeded (the agent paused) and the usage went to
    days 0001-01-01 and 9999-12-31. Now both are timed by their records."""
    config = tmp_path / "budget.toml"
    config.write_text("[session]\nwall_time_s = 3600\n\n[agent_day]\ntool_calls = 100\n")
    settings = budget_settings(kafka_settings, config)
    consumer = EventConsumer(settings, service=SERVICE.name)
    now = datetime.now(UTC).replace(microsecond=0)
    normal = [turn(0, session="s-skew", at=now), tool(session="s-skew", at=now, seconds=1)]
    bogus = [
        tool(session="s-skew", at=datetime(1, 1, 1, tzinfo=UTC)),
        tool(session="s-skew", at=datetime(9999, 12, 31, tzinfo=UTC)),
    ]
    async with SERVICE.setup(consumer, settings) as service:
        assert isinstance(service, BudgetService)
        async with running_consumer(consumer):
            await wait_until(lambda: service.repartition.ready, what="repartition consumer ready")
            await produce_events(settings, normal)
            for event in bogus:  # their records stamped now, by the client
                await produce_raw(
                    settings,
                    settings.routing().events,
                    encode_event(event),
                    key=b"s-skew",
                    headers=event_headers(event),
                )
            await wait_until(
                lambda: drained(settings, consumer.group_id), what="both stages drained"
            )
            labels = {"service": "budget", "topic": settings.routing().events}
            skewed = consumer.registry.get_sample_value(
                "agentstream_consumer_clock_skewed_events_total", labels
            )
            assert skewed == 2
    states = await read_states(settings)
    session = states["session:s-skew"]
    assert session is not None and session.tool_calls == 3
    assert 0 <= session.used(Dimension.WALL_TIME_S) < 600
    days = sorted(scope for scope in states if scope.startswith("agent:"))
    assert all(scope.rsplit(":", 1)[1] >= now.date().isoformat() for scope in days), days
    assert not any(scope.endswith(("0001-01-01", "9999-12-31")) for scope in days), days
    alerts = await read_events(settings, settings.routing().alerts)
    assert [a.type for a in alerts] == []


async def test_budget_topics_wait_for_the_events_topic(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The budget service started before `topics create` exited ('expected the events topic
    to exist'), and a pod started with the topics Job crash-looped: it waits, as every
    service now waits for its topics."""
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    base = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"late{uuid.uuid4().hex[:8]}"
    )
    settings = budget_settings(base, config)
    with caplog.at_level(logging.WARNING, logger="agentstream"):
        task = asyncio.create_task(ensure_budget_topics(settings))
        await wait_until(lambda: "waiting for topics" in caplog.text, what="waiting")
        assert not task.done()
        await ensure_topics(base.admin_options(), base.routing(), TopicSpec(partitions=3))
        assert await asyncio.wait_for(task, 30) == 3
    assert len(await partitions_of(settings, changelog_topic(settings.topic_prefix))) == 3


async def test_signals_left_pending_by_a_crash_are_published_once_on_restore(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """The crash window between the changelog write and the alert: the state says two
    signals are pending, one of them reached the alerts topic. The next owner publishes only
    the other, then clears the outbox."""
    settings = await with_budget_topics(kafka_settings, tmp_path)
    session = "s-crash"
    warning, exceeded = (
        Signal(
            scope=f"session:{session}",
            dimension=Dimension.ROUNDS,
            level=level,
            used=3,
            limit=3,
            session_id=session,
            agent_id="agent-a",
            ts_ms=1_763_766_000_000,
        )
        for level in (Level.WARNING, Level.EXCEEDED)
    )
    partition = await left_behind(
        settings, session, applied=2, alert=signal_event(warning),
        rounds=3, events=3, signals={"rounds": 2}, pending=[warning, exceeded],
    )  # fmt: skip

    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings), running_consumer(consumer):

        async def resolved() -> bool:
            found = (await read_states(settings, [partition])).get(f"session:{session}")
            return found is not None and not found.pending

        await wait_until(resolved, what="pending signals resolved")
    alerts = await read_events(settings, settings.routing().alerts)
    assert sorted((a.type, a.event_id) for a in alerts) == sorted(
        [("budget.warning", warning.event_id), ("budget.exceeded", exceeded.event_id)]
    )


async def with_budget_topics(kafka_settings: KafkaSettings, tmp_path: Path) -> BudgetSettings:
    """Settings with :data:`CONFIG`, the budget topics made."""
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(kafka_settings, config)
    await ensure_budget_topics(settings)
    return settings


async def left_behind(
    settings: KafkaSettings,
    session: str,
    *,
    applied: int,
    alert: Event | None = None,
    **totals: Any,
) -> int:
    """Write the state of ``session`` (agent-a's, events up to offset ``applied`` of its
    partition applied, with ``totals``) to the changelog, and ``alert`` to the alerts topic,
    as a previous owner of its partition left them; return that partition."""
    partition = _partition_of(session, 4)
    state = ScopeState(
        scope=f"session:{session}",
        agent_id="agent-a",
        offsets={str(partition): applied},
        **totals,
    )
    writer = ChangelogWriter(settings)
    await writer.start()
    try:
        await writer.write(partition, [state])
        if alert is not None:
            await writer.send_events([(settings.routing().alerts, alert)])
    finally:
        await writer.stop()
    return partition


def _partition_of(session: str, partitions: int) -> int:
    from aiokafka.partitioner import murmur2

    return int(murmur2(session.encode()) & 0x7FFFFFFF) % partitions


async def test_applied_offsets_past_the_end_of_a_recreated_events_topic_are_forgotten(
    kafka_settings: KafkaSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The events topic was deleted and created again (to fix its partition count, say) while
    the changelog kept a live session that had applied offsets up to 155. The new log's
    records (offsets 0...) were taken for replays: the session went on past its limits and
    nothing was said."""
    settings = await with_budget_topics(kafka_settings, tmp_path)
    session = "s-recreated"
    partition = await left_behind(settings, session, applied=155, rounds=1, events=156)
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings), running_consumer(consumer):
        await produce_events(settings, [turn(r, session=session, seconds=r) for r in range(3)])
        await wait_until(lambda: drained(settings, consumer.group_id), what="drained")
    alerts = await read_events(settings, settings.routing().alerts)
    assert sorted(a.type for a in alerts if a.session_id == session) == [
        "budget.exceeded",
        "budget.warning",
    ]
    restored = (await read_states(settings, [partition]))[f"session:{session}"]
    assert restored.rounds == 4 and restored.offsets == {str(partition): 2}
    assert "1 scopes had applied offsets of" in caplog.text
