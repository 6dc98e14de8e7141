from __future__ import annotations

from support.samples import SAMPLE_DATA

from agentstream.schemas import PAYLOADS, EventType, StopReason, audit_type, payload_class
from agentstream.schemas.payloads import (
    AuditOther,
    AuditToolCallAttempt,
    ToolCalled,
    UnknownPayload,
)

CORAIL = {
    "message.received", "message.response", "thinking.started", "thinking.completed",
    "llm.call.started", "llm.call.completed", "llm.token", "tool.called", "tool.result",
    "tool.error", "guard.input.checked", "guard.output.checked", "guard.blocked",
    "memory.retrieved", "memory.updated", "memory.stored", "memory.recalled",
    "retrieval.searched", "retrieval.results", "budget.warning", "budget.exceeded",
    "agent.started", "agent.stopped", "agent.error", "turn.started", "turn.ended",
    "session.created", "session.ended", "plan.created", "plan.step.started", "plan.step.completed",
    "plan.step.failed", "plan.completed", "correction.attempted", "control.config.updated",
    "control.tools.reload", "control.kbs.reload", "control.agent.paused", "control.agent.resumed",
}  # fmt: skip
CALUTE = {
    "turn_start", "turn_end", "tool_call_attempt", "tool_call_complete", "tool_call_failure",
    "tool_policy_decision", "sandbox_decision", "tool_loop_warning", "tool_loop_block",
    "hook_mutation", "error",
}  # fmt: skip


def test_the_catalogue_has_every_type_of_both_seed_systems_and_nothing_else() -> None:
    assert {t.value for t in EventType} == CORAIL | {audit_type(t) for t in CALUTE}


def test_every_type_has_its_own_payload_struct_tagged_with_the_type() -> None:
    assert set(PAYLOADS) == {t.value for t in EventType}
    for event_type, cls in PAYLOADS.items():
        assert cls.event_type == event_type
    assert len(set(PAYLOADS.values())) == len(PAYLOADS)


def test_stop_reason_has_corails_six_values() -> None:
    assert [r.value for r in StopReason] == [
        "end_turn", "max_rounds", "token_budget", "tool_error", "guard_blocked", "user_aborted",
    ]  # fmt: skip


def test_unknown_types_get_a_generic_typed_view() -> None:
    assert payload_class("tool.called") is ToolCalled
    assert payload_class("audit.tool_call_attempt") is AuditToolCallAttempt
    assert payload_class("audit.skill_used") is AuditOther
    assert payload_class("custom.thing") is UnknownPayload


def test_calute_audit_defaults_and_severities_match_the_seed() -> None:
    from agentstream.schemas.payloads import (
        AuditError,
        AuditToolCallComplete,
        AuditToolCallFailure,
        AuditToolLoopBlock,
        AuditToolLoopWarning,
        AuditTurnStart,
    )

    assert AuditTurnStart().severity == "info"
    assert AuditToolCallComplete(tool_name="t").status == "success"
    assert AuditToolCallFailure(tool_name="t").severity == "error"
    assert AuditToolLoopWarning(tool_name="t").severity == "warning"
    assert AuditToolLoopBlock(tool_name="t").severity == "error"
    assert AuditError().severity == "error"


def test_samples_cover_the_catalogue() -> None:
    assert set(SAMPLE_DATA) == set(PAYLOADS)
