"""Event builders and readers shared by the budget tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.structs import TopicPartition

from agentstream.consumers.budget.changelog import repartition_topic
from agentstream.consumers.budget.service import BudgetSettings
from agentstream.consumers.runtime.replay import high_watermarks, partitions_of, read_to_end
from agentstream.schemas import Event, decode_record
from agentstream.schemas.settings import KafkaSettings
from support.runtime import committed_offsets

T0 = datetime(2026, 11, 21, 23, 0, 0, tzinfo=UTC)


def ev(
    type_: str,
    data: dict[str, Any] | None = None,
    *,
    session: str = "s-1",
    agent: str = "agent-a",
    user: str = "user-1",
    turn: str = "turn-1",
    at: datetime | None = None,
    seconds: float = 0.0,
) -> Event:
    return Event(
        type=type_,
        timestamp=(at or T0) + timedelta(seconds=seconds),
        session_id=session,
        agent_id=agent,
        user_id=user,
        turn_id=turn,
        data=data or {},
    )


def llm(input_tokens: int | None = None, output_tokens: int | None = None, **kw: Any) -> Event:
    data: dict[str, Any] = {"round": 0, "stop_reason": "end_turn", "model": kw.pop("model", None)}
    if input_tokens is not None:
        data["input_tokens"] = input_tokens
    if output_tokens is not None:
        data["output_tokens"] = output_tokens
    if "output_chars" in kw:
        data["output_chars"] = kw.pop("output_chars")
    return ev("llm.call.completed", data, **kw)


def turn(round_: int = 0, **kw: Any) -> Event:
    return ev("turn.started", {"round": round_}, **kw)


def tool(**kw: Any) -> Event:
    return ev("tool.called", {"name": "search", "args": {"q": "x"}}, **kw)


def response(content: str, **kw: Any) -> Event:
    return ev("message.response", {"content": content}, **kw)


async def read_events(settings: KafkaSettings, topic: str) -> list[Event]:
    """Every event on ``topic`` now (all partitions, group-less)."""
    tps = await partitions_of(settings, topic)
    return [decode_record(r.value, r.headers) async for r in read_to_end(settings, tps)]


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
        # The events carry fixed 2026 timestamps: never evict them by the wall clock.
        "budget_session_idle_hours": 1e6,
        "budget_keep_days": 36_500,
        **overrides,
    }
    return BudgetSettings(**fields)


async def drained(settings: BudgetSettings, group: str) -> bool:
    """Both groups committed every record of their input topics.

    The events group first: once it committed everything, every repartition record is
    written, so the repartition topic's end offsets read after that are final.
    """
    events = settings.routing().events
    ends = await _ends(settings, events)
    committed = await committed_offsets(settings, group, [events])
    if not all(committed.get(tp, 0) >= end for tp, end in ends.items() if end > 0):
        return False
    topic = repartition_topic(settings.topic_prefix)
    ends = await _ends(settings, topic)
    committed = await committed_offsets(settings, f"{group}.repartition", [topic])
    return all(committed.get(tp, 0) >= end for tp, end in ends.items() if end > 0)


async def _ends(settings: KafkaSettings, topic: str) -> dict[TopicPartition, int]:
    return await high_watermarks(settings, await partitions_of(settings, topic))
