"""The durability protocol of a stage, with the Kafka side replaced by recorders:
repartition records before the changelog, signals after it, retries after failures,
tombstones for evicted scopes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry
from support.budget import T0, llm, turn

from agentstream.consumers.budget.accounting import Ledger, ScopeState
from agentstream.consumers.budget.changelog import ChangelogWriter, changelog_topic
from agentstream.consumers.budget.config import BudgetConfig, Limits
from agentstream.consumers.budget.metrics import BudgetMetrics
from agentstream.consumers.budget.stages import USAGE_TYPE, DayStage, SessionStage
from agentstream.consumers.runtime import Record
from agentstream.schemas import Event, decode_event
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings

SETTINGS = KafkaSettings(topic_prefix="p")


class Recorder:
    """Stands in for the changelog writer and for ``consumer.send``; logs every step."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Any]] = []
        self.offset = -1
        self.fail_sends = 0
        self.repartitioned: list[Event] = []

    async def write(
        self, partition: int, states: Iterable[ScopeState], tombstones: Iterable[str] = ()
    ) -> int | None:
        states, tombstones = list(states), list(tombstones)
        for state in states:
            self.steps.append(("changelog", (state.scope, len(state.pending))))
        for scope in tombstones:
            self.steps.append(("tombstone", scope))
        self.offset += len(states) + len(tombstones)
        return self.offset if states or tombstones else None

    async def send_ordered(self, records: Iterable[tuple[str, bytes, bytes, Any]]) -> None:
        for topic, key, value, _ in records:
            event = decode_event(value)
            self.repartitioned.append(event)
            self.steps.append(("repartition", (topic, key.decode(), event.type)))

    async def publish(self, events: list[tuple[str, Event]]) -> None:
        if self.fail_sends:
            self.fail_sends -= 1
            raise ConnectionError("broker away")
        for topic, event in events:
            self.steps.append(("send", (topic, event.type, event.data.get("dimension"))))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.steps]


def stage(
    cls: type[SessionStage] | type[DayStage],
    recorder: Recorder,
    config: BudgetConfig,
    clock: datetime = T0,
    **kw: Any,
) -> Any:
    return cls(
        settings=SETTINGS,
        repartition_topic="p.budget-repartition",
        ledger=Ledger(config, clock=lambda: clock),
        writer=cast(ChangelogWriter, recorder),
        metrics=BudgetMetrics(CollectorRegistry()),
        publish=recorder.publish,
        **kw,
    )


def records(
    events: list[Event], *, topic: str = "p.events", partition: int = 2, start: int = 0
) -> list[Record]:
    return [
        Record(e, topic, partition, offset, e.session_id.encode(), 0, ())
        for offset, e in enumerate(events, start)
    ]


async def test_repartition_first_then_changelog_with_outbox_then_signals_then_cleared() -> None:
    recorder = Recorder()
    sessions = stage(SessionStage, recorder, BudgetConfig(session=Limits(rounds=1)))
    await sessions.handle(records([turn(0)]))
    assert recorder.steps == [
        ("repartition", ("p.budget-repartition", "agent:agent-a:2026-11-21", USAGE_TYPE)),
        ("repartition", ("p.budget-repartition", "user:user-1:2026-11-21", USAGE_TYPE)),
        ("changelog", ("session:s-1", 2)),  # warning and exceeded pending
        ("send", ("p.alerts", "budget.warning", "rounds")),
        ("send", ("p.alerts", "budget.exceeded", "rounds")),
        ("changelog", ("session:s-1", 0)),
    ]


async def test_records_of_other_topics_are_ignored() -> None:
    recorder = Recorder()
    sessions = stage(SessionStage, recorder, BudgetConfig())
    await sessions.handle(records([llm(5, 5)], topic="p.alerts"))
    assert recorder.steps == []


async def test_a_failed_publish_keeps_the_signal_pending_and_the_retry_sends_it_once() -> None:
    recorder = Recorder()
    sessions = stage(
        SessionStage,
        recorder,
        BudgetConfig(session=Limits(tokens=10)),
        pause_on_exceeded=True,
        persist_attempts=1,
    )
    batch = records([llm(20, 0)])
    recorder.fail_sends = 1
    with pytest.raises(ConnectionError):
        await sessions.handle(batch)
    assert recorder.kinds() == ["repartition", "repartition", "changelog"]
    recorder.steps.clear()
    await sessions.handle(batch)  # the runtime's retry: the record itself is not counted again
    assert recorder.steps == [
        ("changelog", ("session:s-1", 2)),
        ("send", ("p.alerts", "budget.warning", "tokens")),
        ("send", ("p.alerts", "budget.exceeded", "tokens")),
        ("send", ("p.control", "control.agent.paused", "tokens")),
        ("changelog", ("session:s-1", 0)),
    ]
    state = sessions.ledger.get("session:s-1")
    assert state.tokens == 20


async def test_no_pause_for_an_exceedance_caught_up_long_after() -> None:
    """A backlog read after an outage: the alerts go out, the directive only while fresh."""
    config = BudgetConfig(session=Limits(tokens=10))
    for late, directive in ((timedelta(minutes=9), True), (timedelta(minutes=11), False)):
        recorder = Recorder()
        sessions = stage(
            SessionStage, recorder, config, clock=T0 + late, pause_on_exceeded=True
        )  # the default pause_max_age_s: 600 s
        await sessions.handle(records([llm(20, 0)]))  # at T0
        sent = [step[1][1] for step in recorder.steps if step[0] == "send"]
        expected = ["budget.warning", "budget.exceeded"]
        assert sent == expected + (["control.agent.paused"] if directive else [])
        [family] = sessions.metrics.stale_directives.collect()
        assert family.samples[0].value == (0 if directive else 1)


async def test_a_failed_repartition_send_is_retried_before_the_changelog() -> None:
    recorder = Recorder()
    sessions = stage(
        SessionStage, recorder, BudgetConfig(session=Limits(tokens=0)), persist_attempts=1
    )

    async def broken(records: Iterable[Any]) -> None:
        raise ConnectionError("broker away")

    working = recorder.send_ordered
    recorder.send_ordered = broken  # type: ignore[method-assign]
    batch = records([llm(20, 0)])
    with pytest.raises(ConnectionError):
        await sessions.handle(batch)
    assert recorder.steps == []  # nothing in the changelog before the repartition is acked
    recorder.send_ordered = working  # type: ignore[method-assign]
    await sessions.handle(batch)
    assert recorder.kinds() == ["repartition", "repartition", "changelog"]


async def test_day_stage_applies_each_source_offset_once() -> None:
    recorder = Recorder()
    sessions = stage(SessionStage, recorder, BudgetConfig(session=Limits(tokens=0)))
    await sessions.handle(records([llm(30, 0), llm(40, 0)]))
    deltas = [e for e in recorder.repartitioned if e.data["scope"].startswith("agent:")]
    days = stage(DayStage, Recorder(), BudgetConfig(agent_day=Limits(tokens=60)))
    repartition = [
        Record(d, "p.budget-repartition", 0, i, None, 0, ()) for i, d in enumerate(deltas)
    ]
    await days.handle(repartition)
    await days.handle(repartition)  # replayed: skipped
    agent = days.ledger.get("agent:agent-a:2026-11-21")
    assert agent.tokens == 70
    assert agent.signals == {"tokens": 2}


async def test_evicted_scopes_get_tombstones() -> None:
    recorder = Recorder()
    now = [T0]
    registry = CollectorRegistry()
    sessions = SessionStage(
        settings=SETTINGS,
        repartition_topic="p.budget-repartition",
        ledger=Ledger(BudgetConfig(), clock=lambda: now[0]),
        writer=cast(ChangelogWriter, recorder),
        metrics=BudgetMetrics(registry),
        publish=recorder.publish,
        session_idle=timedelta(hours=1),
        evict_every_s=0.0,
    )
    await sessions.handle(records([turn(0, session="old"), turn(0, session="new", seconds=3600)]))
    now[0] = T0 + timedelta(hours=1, minutes=30)
    recorder.steps.clear()
    await sessions.handle(records([turn(1, session="new", seconds=5400)], start=2))
    assert ("tombstone", "session:old") in recorder.steps
    assert sessions.ledger.get("session:old") is None
    assert sessions.partitions[2] == {"session:new"}
    new = sessions.ledger.get("session:new")
    assert new is not None
    assert new.rounds == 2
    held = "agentstream_budget_tracked_scopes"
    assert registry.get_sample_value(held, {"scope_kind": "session"}) == 1
    await sessions.handle(records([turn(0, session="third", seconds=5400)], start=3))
    assert registry.get_sample_value(held, {"scope_kind": "session"}) == 2
    await sessions.revoked(frozenset({TopicPartition("p.events", 2)}))
    assert registry.get_sample_value(held, {"scope_kind": "session"}) == 0


async def test_by_default_persisting_is_retried_until_kafka_takes_it() -> None:
    recorder = Recorder()
    sessions = stage(SessionStage, recorder, BudgetConfig(session=Limits(rounds=1)))
    recorder.fail_sends = 2
    await sessions.handle(records([turn(0)]))  # returns only once everything is durable
    assert recorder.kinds().count("send") == 2  # warning and exceeded, once each
    assert recorder.steps[-1] == ("changelog", ("session:s-1", 0))


async def test_an_input_partition_without_a_changelog_partition_is_a_clear_error(
    kafka_settings: KafkaSettings,
) -> None:
    """Partitions added to the events topic while the service runs: the new ones have no
    changelog partition. Their restore waited on aiokafka forever (no warning, /healthz
    green, every partition of the assignment held); it now fails at once, saying what to do,
    and the runtime reports the assignment failed."""
    admin = AIOKafkaAdminClient(**kafka_settings.admin_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(changelog_topic(kafka_settings.topic_prefix), 2, 1)])
    finally:
        await admin.close()
    recorder = Recorder()
    sessions = SessionStage(
        settings=kafka_settings,
        repartition_topic=f"{kafka_settings.topic_prefix}.budget-repartition",
        ledger=Ledger(BudgetConfig()),
        writer=cast(ChangelogWriter, recorder),
        metrics=BudgetMetrics(CollectorRegistry()),
        publish=recorder.publish,
    )
    events = kafka_settings.routing().events  # 4 partitions
    with pytest.raises(ConfigurationError, match=r"partitions \[3\] of topic .*has 2") as raised:
        async with asyncio.timeout(30):
            await sessions.assigned(
                frozenset({TopicPartition(events, 1), TopicPartition(events, 3)})
            )
    assert "must have as many partitions as the events topic" in str(raised.value)
