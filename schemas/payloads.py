"""One payload Struct per event type: the typed view of an event's ``data``.

Each Struct carries its wire tag explicitly (``event_type = "tool.called"``), never a class
name. (Not msgspec's own ``tag=``: that would reserve a key inside ``data``.)
Fields are the keys the seed runtimes put in ``data`` (Corail) or the fields of the audit
event classes (Calute). Fields without a default are required; evolution adds fields only
with defaults. Unknown keys are never forbidden: on the wire and in ``Event.data`` they are
kept as they came; the typed view just does not name them.

``PAYLOADS`` maps every type of the catalogue to its Struct.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, ClassVar, Final

import msgspec

from .catalogue import EventType, StopReason


class Payload(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every payload. Each concrete subclass names its wire tag in ``event_type``."""

    event_type: ClassVar[str] = ""


# --- Corail ----------------------------------------------------------------------------------


class MessageReceived(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "message.received"

    content: str


class MessageResponse(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "message.response"

    content: str


class ThinkingStarted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "thinking.started"


class ThinkingCompleted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "thinking.completed"


class LlmCallStarted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "llm.call.started"

    round: int
    model: str | None = None


class LlmCallCompleted(Payload, kw_only=True, frozen=True):
    """``stop_reason`` is the model's raw string (``tool_use``, ``end_turn`` ...).

    The usage fields are agentstream additions, filled when the runtime knows them; when
    they are absent, budgets fall back to Corail's estimate (characters / 4 of the output).
    """

    event_type: ClassVar[str] = "llm.call.completed"

    round: int
    stop_reason: str
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    output_chars: int | None = None


MAX_USAGE_COUNT = 2**40
"""The largest usage count (tokens, characters) one ``llm.call.completed`` may report (about
10^12). JSON integers have no bound: a budget scope's totals go into its changelog as 64-bit
integers, and one ``input_tokens`` of 10^23 made every later write of its partition fail."""


def usage_count(value: object) -> int | None:
    """A usage field of ``llm.call.completed`` (``input_tokens``, ``output_tokens``,
    ``output_chars``) as every service counts it: an integer from 0 to
    :data:`MAX_USAGE_COUNT`, or a float holding one (``812.0``, as some runtimes write JSON
    numbers); anything else (negative, text, ``true``, ``812.5``, 10^23) is None, as if
    absent. One rule for all, so budgets and dashboards count the same tokens."""
    if type(value) is int:
        return value if 0 <= value <= MAX_USAGE_COUNT else None
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_USAGE_COUNT:
        return int(value)
    return None


class LlmToken(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "llm.token"


ARGS_DIGEST: Final = "args_digest"
"""The ``data`` key of ``tool.called`` and ``audit.tool_call_attempt`` holding a digest of the
call's arguments before redaction (set by the publisher when redaction changed them)."""


def arguments_text(arguments: Any) -> str:
    """A tool call's arguments as Calute hashes them: JSON with sorted keys; a string as
    itself, ``None`` as ``"empty"``. They are first put in the form a JSON record gives them
    (``to_builtins`` with string keys: integer keys as text, bytes as base64), so a call reads
    the same whichever wire encoding carried it (a MessagePack record keeps integer keys,
    which beside string keys made the sort raise TypeError)."""
    if arguments is None:
        return "empty"
    if isinstance(arguments, str):
        return arguments
    with contextlib.suppress(TypeError, ValueError):  # an object (in a test, in a pod)
        arguments = msgspec.to_builtins(arguments, str_keys=True)
    return json.dumps(arguments, sort_keys=True, default=str)


class ToolCalled(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "tool.called"

    name: str
    args: Any = None
    call_id: str | None = None
    args_digest: str | None = None
    """Set by the publisher when redaction changed ``args``: a digest of them as they were,
    comparable within the process (the loops service uses it in place of ``args``)."""


class ToolResult(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "tool.result"

    name: str
    output: Any = None
    sources: Any = None
    call_id: str | None = None


class ToolError(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "tool.error"

    name: str
    error: str
    attempt: int = 0
    call_id: str | None = None


class GuardInputChecked(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "guard.input.checked"

    guard: str
    direction: str
    allowed: bool
    reason: str = ""


class GuardOutputChecked(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "guard.output.checked"

    guard: str
    direction: str
    allowed: bool
    reason: str = ""


class GuardBlocked(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "guard.blocked"

    direction: str
    reason: str
    guard: str = ""


class MemoryRetrieved(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "memory.retrieved"


class MemoryUpdated(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "memory.updated"


class MemoryStored(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "memory.stored"


class MemoryRecalled(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "memory.recalled"

    query: str


class RetrievalSearched(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "retrieval.searched"


class RetrievalResults(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "retrieval.results"

    count: int


class BudgetWarning(Payload, kw_only=True, frozen=True):
    """Never emitted by Corail; agentstream's budget service fills the optional fields."""

    event_type: ClassVar[str] = "budget.warning"

    scope: str | None = None
    dimension: str | None = None
    used: float | None = None
    limit: float | None = None


class BudgetExceeded(Payload, kw_only=True, frozen=True):
    """Corail sends ``tokens_used`` or ``rounds``; the budget service fills the rest."""

    event_type: ClassVar[str] = "budget.exceeded"

    tokens_used: int | None = None
    rounds: int | None = None
    scope: str | None = None
    dimension: str | None = None
    used: float | None = None
    limit: float | None = None


class AgentStarted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "agent.started"


class AgentStopped(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "agent.stopped"


class AgentError(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "agent.error"

    error: str | None = None


class TurnStarted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "turn.started"

    round: int


class TurnEnded(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "turn.ended"

    round: int
    stop_reason: StopReason


class SessionCreated(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "session.created"


class SessionEnded(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "session.ended"


class PlanCreated(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "plan.created"

    goal: str
    steps: Any


class PlanStepStarted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "plan.step.started"

    step: Any
    index: int


class PlanStepCompleted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "plan.step.completed"

    step: Any
    index: int


class PlanStepFailed(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "plan.step.failed"

    step: Any
    error: str
    index: int


class PlanCompleted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "plan.completed"

    goal: str
    progress: Any


class CorrectionAttempted(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "correction.attempted"

    step: Any
    alternative: Any


class ControlConfigUpdated(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "control.config.updated"

    config: Any


class ControlToolsReload(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "control.tools.reload"

    reason: str = ""


class ControlKbsReload(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "control.kbs.reload"

    reason: str = ""


class ControlAgentPaused(Payload, kw_only=True, frozen=True):
    """A directive when published on the control topic; ``reason`` says why."""

    event_type: ClassVar[str] = "control.agent.paused"

    reason: str = ""


class ControlAgentResumed(Payload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "control.agent.resumed"

    reason: str = ""


# --- Calute audit ----------------------------------------------------------------------------


class AuditPayload(Payload, kw_only=True, frozen=True):
    """The audit fields every Calute event carries beyond the envelope."""

    severity: str = "info"
    metadata: dict[str, Any] = {}


class AuditTurnStart(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.turn_start"

    prompt_preview: str = ""


class AuditTurnEnd(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.turn_end"

    content_preview: str = ""
    function_calls_count: int = 0


class AuditToolCallAttempt(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.tool_call_attempt"

    tool_name: str
    arguments_preview: str = ""
    args_digest: str | None = None
    """As :attr:`ToolCalled.args_digest`, of ``arguments_preview``."""


class AuditToolCallComplete(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.tool_call_complete"

    tool_name: str
    status: str = "success"
    duration_ms: float = 0.0
    result_preview: str = ""


class AuditToolCallFailure(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.tool_call_failure"

    tool_name: str
    error_type: str = ""
    error_message: str = ""
    severity: str = "error"


class AuditToolPolicyDecision(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.tool_policy_decision"

    tool_name: str
    action: str = ""
    policy_source: str = ""


class AuditSandboxDecision(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.sandbox_decision"

    tool_name: str
    context: str = ""
    reason: str = ""
    backend_type: str = ""


class AuditToolLoopWarning(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.tool_loop_warning"

    tool_name: str
    pattern: str = ""
    severity_level: str = "warning"
    call_count: int = 0
    severity: str = "warning"


class AuditToolLoopBlock(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.tool_loop_block"

    tool_name: str
    pattern: str = ""
    call_count: int = 0
    severity: str = "error"


class AuditHookMutation(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.hook_mutation"

    hook_name: str
    tool_name: str = ""
    mutated_field: str = ""


class AuditError(AuditPayload, kw_only=True, frozen=True):
    event_type: ClassVar[str] = "audit.error"

    error_type: str = ""
    error_message: str = ""
    error_context: str = ""
    severity: str = "error"


class UnknownPayload(Payload, kw_only=True, frozen=True):
    """The typed view of a type the catalogue does not know: everything stays in ``data``."""


class AuditOther(AuditPayload, kw_only=True, frozen=True):
    """The typed view of an ``audit.*`` type the catalogue does not know yet
    (Xerxes' ``audit.skill_used`` ...): the common audit fields; the rest stays in ``data``."""


def _collect() -> dict[str, type[Payload]]:
    table: dict[str, type[Payload]] = {}
    stack: list[type[Payload]] = [Payload]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        tag = cls.__dict__.get("event_type")
        if tag:
            if tag in table:
                raise RuntimeError(f"two payload Structs share the tag {tag!r}")
            table[tag] = cls
    return table


PAYLOADS: dict[str, type[Payload]] = _collect()
"""Every type of the catalogue → its payload Struct."""

_missing = {t.value for t in EventType} ^ PAYLOADS.keys()
if _missing:  # pragma: no cover - a guard for whoever edits the catalogue
    raise RuntimeError(f"catalogue and payload Structs disagree on {sorted(_missing)}")
