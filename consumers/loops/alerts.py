"""The events a finding produces: an alert (Calute's loop events) and, when critical, a
pause directive for the agent's pod. Their ids are derived from the finding, so processing
the same input again yields the same ids (downstream idempotent inserts drop the copy)."""

from __future__ import annotations

import uuid
from typing import Any

from agentstream.schemas import Event, EventType

from .detector import Finding, Level

SOURCE = "agentstream-loops"
"""``source`` of every event this service publishes."""

ID_NAMESPACE = uuid.UUID("6f1c2a56-3f43-5a8e-9a55-6c6f6f707321")
"""Namespace of the version-5 UUIDs of alerts and directives (fixed forever)."""


def alert_id(finding: Finding) -> str:
    """uuid5 of (scope, pattern, level, the event that first reached the level)."""
    name = "|".join(
        (
            "alert",
            str(finding.scope),
            finding.pattern.value,
            finding.level.label,
            finding.origin_event_id,
        )
    )
    return str(uuid.uuid5(ID_NAMESPACE, name))


def directive_id(alert_event_id: str, trigger_event_id: str) -> str:
    """uuid5 of (the alert, the call that triggered this directive)."""
    return str(uuid.uuid5(ID_NAMESPACE, f"control|{alert_event_id}|{trigger_event_id}"))


def _metadata(finding: Finding) -> dict[str, Any]:
    return {
        "trigger_event_id": finding.origin_event_id,
        "scope": str(finding.scope),
        "streak_start": finding.streak_start,
        "details": finding.describe(),
    }


def alert_event(finding: Finding, trigger: Event) -> Event:
    """``audit.tool_loop_warning`` (warning) or ``audit.tool_loop_block`` (critical), with the
    envelope ids of the triggering event."""
    data: dict[str, Any] = {
        "tool_name": finding.tool_name,
        "pattern": finding.pattern.value,
        "call_count": finding.call_count,
        "severity_level": finding.level.label,
        "metadata": _metadata(finding),
    }
    if finding.level is Level.CRITICAL:
        event_type = EventType.AUDIT_TOOL_LOOP_BLOCK.value
        data["severity"] = "error"
    else:
        event_type = EventType.AUDIT_TOOL_LOOP_WARNING.value
        data["severity"] = "warning"
    return Event(
        event_id=alert_id(finding),
        type=event_type,
        agent_id=trigger.agent_id,
        user_id=trigger.user_id,
        session_id=trigger.session_id,
        turn_id=trigger.turn_id,
        source=SOURCE,
        data=data,
    )


def pause_directive(finding: Finding, alert: Event) -> Event:
    """``control.agent.paused`` for the agent's pod (see the producer's control listener);
    ``finding_id`` is the block alert's id (the first one, for a repeat finding)."""
    return Event(
        event_id=directive_id(alert.event_id, finding.trigger_event_id),
        type=EventType.CONTROL_AGENT_PAUSED.value,
        agent_id=alert.agent_id,
        user_id=alert.user_id,
        session_id=alert.session_id,
        turn_id=alert.turn_id,
        source=SOURCE,
        data={
            "reason": finding.describe(),
            "service": "loops",
            "finding_id": alert.event_id,
            "tool_name": finding.tool_name,
            "pattern": finding.pattern.value,
            "call_count": finding.call_count,
        },
    )
