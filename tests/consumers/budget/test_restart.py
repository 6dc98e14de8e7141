"""kill -9 mid-stream, then a restart: totals exact, every signal published exactly once."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.budget import budget_settings, drained, llm, read_events, tool, turn
from support.produce import produce_events
from support.runtime import ServiceProcess, running_consumer, wait_until

from agentstream.consumers.budget.accounting import BudgetTracker, ScopeState
from agentstream.consumers.budget.changelog import read_states
from agentstream.consumers.budget.service import SERVICE, BudgetService, BudgetSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings

CONFIG = """
[session]
tokens = 1000
rounds = 10
tool_calls = 12

[agent_day]
tokens = 6000

[user_day]
tool_calls = 40

[prices."m"]
input_per_million = 3
output_per_million = 15
"""


def service(settings: BudgetSettings, config: Path, commit_interval_ms: int) -> ServiceProcess:
    """``agentstream consume budget --config ...`` with quick test timings."""
    env = {
        "AGENTSTREAM_LINGER_MS": "1",
        "AGENTSTREAM_COMMIT_INTERVAL_MS": str(commit_interval_ms),
        "AGENTSTREAM_SESSION_TIMEOUT_MS": "6000",
        "AGENTSTREAM_HEARTBEAT_INTERVAL_MS": "500",
        "AGENTSTREAM_BUDGET_BATCH_WAIT_MS": "5",
        "AGENTSTREAM_BUDGET_SESSION_IDLE_HOURS": "1000000",
        "AGENTSTREAM_BUDGET_KEEP_DAYS": "36500",
    }
    return ServiceProcess("budget", settings, "--config", str(config), env=env)


def stream(part: int) -> list[Event]:
    """12 sessions of 3 agents and 4 users; each session: turns, tool calls and LLM calls."""
    events = []
    for step in range(8):
        for s in range(12):
            kw = {
                "session": f"s-{s}",
                "agent": f"agent-{s % 3}",
                "user": f"user-{s % 4}",
                "turn": f"t-{part}-{step}",
                "seconds": part * 100 + step,
            }
            events.append(turn(step, **kw))
            events.append(tool(**kw))
            events.append(llm(40, 35, model="m", **kw))
    return events


def totals(state: ScopeState | None) -> tuple[object, ...]:
    assert state is not None
    return (
        state.tokens,
        state.rounds,
        state.tool_calls,
        round(state.cost_usd, 9),
        state.events,
        state.first_ts_ms,
        state.last_ts_ms,
        state.pending,
    )


@pytest.mark.slow
@pytest.mark.parametrize("commit_interval_ms", [100, 60_000], ids=["some-committed", "none"])
async def test_kill_9_mid_stream_then_restart_counts_exactly_and_signals_once(
    kafka_settings: KafkaSettings, tmp_path: Path, commit_interval_ms: int
) -> None:
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(kafka_settings, config)
    first, second = stream(0), stream(1)
    alerts_topic = settings.routing().alerts
    with service(settings, config, commit_interval_ms) as crashing:
        await crashing.wait_ready()
        await produce_events(settings, first)

        async def some_signals() -> bool:
            return len(await read_events(settings, alerts_topic)) >= 3

        await wait_until(some_signals, what="first signals published")
        crashing.kill()  # SIGKILL mid-stream: no drain, no final commit
    await produce_events(settings, second)
    with service(settings, config, 100) as restarted:
        await restarted.wait_ready()
        group = settings.group_for("budget")
        await wait_until(
            lambda: drained(settings, group), timeout=60, what="restarted worker drained"
        )
        # The recount: the same events through the pure accounting, once each.
        recount = BudgetTracker(settings.budget())
        expected_signals = []
        for offset, event in enumerate(first + second):
            expected_signals += recount.process(event, offset=offset)
        states = await read_states(settings)
        alerts = await read_events(settings, alerts_topic)
        assert await restarted.terminate() == 0

    expected_scopes = set(recount.ledger.states)
    assert expected_scopes == {k for k, v in states.items() if v is not None}
    for scope in expected_scopes:
        assert totals(states[scope]) == totals(recount.usage(scope)), scope
    ids = collections.Counter(a.event_id for a in alerts)
    duplicates = {i: n for i, n in ids.items() if n > 1}
    assert not duplicates, duplicates
    assert set(ids) == {s.event_id for s in expected_signals}
    kinds = collections.Counter(a.data["scope"].split(":")[0] for a in alerts)
    assert kinds["session"] and kinds["agent"] and kinds["user"], kinds


@contextlib.asynccontextmanager
async def instance(settings: BudgetSettings) -> AsyncIterator[BudgetService]:
    """One budget service instance in this process (both its consumer groups)."""
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings) as service:
        assert isinstance(service, BudgetService)
        async with running_consumer(consumer):
            yield service


@pytest.mark.slow
async def test_rebalances_keep_totals_exact_and_signals_once(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A alone; B joins (partitions split, A keeps part of its state); A leaves (B takes
    over A's partitions from the changelog). Totals and signals as if one process did it."""
    config = tmp_path / "budget.toml"
    config.write_text(CONFIG)
    settings = budget_settings(
        kafka_settings, config, session_timeout_ms=6_000, heartbeat_interval_ms=500
    )
    group = settings.group_for("budget")
    parts = [stream(0), stream(1), stream(2)]
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(instance(settings))
        await produce_events(settings, parts[0])
        await wait_until(lambda: drained(settings, group), timeout=60, what="A drained part 0")
        async with instance(settings) as b:

            def split() -> bool:
                return bool(a.sessions.partitions) and bool(b.sessions.partitions)

            await wait_until(split, timeout=60, what="A and B share the events partitions")
            await produce_events(settings, parts[1])
            await wait_until(lambda: drained(settings, group), timeout=60, what="A+B drained")
            await stack.aclose()  # A leaves: B takes over all partitions
            await wait_until(
                lambda: len(b.sessions.partitions) == 4, timeout=60, what="B owns everything"
            )
            await produce_events(settings, parts[2])
            await wait_until(lambda: drained(settings, group), timeout=60, what="B drained")
            states = await read_states(settings)
            alerts = await read_events(settings, settings.routing().alerts)

    recount = BudgetTracker(settings.budget())
    expected_signals = []
    for offset, event in enumerate(parts[0] + parts[1] + parts[2]):
        expected_signals += recount.process(event, offset=offset)
    assert set(recount.ledger.states) == {k for k, v in states.items() if v is not None}
    for scope in recount.ledger.states:
        assert totals(states[scope]) == totals(recount.usage(scope)), scope
    ids = collections.Counter(a.event_id for a in alerts)
    assert not {i: n for i, n in ids.items() if n > 1}
    assert set(ids) == {s.event_id for s in expected_signals}
