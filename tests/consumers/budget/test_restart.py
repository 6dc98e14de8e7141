"""kill -9 mid-stream, then a restart: totals exact, every signal published exactly once."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from support.budget import budget_settings, drained, llm, read_events, tool, turn
from support.produce import produce_events
from support.runtime import ServiceProcess, wait_until

from agentstream.consumers.budget.accounting import BudgetTracker, ScopeState
from agentstream.consumers.budget.changelog import read_states
from agentstream.consumers.budget.service import BudgetSettings
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
