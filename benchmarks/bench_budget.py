"""Budget service: events/s per process.

Against an embedded broker this script starts and stops:

* accounting: the pure accounting (``BudgetTracker``: sessions, agent and user days, signal
  checks) over the backlog in memory, events/s of one core;
* service: ``--backlog`` events are produced first (``--sessions`` sessions of 100 agents and
  500 users, 5 rounds each: turn, LLM call with usage, tool call and result, answer), then the
  budget service (both its consumer groups, in this process, default batch settings) drains
  them: events/s = backlog / (time from both groups having their partitions to both having
  committed everything; the group joins and restores before are reported as startup).
  This includes the repartition records (2 per counted event), the changelog writes and the
  signals.

Writes ``benchmarks/results/budget.json``.

    python benchmarks/bench_budget.py [--backlog 50000] [--partitions 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, like_a_service_process, produce, write_results

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.consumers.budget.accounting import BudgetTracker
from agentstream.consumers.budget.changelog import repartition_topic
from agentstream.consumers.budget.service import SERVICE, BudgetService, BudgetSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.consumers.runtime.replay import (
    committed_offsets,
    high_watermarks,
    partitions_of,
)
from agentstream.schemas import Event
from agentstream.schemas.admin import TopicSpec, ensure_topics

EVENTS_PER_ROUND = 5
ROUNDS = 5


def fleet_event(type_: str, data: dict[str, Any], session: int, at: datetime) -> Event:
    """An event of session ``session``: 100 agents and 500 users share the sessions."""
    return Event(
        type=type_,
        timestamp=at,
        session_id=f"session-{session:06d}",
        agent_id=f"agent-{session % 100}",
        user_id=f"user-{session % 500}",
        turn_id=f"turn-{session:06d}",
        data=data,
    )


def backlog(count: int) -> list[Event]:
    """``count`` events of sessions interleaved like a fleet: 25 events per session."""
    start = datetime.now(UTC) - timedelta(minutes=5)
    sessions = max(1, count // (EVENTS_PER_ROUND * ROUNDS))
    events: list[Event] = []
    for r in range(ROUNDS):
        for s in range(sessions):
            at = start + timedelta(seconds=r * 10 + s % 10)
            usage = {
                "round": r,
                "stop_reason": "tool_use",
                "model": "claude-sonnet",
                "input_tokens": 1_500,
                "output_tokens": 300,
            }
            for type_, data in (
                ("turn.started", {"round": r}),
                ("llm.call.completed", usage),
                ("tool.called", {"name": "search", "args": {"q": s}}),
                ("tool.result", {"name": "search", "output": "ok"}),
                ("message.response", {"content": "x" * 400}),
            ):
                events.append(fleet_event(type_, data, s, at))
    return events[:count]


def config_file(directory: Path) -> Path:
    path = directory / "budget-bench.toml"
    path.write_text(
        "[session]\ntokens = 8000\nrounds = 4\n"
        "[agent_day]\ntokens = 1000000\n"
        "[user_day]\ncost_usd = 0.5\n"
        '[prices."claude-sonnet"]\ninput_per_million = 3\noutput_per_million = 15\n'
    )
    return path


def bench_accounting(events: list[Event], settings: BudgetSettings) -> dict[str, Any]:
    tracker = BudgetTracker(settings.budget())
    started = time.perf_counter()
    signals = 0
    for offset, event in enumerate(events):
        signals += len(tracker.process(event, offset=offset))
    seconds = time.perf_counter() - started
    return {
        "events": len(events),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(events) / seconds),
        "signals": signals,
        "scopes": len(tracker.ledger),
    }


async def drained(settings: BudgetSettings, group: str) -> bool:
    for topic, g in (
        (settings.routing().events, group),
        (repartition_topic(settings.topic_prefix), f"{group}.repartition"),
    ):
        tps = await partitions_of(settings, topic)
        ends = await high_watermarks(settings, tps)
        done = await committed_offsets(settings, g, tps)
        if any((done[tp] or 0) < end for tp, end in ends.items()):
            return False
    return True


async def bench_service(
    bootstrap: str, events: list[Event], partitions: int, config: Path
) -> dict[str, Any]:
    settings = BudgetSettings(
        bootstrap_servers=bootstrap, topic_prefix="bench", budget_config=config
    )
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions))
    await produce(settings, events, topic=settings.routing().events)
    consumer = EventConsumer(settings, service=SERVICE.name)
    launched = time.perf_counter()
    async with SERVICE.setup(consumer, settings) as budget:
        assert isinstance(budget, BudgetService)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            while not (consumer.ready and budget.repartition.ready):
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            while True:
                if await drained(settings, consumer.group_id):
                    break
                if task.done():
                    task.result()  # the service stopped: raise its error
                await asyncio.sleep(0.2)
            seconds = time.perf_counter() - started
        finally:
            stop.set()
            await task
    registry = consumer.registry
    signals = sum(
        s.value
        for metric in registry.collect()
        if metric.name == "agentstream_budget_signals"
        for s in metric.samples
        if s.name.endswith("_total")
    )
    handler = {"service": "budget", "handler": "budget-sessions"}
    calls = registry.get_sample_value(
        "agentstream_consumer_handler_duration_seconds_count", handler
    )
    busy = registry.get_sample_value("agentstream_consumer_handler_duration_seconds_sum", handler)
    return {
        "events": len(events),
        "partitions": partitions,
        "session_batches": int(calls or 0),
        "session_batch_seconds_mean": round((busy or 0) / (calls or 1), 4),
        "startup_seconds": round(started - launched, 3),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(events) / seconds),
        "signals": int(signals),
        "changelog_records": int(
            sum(
                registry.get_sample_value(
                    "agentstream_budget_changelog_records_total", {"stage": stage}
                )
                or 0
                for stage in ("sessions", "days")
            )
        ),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    events = backlog(args.backlog)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    config = config_file(RESULTS_DIR)
    try:
        accounting = bench_accounting(events, BudgetSettings(budget_config=config))
        broker = EmbeddedBroker()
        broker.start()
        try:
            await broker.wait_ready()
            service = await bench_service(broker.bootstrap_servers, events, args.partitions, config)
        finally:
            broker.stop()
    finally:
        config.unlink(missing_ok=True)
    results = {"accounting": accounting, "service": service, "broker": "embedded (Tansu)"}
    written = write_results("budget", results)
    print(f"{'measure':<12} {'events':>8} {'seconds':>8} {'events/s':>10} {'signals':>8}")
    for name, row in (("accounting", accounting), ("service", service)):
        print(
            f"{name:<12} {row['events']:>8} {row['seconds']:>8} "
            f"{row['events_per_s']:>10} {row['signals']:>8}"
        )
    print(f"results: {written}")


if __name__ == "__main__":
    like_a_service_process()
    asyncio.run(main())
