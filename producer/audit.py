"""Calute's ``AuditEmitter``, method for method, with collectors that cannot break the caller.

>>> collector = InMemoryCollector()
>>> emitter = AuditEmitter(collector=collector, session_id="sess-01")
>>> tid = emitter.emit_turn_start(agent_id="agent-1", prompt="Hello")
>>> emitter.emit_tool_call_attempt("web_search", args='{"q":"hi"}', turn_id=tid)
>>> emitter.emit_turn_end(agent_id="agent-1", turn_id=tid, fc_count=1)
>>> emitter.flush()
>>> len(collector)
3

To ship to Kafka, use ``AuditEmitter(collector=KafkaCollector(publisher), session_id=...)``,
or a ``CompositeCollector`` holding it next to the others.

Differences from the seed: a collector that raises is logged (1st, 10th, 100th... failure)
and counted in :attr:`AuditEmitter.collector_failures`; the error never reaches the caller
of ``emit_*`` or ``flush``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ._failures import FailureLog
from .audit_events import (
    AuditEvent,
    ErrorEvent,
    HookMutationEvent,
    SandboxDecisionEvent,
    ToolCallAttemptEvent,
    ToolCallCompleteEvent,
    ToolCallFailureEvent,
    ToolLoopBlockEvent,
    ToolLoopWarningEvent,
    ToolPolicyDecisionEvent,
    TurnEndEvent,
    TurnStartEvent,
)
from .collectors import AuditCollector, InMemoryCollector, fields_sink

__all__ = ["PREVIEW_CHARS", "AuditEmitter"]

PREVIEW_CHARS = 200
"""Previews (prompt, content, arguments, result) keep this many characters."""


def _preview(text: object) -> str:
    """The first :data:`PREVIEW_CHARS` characters; None stays "". Anything else than a string
    (a dict of arguments, a result object) is previewed as its ``str()``, where Calute's
    slice raises a TypeError into the agent."""
    if type(text) is str:
        return text[:PREVIEW_CHARS]
    if text is None:
        return ""
    try:
        return str(text)[:PREVIEW_CHARS]
    except Exception:
        return f"<unrepresentable {type(text).__name__}>"


def _generate_turn_id() -> str:
    return os.urandom(6).hex()


class AuditEmitter:
    """Thread-safe emitter: one ``emit_*`` per audit event type; one lock serialises every
    write to the collector (Calute's); the emitter's ``session_id`` is stamped onto every event.

    A plain :class:`KafkaCollector` is thread-safe itself (its publisher serialises
    ``publish``): its events skip the lock, so an agent thread's emit never waits for another
    thread's ``flush()``, which holds the lock until the broker acknowledged everything.
    """

    def __init__(
        self, collector: AuditCollector | None = None, session_id: str | None = None
    ) -> None:
        self._collector: AuditCollector = (
            collector if collector is not None else InMemoryCollector()
        )
        self._session_id = session_id
        self._lock = threading.Lock()
        self._failures = FailureLog(f"audit collector {type(self._collector).__name__}")
        self._sink = fields_sink(self._collector)

    @property
    def collector(self) -> Any:
        """The collector events are forwarded to."""
        return self._collector

    @property
    def session_id(self) -> str | None:
        """The session id stamped onto every event (``None`` when not set)."""
        return self._session_id

    @property
    def collector_failures(self) -> int:
        """How many ``emit``/``flush`` calls of the collector raised (isolated, logged)."""
        return self._failures.count

    def _emit(
        self,
        cls: type[AuditEvent],
        agent_id: str | None,
        turn_id: str | None,
        fields: dict[str, Any],
    ) -> None:
        """Hand the collector ``cls(agent_id=…, turn_id=…, **fields)`` stamped with the
        session id; a :class:`KafkaCollector` takes the fields themselves (``fields_sink``)."""
        sink = self._sink
        if sink is not None:  # thread-safe itself (the publisher's lock), and never raises
            sink(cls, (agent_id, self._session_id, turn_id), fields)
            return
        event = cls(agent_id=agent_id, turn_id=turn_id, **fields)
        event.session_id = self._session_id
        with self._lock:
            try:
                self._collector.emit(event)
            except Exception as exc:
                self._failures.record(exc, f"emit({event.event_type})")

    def flush(self) -> None:
        """Flush the collector (under the lock, as Calute does)."""
        with self._lock:
            try:
                self._collector.flush()
            except Exception as exc:
                self._failures.record(exc, "flush()")

    # --- one method per event type, Calute's parameters, order and defaults ---------------

    def emit_turn_start(
        self, agent_id: str | None = None, turn_id: str | None = None, prompt: str = ""
    ) -> str:
        """Emit a ``TurnStartEvent``; returns ``turn_id`` or, when it is empty, a new 12-hex
        one (Calute: ``turn_id or _generate_turn_id()``)."""
        tid = turn_id or _generate_turn_id()
        self._emit(TurnStartEvent, agent_id, tid, {"prompt_preview": _preview(prompt)})
        return tid

    def emit_turn_end(
        self,
        agent_id: str | None = None,
        turn_id: str | None = None,
        content: str = "",
        fc_count: int = 0,
    ) -> None:
        self._emit(
            TurnEndEvent,
            agent_id,
            turn_id,
            {"content_preview": _preview(content), "function_calls_count": fc_count},
        )

    def emit_tool_call_attempt(
        self,
        tool_name: str,
        args: str = "",
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        self._emit(
            ToolCallAttemptEvent,
            agent_id,
            turn_id,
            {"tool_name": tool_name, "arguments_preview": _preview(args)},
        )

    def emit_tool_call_complete(
        self,
        tool_name: str,
        status: str = "success",
        duration_ms: float = 0.0,
        result: str = "",
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        self._emit(
            ToolCallCompleteEvent,
            agent_id,
            turn_id,
            {
                "tool_name": tool_name,
                "status": status,
                "duration_ms": duration_ms,
                "result_preview": _preview(result),
            },
        )

    def emit_tool_call_failure(
        self,
        tool_name: str,
        error_type: str = "",
        error_msg: str = "",
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        self._emit(
            ToolCallFailureEvent,
            agent_id,
            turn_id,
            {"tool_name": tool_name, "error_type": error_type, "error_message": error_msg},
        )

    def emit_tool_policy_decision(
        self,
        tool_name: str,
        agent_id: str | None = None,
        action: str = "",
        source: str = "",
        turn_id: str | None = None,
    ) -> None:
        self._emit(
            ToolPolicyDecisionEvent,
            agent_id,
            turn_id,
            {"tool_name": tool_name, "action": action, "policy_source": source},
        )

    def emit_sandbox_decision(
        self,
        tool_name: str,
        context: str = "",
        reason: str = "",
        backend_type: str = "",
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        self._emit(
            SandboxDecisionEvent,
            agent_id,
            turn_id,
            {
                "tool_name": tool_name,
                "context": context,
                "reason": reason,
                "backend_type": backend_type,
            },
        )

    def emit_tool_loop_warning(
        self,
        tool_name: str,
        pattern: str = "",
        severity: str = "warning",
        count: int = 0,
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        """The event's own ``severity`` stays "warning"; ``severity`` goes to
        ``severity_level``."""
        self._emit(
            ToolLoopWarningEvent,
            agent_id,
            turn_id,
            {
                "tool_name": tool_name,
                "pattern": pattern,
                "severity_level": severity,
                "call_count": count,
            },
        )

    def emit_tool_loop_block(
        self,
        tool_name: str,
        pattern: str = "",
        count: int = 0,
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        self._emit(
            ToolLoopBlockEvent,
            agent_id,
            turn_id,
            {"tool_name": tool_name, "pattern": pattern, "call_count": count},
        )

    def emit_hook_mutation(
        self,
        hook_name: str,
        tool_name: str = "",
        agent_id: str | None = None,
        field: str = "",
        turn_id: str | None = None,
    ) -> None:
        self._emit(
            HookMutationEvent,
            agent_id,
            turn_id,
            {"hook_name": hook_name, "tool_name": tool_name, "mutated_field": field},
        )

    def emit_error(
        self,
        error_type: str = "",
        error_msg: str = "",
        context: str = "",
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        self._emit(
            ErrorEvent,
            agent_id,
            turn_id,
            {"error_type": error_type, "error_message": error_msg, "error_context": context},
        )
