"""The events the budget service publishes: ``budget.warning`` / ``budget.exceeded`` on the
alerts topic and, optionally, ``control.agent.paused`` directives on the control topic."""

from __future__ import annotations

from datetime import UTC, datetime

from agentstream.schemas import Event, EventType

from .accounting import Level, Signal, signal_event_id
from .config import Dimension

SOURCE = "agentstream-budget"


def _time(signal: Signal) -> datetime:
    """The time of the event that caused the signal (so a re-sent alert is identical)."""
    return datetime.fromtimestamp(signal.ts_ms / 1000, UTC)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def signal_event(signal: Signal) -> Event:
    """The alert for ``signal``: a deterministic id, the trigger's envelope ids, and
    Corail's ``tokens_used`` / ``rounds`` keys beside ``scope, dimension, used, limit``."""
    data: dict[str, object] = {
        "scope": signal.scope,
        "scope_kind": signal.scope_kind.value,
        "dimension": signal.dimension.value,
        "used": _number(signal.used),
        "limit": _number(signal.limit),
    }
    if signal.dimension is Dimension.TOKENS:
        data["tokens_used"] = int(signal.used)
    elif signal.dimension is Dimension.ROUNDS:
        data["rounds"] = int(signal.used)
    return Event(
        event_id=signal.event_id,
        type=signal.event_type,
        timestamp=_time(signal),
        session_id=signal.session_id,
        agent_id=signal.agent_id,
        user_id=signal.user_id,
        turn_id=signal.turn_id,
        source=SOURCE,
        data=data,
    )


def pause_directive(signal: Signal) -> Event:
    """``control.agent.paused`` for the agent whose budget ``signal`` exceeded.

    Its id is derived from the signal's, so a re-sent directive is recognisably the same.
    """
    return Event(
        event_id=signal_event_id(signal.scope, signal.dimension, Level.EXCEEDED, salt="pause"),
        type=EventType.CONTROL_AGENT_PAUSED.value,
        timestamp=_time(signal),
        session_id=signal.session_id,
        agent_id=signal.agent_id,
        user_id=signal.user_id,
        turn_id=signal.turn_id,
        source=SOURCE,
        data={
            "reason": f"budget exceeded: {signal.dimension.value} of {signal.scope} "
            f"at {_number(signal.used)} of {_number(signal.limit)}",
            "service": "budget",
            "finding_id": signal.event_id,
            "scope": signal.scope,
            "dimension": signal.dimension.value,
        },
    )
