"""Synthetic fleet traffic for the metrics tests: realistic sessions of Corail and Calute agents.

Every event is stamped now, so the pipeline delay and active sessions are meaningful.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agentstream.schemas import Event, new_event_id

AGENTS = ("planner", "researcher", "writer")
TOOLS = ("web_search", "calculator", "fetch_url")
MODELS = ("claude-sonnet", "claude-haiku")


@dataclass
class Traffic:
    """Events of a few sessions, and what the metrics should count from them."""

    events: list[Event] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)

    def by_type(self) -> Counter[str]:
        return Counter(e.type for e in self.events)

    def by_agent(self) -> Counter[str]:
        return Counter(e.agent_id for e in self.events)


_counter = itertools.count()


@dataclass
class _Session:
    traffic: Traffic
    session: str
    agent: str
    base: datetime
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, type_: str, data: dict[str, Any], *, ms: int | None = None) -> None:
        seq = next(self.seq)
        self.traffic.events.append(
            Event(
                event_id=new_event_id(),
                type=type_,
                timestamp=self.base + timedelta(milliseconds=ms if ms is not None else seq * 10),
                agent_id=self.agent,
                user_id="user-1",
                session_id=self.session,
                turn_id=f"turn-{self.session}",
                seq=seq,
                source="pod-test",
                data=data,
            )
        )


def fleet_traffic(
    sessions: int = 6, *, loop_blocks: int = 1, budget_exceeded: int = 1, tag: str = ""
) -> Traffic:
    """``sessions`` sessions; each: a Corail turn with an LLM call, two tool calls (one
    failing), guard checks, and a Calute audit turn. The first ``loop_blocks`` and
    ``budget_exceeded`` sessions also hit a loop block and a token budget."""
    traffic = Traffic()
    base = datetime.now(UTC) - timedelta(seconds=2)
    for s in range(sessions):
        session = f"{tag}session-{next(_counter)}"
        model = MODELS[s % len(MODELS)]
        tool = TOOLS[s % len(TOOLS)]
        traffic.sessions.add(session)
        add = _Session(traffic, session, AGENTS[s % len(AGENTS)], base).add
        add("session.created", {})
        add("message.received", {"content": "hello"})
        add("guard.input.checked", {"guard": "pii", "direction": "input", "allowed": True})
        add("turn.started", {"round": 0})
        add("llm.call.started", {"round": 0, "model": model}, ms=100)
        add(
            "llm.call.completed",
            {
                "round": 0,
                "stop_reason": "tool_use",
                "model": model,
                "input_tokens": 500,
                "output_tokens": 40,
            },
            ms=900,
        )
        add("tool.called", {"name": tool, "args": {"q": "x"}, "call_id": "c1"}, ms=1000)
        add("tool.result", {"name": tool, "output": "ok", "call_id": "c1"}, ms=1250)
        add("tool.called", {"name": tool, "args": {"q": "y"}}, ms=1300)
        add("tool.error", {"name": tool, "error": "Timeout", "attempt": 0}, ms=1400)
        if s < budget_exceeded:
            add("budget.exceeded", {"tokens_used": 100_250}, ms=1450)
        add("guard.output.checked", {"guard": "tox", "direction": "output", "allowed": False})
        add("guard.blocked", {"direction": "output", "reason": "toxic", "guard": "tox"})
        add("turn.ended", {"round": 0, "stop_reason": "guard_blocked"}, ms=1500)
        add("message.response", {"content": "sorry"}, ms=1510)
        add("audit.turn_start", {"prompt_preview": "hi"}, ms=1520)
        add(
            "audit.tool_call_complete",
            {"tool_name": tool, "status": "success", "duration_ms": 75.0},
            ms=1530,
        )
        add("audit.tool_call_failure", {"tool_name": tool, "error_type": "ValueError"}, ms=1540)
        add(
            "audit.tool_loop_warning",
            {"tool_name": tool, "pattern": "same_call", "severity_level": "warning"},
            ms=1545,
        )
        if s < loop_blocks:
            add(
                "audit.tool_loop_block",
                {"tool_name": tool, "pattern": "same_call", "call_count": 5},
                ms=1550,
            )
        add("audit.turn_end", {"function_calls_count": 2}, ms=1560)
        add("llm.token", {"token": "Hi"}, ms=1570)
    return traffic
