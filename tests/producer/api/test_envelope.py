"""The envelope of our own audit events: ids, timestamps and type, including the odd values
a caller can put into a Calute-style dataclass."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agentstream.producer.audit_events import ToolCallAttemptEvent, TurnStartEvent
from agentstream.producer.collectors import audit_envelope
from agentstream.producer.scope import event_scope


def test_fields_ids_and_type() -> None:
    event = ToolCallAttemptEvent(agent_id="a1", turn_id="t1", tool_name="search")
    event.session_id = "s1"
    event.metadata["k"] = "v"
    env = audit_envelope(event, agent_id="fallback")
    assert (env.type, env.agent_id, env.session_id, env.turn_id) == (
        "audit.tool_call_attempt",
        "a1",
        "s1",
        "t1",
    )
    assert env.timestamp == datetime.fromisoformat(event.timestamp)
    assert env.timestamp.tzinfo is not None
    assert env.data == {
        "severity": "info",
        "metadata": {"k": "v"},
        "tool_name": "search",
        "arguments_preview": "",
    }
    assert env.data["metadata"] is not event.metadata


def test_empty_ids_come_from_the_scope_then_the_collector() -> None:
    event = TurnStartEvent(agent_id=None, turn_id=None)
    with event_scope(session_id="scoped-s", turn_id="scoped-t", user_id="u"):
        env = audit_envelope(event, agent_id="fallback")
    assert (env.agent_id, env.session_id, env.turn_id, env.user_id) == (
        "fallback",
        "scoped-s",
        "scoped-t",
        "u",
    )


def test_non_string_ids_are_written_as_strings() -> None:
    turn = uuid.uuid4()
    event = TurnStartEvent(agent_id="a", turn_id=turn)  # type: ignore[arg-type]
    event.session_id = 42  # type: ignore[assignment]
    env = audit_envelope(event)
    assert (env.session_id, env.turn_id) == ("42", str(turn))


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-01-02T03:04:05.000006+00:00", datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)),
        (
            "2026-01-02T03:04:05+02:00",
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # naive = UTC
        (datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
    ],
)
def test_timestamps_as_calute_writes_them_or_otherwise(
    stamp: str | datetime, expected: datetime
) -> None:
    event = TurnStartEvent(timestamp=stamp)  # type: ignore[arg-type]
    assert audit_envelope(event).timestamp == expected


def test_an_unreadable_timestamp_becomes_now_not_an_error() -> None:
    before = datetime.now(UTC)
    for stamp in ("yesterday", "not a time+00:00"):
        env = audit_envelope(TurnStartEvent(timestamp=stamp))
        assert before <= env.timestamp <= datetime.now(UTC)


def test_audit_timestamps_with_another_offset_become_utc() -> None:
    from datetime import UTC, datetime

    from agentstream.producer.audit_events import ToolCallAttemptEvent
    from agentstream.producer.collectors import audit_envelope

    event = ToolCallAttemptEvent(tool_name="search")
    event.timestamp = "2026-11-01T14:00:00+02:00"
    assert audit_envelope(event).timestamp == datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert audit_envelope(event).timestamp.utcoffset() == UTC.utcoffset(None)
