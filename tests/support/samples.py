"""A realistic ``data`` for every type of the catalogue, and sample events built from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from agentstream.schemas import Event, EventType

SAMPLE_DATA: dict[str, dict[str, Any]] = {
    "message.received": {"content": "What is the weather in Paris?"},
    "message.response": {"content": "It is 18 °C and sunny in Paris."},
    "thinking.started": {},
    "thinking.completed": {"text": "The user wants the weather."},
    "llm.call.started": {"round": 0, "model": "claude-sonnet"},
    "llm.call.completed": {
        "round": 0,
        "stop_reason": "tool_use",
        "model": "claude-sonnet",
        "input_tokens": 812,
        "output_tokens": 64,
    },
    "llm.token": {"token": "Par"},
    "tool.called": {"name": "weather", "args": {"city": "Paris", "units": "metric"}},
    "tool.result": {"name": "weather", "output": "18 °C, sunny", "sources": None},
    "tool.error": {"name": "weather", "error": "TimeoutError: upstream took 30 s", "attempt": 1},
    "guard.input.checked": {"guard": "pii", "direction": "input", "allowed": True, "reason": ""},
    "guard.output.checked": {
        "guard": "toxicity",
        "direction": "output",
        "allowed": True,
        "reason": "",
    },
    "guard.blocked": {
        "direction": "output",
        "reason": "contains a credit card number",
        "guard": "pii",
    },
    "memory.retrieved": {"messages": 12},
    "memory.updated": {},
    "memory.stored": {"key": "preference:units"},
    "memory.recalled": {"query": "user preferred units"},
    "retrieval.searched": {"query": "paris weather", "top_k": 5},
    "retrieval.results": {"count": 3},
    "budget.warning": {"scope": "session", "dimension": "tokens", "used": 80_000, "limit": 100_000},
    "budget.exceeded": {"tokens_used": 100_250},
    "agent.started": {"version": "1.4.2"},
    "agent.stopped": {},
    "agent.error": {"error": "RuntimeError: model endpoint unreachable"},
    "turn.started": {"round": 0},
    "turn.ended": {"round": 2, "stop_reason": "end_turn"},
    "session.created": {},
    "session.ended": {},
    "plan.created": {"goal": "book a trip", "steps": ["find flights", "book hotel"]},
    "plan.step.started": {"step": "find flights", "index": 0},
    "plan.step.completed": {"step": "find flights", "index": 0},
    "plan.step.failed": {"step": "book hotel", "error": "no rooms", "index": 1},
    "plan.completed": {"goal": "book a trip", "progress": 0.5},
    "correction.attempted": {"step": "book hotel", "alternative": "book another hotel"},
    "control.config.updated": {"config": {"temperature": 0.2}},
    "control.tools.reload": {"reason": "new tool deployed"},
    "control.kbs.reload": {"reason": "index rebuilt"},
    "control.agent.paused": {"reason": "budget exceeded"},
    "control.agent.resumed": {},
    "audit.turn_start": {"severity": "info", "metadata": {}, "prompt_preview": "Hello"},
    "audit.turn_end": {
        "severity": "info",
        "metadata": {},
        "content_preview": "Hi there",
        "function_calls_count": 1,
    },
    "audit.tool_call_attempt": {
        "severity": "info",
        "metadata": {},
        "tool_name": "web_search",
        "arguments_preview": '{"q":"hi"}',
    },
    "audit.tool_call_complete": {
        "severity": "info",
        "metadata": {},
        "tool_name": "web_search",
        "status": "success",
        "duration_ms": 123.5,
        "result_preview": "3 results",
    },
    "audit.tool_call_failure": {
        "severity": "error",
        "metadata": {},
        "tool_name": "web_search",
        "error_type": "ValueError",
        "error_message": "bad query",
    },
    "audit.tool_policy_decision": {
        "severity": "info",
        "metadata": {},
        "tool_name": "shell",
        "action": "deny",
        "policy_source": "default",
    },
    "audit.sandbox_decision": {
        "severity": "info",
        "metadata": {},
        "tool_name": "shell",
        "context": "untrusted",
        "reason": "network access",
        "backend_type": "docker",
    },
    "audit.tool_loop_warning": {
        "severity": "warning",
        "metadata": {},
        "tool_name": "web_search",
        "pattern": "same_call",
        "severity_level": "warning",
        "call_count": 3,
    },
    "audit.tool_loop_block": {
        "severity": "error",
        "metadata": {},
        "tool_name": "web_search",
        "pattern": "same_call",
        "call_count": 5,
    },
    "audit.hook_mutation": {
        "severity": "info",
        "metadata": {},
        "hook_name": "sanitize_output",
        "tool_name": "web_search",
        "mutated_field": "result",
    },
    "audit.error": {
        "severity": "error",
        "metadata": {},
        "error_type": "RuntimeError",
        "error_message": "LLM API failure",
        "error_context": "during response parsing",
    },
}

assert set(SAMPLE_DATA) == {t.value for t in EventType}, "a sample is missing for some type"

FIXED_TIME = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)


def sample_event(event_type: str, index: int = 0) -> Event:
    """A deterministic sample event (fixed id and time) of ``event_type``."""
    return Event(
        event_id=f"019a3f2e-8c00-7000-8000-{index:012x}",
        type=event_type,
        timestamp=FIXED_TIME,
        agent_id="agent-weather",
        user_id="user-42",
        session_id="5f0c9e6a1b2d4c3e8f7a6b5c4d3e2f1a",
        turn_id="a1b2c3d4e5f6",
        seq=index,
        source="pod-7-1234-abcdef",
        data=dict(SAMPLE_DATA[event_type]),
    )


def all_sample_events() -> list[Event]:
    return [sample_event(t.value, i) for i, t in enumerate(EventType)]


@dataclass
class ForeignAuditEvent:
    """The base class of Calute's and Xerxes' audit events, field for field (``event_type`` a
    settable field, an ISO timestamp string, ``to_dict()`` as ``asdict``): what their
    ``AuditEmitter`` hands to a collector. Subclasses add their event's fields."""

    event_type: str = "base"
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    agent_id: str | None = None
    turn_id: str | None = None
    session_id: str | None = None
    severity: str = "info"
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
