"""Event builders and readers shared by the budget tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agentstream.consumers.budget.changelog import read_partitions
from agentstream.schemas import Event, decode_record
from agentstream.schemas.settings import KafkaSettings

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
    return [decode_record(r.value, r.headers) async for r in read_partitions(settings, topic)]
