"""kill -9 mid-stream, then a restart: totals exact, every signal published exactly once."""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.budget import budget_settings, drained, llm, read_events, tool, turn
from support.produce import produce_events
from support.runtime import wait_until

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

WORKER = textwrap.dedent(
    """
    import asyncio, json, logging, sys
    from agentstream.consumers.budget.service import SERVICE, BudgetSettings
    from agentstream.consumers.runtime import EventConsumer

    async def main() -> None:
        logging.basicConfig(level=logging.WARNING)
        settings = BudgetSettings(**json.loads(sys.argv[1]))
        consumer = EventConsumer(settings, service=SERVICE.name)
        async with SERVICE.setup(consumer, settings) as service:
            await consumer.start()
            while not (consumer.ready and service.repartition.ready):
                await asyncio.sleep(0.02)
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@contextlib.contextmanager
def worker_process(settings: BudgetSettings, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    script = tmp_path / "budget_worker.py"
    script.write_text(WORKER)
    options = settings.model_dump(mode="json", exclude_none=True)
    log = (tmp_path / "worker.log").open("a")
    process = subprocess.Popen(
        [sys.executable, str(script), json.dumps(options)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        log.close()


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
    crashing = settings.model_copy(update={"commit_interval_ms": commit_interval_ms})
    first, second = stream(0), stream(1)
    alerts_topic = settings.routing().alerts
    with worker_process(crashing, tmp_path) as process:
        await produce_events(settings, first)

        async def some_signals() -> bool:
            return len(await read_events(settings, alerts_topic)) >= 3

        await wait_until(some_signals, what="first signals published")
        process.kill()  # SIGKILL mid-stream: no drain, no final commit
        process.wait(timeout=10)
    await produce_events(settings, second)
    with worker_process(settings, tmp_path):
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
