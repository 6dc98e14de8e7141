"""The event catalogue: every type of both seed systems, and Corail's stop reasons.

Corail's values stay as they are (``tool.called``). Calute's audit events become
``audit.<event_type>`` (``audit.tool_call_attempt``). Values are stable wire tags: a value is
never renamed or reused; new types are added at the end of their group.
"""

from __future__ import annotations

import enum


class EventType(enum.StrEnum):
    # --- Corail EventBus -----------------------------------------------------------------
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_RESPONSE = "message.response"
    THINKING_STARTED = "thinking.started"
    THINKING_COMPLETED = "thinking.completed"
    LLM_CALL_STARTED = "llm.call.started"
    LLM_CALL_COMPLETED = "llm.call.completed"
    LLM_TOKEN = "llm.token"
    TOOL_CALLED = "tool.called"
    TOOL_RESULT = "tool.result"
    TOOL_ERROR = "tool.error"
    GUARD_INPUT_CHECKED = "guard.input.checked"
    GUARD_OUTPUT_CHECKED = "guard.output.checked"
    GUARD_BLOCKED = "guard.blocked"
    MEMORY_RETRIEVED = "memory.retrieved"
    MEMORY_UPDATED = "memory.updated"
    MEMORY_STORED = "memory.stored"
    MEMORY_RECALLED = "memory.recalled"
    RETRIEVAL_SEARCHED = "retrieval.searched"
    RETRIEVAL_RESULTS = "retrieval.results"
    BUDGET_WARNING = "budget.warning"
    BUDGET_EXCEEDED = "budget.exceeded"
    AGENT_STARTED = "agent.started"
    AGENT_STOPPED = "agent.stopped"
    AGENT_ERROR = "agent.error"
    TURN_STARTED = "turn.started"
    TURN_ENDED = "turn.ended"
    SESSION_CREATED = "session.created"
    SESSION_ENDED = "session.ended"
    PLAN_CREATED = "plan.created"
    PLAN_STEP_STARTED = "plan.step.started"
    PLAN_STEP_COMPLETED = "plan.step.completed"
    PLAN_STEP_FAILED = "plan.step.failed"
    PLAN_COMPLETED = "plan.completed"
    CORRECTION_ATTEMPTED = "correction.attempted"
    CONTROL_CONFIG_UPDATED = "control.config.updated"
    CONTROL_TOOLS_RELOAD = "control.tools.reload"
    CONTROL_KBS_RELOAD = "control.kbs.reload"
    CONTROL_AGENT_PAUSED = "control.agent.paused"
    CONTROL_AGENT_RESUMED = "control.agent.resumed"
    # Corail's own names of the control types: aliases of the members above (iteration, the
    # wire and the catalogue see each type once), so Corail code keeps its names.
    CONFIG_UPDATED = "control.config.updated"
    TOOLS_RELOAD_REQUESTED = "control.tools.reload"
    KBS_RELOAD_REQUESTED = "control.kbs.reload"
    AGENT_PAUSED = "control.agent.paused"
    AGENT_RESUMED = "control.agent.resumed"

    # --- Calute audit (AuditEmitter), as audit.<event_type> ------------------------------
    AUDIT_TURN_START = "audit.turn_start"
    AUDIT_TURN_END = "audit.turn_end"
    AUDIT_TOOL_CALL_ATTEMPT = "audit.tool_call_attempt"
    AUDIT_TOOL_CALL_COMPLETE = "audit.tool_call_complete"
    AUDIT_TOOL_CALL_FAILURE = "audit.tool_call_failure"
    AUDIT_TOOL_POLICY_DECISION = "audit.tool_policy_decision"
    AUDIT_SANDBOX_DECISION = "audit.sandbox_decision"
    AUDIT_TOOL_LOOP_WARNING = "audit.tool_loop_warning"
    AUDIT_TOOL_LOOP_BLOCK = "audit.tool_loop_block"
    AUDIT_HOOK_MUTATION = "audit.hook_mutation"
    AUDIT_ERROR = "audit.error"


AUDIT_PREFIX = "audit."


def audit_type(calute_event_type: str) -> str:
    """The agentstream type of a Calute/Xerxes ``event_type``, e.g. ``audit.turn_start``."""
    return AUDIT_PREFIX + calute_event_type


class StopReason(enum.StrEnum):
    """Why an agent loop stopped (Corail's ``turn.ended`` ``stop_reason``)."""

    END_TURN = "end_turn"
    MAX_ROUNDS = "max_rounds"
    TOKEN_BUDGET = "token_budget"
    TOOL_ERROR = "tool_error"
    GUARD_BLOCKED = "guard_blocked"
    USER_ABORTED = "user_aborted"
