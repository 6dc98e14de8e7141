"""Calute's audit event dataclasses, field for field.

Every event carries the base fields (``event_type``, ``timestamp`` as a UTC ISO-8601 string,
``agent_id``, ``turn_id``, ``session_id``, ``severity``, ``metadata``) followed by its class
fields. ``to_dict()`` lists them in that order; ``to_json()`` is the JSON of that dict.
``event_type`` is fixed per class (not an ``__init__`` argument).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

__all__ = [
    "AUDIT_EVENT_CLASSES",
    "AuditEvent",
    "ErrorEvent",
    "HookMutationEvent",
    "SandboxDecisionEvent",
    "ToolCallAttemptEvent",
    "ToolCallCompleteEvent",
    "ToolCallFailureEvent",
    "ToolLoopBlockEvent",
    "ToolLoopWarningEvent",
    "ToolPolicyDecisionEvent",
    "TurnEndEvent",
    "TurnStartEvent",
]


_second_prefix: tuple[int, str] = (-1, "")


def _now_iso() -> str:
    """``datetime.now(UTC).isoformat()`` with microseconds, in ~0.4 µs instead of ~0.9 µs:
    the text up to the second is formatted once per second (events are built on the agent's
    hot path). Thread-safe: the cache is one tuple, replaced whole."""
    global _second_prefix
    now = time.time()
    second = int(now)
    cached, prefix = _second_prefix
    if second != cached:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_prefix = (second, prefix)
    return prefix + str(int((now - second) * 1_000_000)).zfill(6) + "+00:00"


@dataclass
class AuditEvent:
    """The base of every audit event (Calute's ``AuditEvent``)."""

    event_type: str = field(default="", init=False)
    timestamp: str = field(default_factory=_now_iso)
    agent_id: str | None = None
    turn_id: str | None = None
    session_id: str | None = None
    severity: str = "info"
    metadata: dict[str, Any] = field(default_factory=dict)

    _field_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._field_names = ()  # filled lazily: the dataclass decorator runs after this hook

    def to_dict(self) -> dict[str, Any]:
        """Base fields, then class fields (``metadata`` is copied, not shared)."""
        names = type(self)._field_names
        if not names:
            names = type(self)._field_names = tuple(f.name for f in fields(self))
        out = {name: getattr(self, name) for name in names}
        out["metadata"] = dict(self.metadata)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)


@dataclass
class TurnStartEvent(AuditEvent):
    event_type: str = field(default="turn_start", init=False)
    prompt_preview: str = ""


@dataclass
class TurnEndEvent(AuditEvent):
    event_type: str = field(default="turn_end", init=False)
    content_preview: str = ""
    function_calls_count: int = 0


@dataclass
class ToolCallAttemptEvent(AuditEvent):
    event_type: str = field(default="tool_call_attempt", init=False)
    tool_name: str = ""
    arguments_preview: str = ""


@dataclass
class ToolCallCompleteEvent(AuditEvent):
    event_type: str = field(default="tool_call_complete", init=False)
    tool_name: str = ""
    status: str = "success"
    duration_ms: float = 0.0
    result_preview: str = ""


@dataclass
class ToolCallFailureEvent(AuditEvent):
    event_type: str = field(default="tool_call_failure", init=False)
    severity: str = "error"
    tool_name: str = ""
    error_type: str = ""
    error_message: str = ""


@dataclass
class ToolPolicyDecisionEvent(AuditEvent):
    event_type: str = field(default="tool_policy_decision", init=False)
    tool_name: str = ""
    action: str = ""
    policy_source: str = ""


@dataclass
class SandboxDecisionEvent(AuditEvent):
    event_type: str = field(default="sandbox_decision", init=False)
    tool_name: str = ""
    context: str = ""
    reason: str = ""
    backend_type: str = ""


@dataclass
class ToolLoopWarningEvent(AuditEvent):
    event_type: str = field(default="tool_loop_warning", init=False)
    severity: str = "warning"
    tool_name: str = ""
    pattern: str = ""
    severity_level: str = ""
    call_count: int = 0


@dataclass
class ToolLoopBlockEvent(AuditEvent):
    event_type: str = field(default="tool_loop_block", init=False)
    severity: str = "error"
    tool_name: str = ""
    pattern: str = ""
    call_count: int = 0


@dataclass
class HookMutationEvent(AuditEvent):
    event_type: str = field(default="hook_mutation", init=False)
    hook_name: str = ""
    tool_name: str = ""
    mutated_field: str = ""


@dataclass
class ErrorEvent(AuditEvent):
    event_type: str = field(default="error", init=False)
    severity: str = "error"
    error_type: str = ""
    error_message: str = ""
    error_context: str = ""


AUDIT_EVENT_CLASSES: dict[str, type[AuditEvent]] = {
    cls.event_type: cls
    for cls in (
        TurnStartEvent,
        TurnEndEvent,
        ToolCallAttemptEvent,
        ToolCallCompleteEvent,
        ToolCallFailureEvent,
        ToolPolicyDecisionEvent,
        SandboxDecisionEvent,
        ToolLoopWarningEvent,
        ToolLoopBlockEvent,
        HookMutationEvent,
        ErrorEvent,
    )
}
"""Calute ``event_type`` → class."""
