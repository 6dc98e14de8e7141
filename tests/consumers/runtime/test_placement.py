"""SessionPlacement: a session's events must come on the partition its key gives them."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from agentstream.consumers.runtime import Record
from agentstream.consumers.runtime.placement import SessionPlacement
from agentstream.schemas import Event
from agentstream.schemas.partitioner import partition_for

TOPIC = "t.events"


def record(session: str, partition: int, offset: int = 0, key: bytes | None = None) -> Record:
    event = Event(type="tool.called", session_id=session, data={"name": "t", "args": {}})
    return Record(event, TOPIC, partition, offset, key, 0, ())


def misplaced(registry: CollectorRegistry) -> float:
    labels = {"service": "loops", "topic": TOPIC}
    return registry.get_sample_value("agentstream_consumer_misplaced_events_total", labels) or 0


def test_events_where_their_session_key_puts_them_pass(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    placement = SessionPlacement(registry, "loops", lambda topic: 6)
    sessions = [f"session-{i}" for i in range(50)]
    with caplog.at_level(logging.WARNING):
        for session in sessions * 2:
            assert placement.check(record(session, partition_for(session.encode(), 6)))
        assert placement.check(record("", 3))  # no session: keyed by the publisher instance
    assert misplaced(registry) == 0 and not caplog.records


def test_an_event_on_another_partition_is_counted_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer keying by user id, or with librdkafka's CRC32 partitioner: the session is
    on two partitions and each sees part of it."""
    registry = CollectorRegistry()
    placement = SessionPlacement(registry, "loops", lambda topic: 6)
    right = partition_for(b"s-1", 6)
    wrong = (right + 1) % 6
    with caplog.at_level(logging.WARNING):
        assert placement.check(record("s-1", right))
        assert not placement.check(record("s-1", wrong, offset=41, key=b"user-7"))
        assert not placement.check(record("s-1", wrong, offset=42, key=b"user-7"))
        assert placement.check(record("s-1", right))
    assert misplaced(registry) == 2
    [line] = [r.getMessage() for r in caplog.records]  # once a minute at most
    assert f"the event at {TOPIC}[{wrong}]@41 belongs on partition {right}" in line
    assert "the record's key is b'user-7'" in line


def test_without_metadata_nothing_is_judged() -> None:
    registry = CollectorRegistry()
    placement = SessionPlacement(registry, "loops", lambda topic: None)
    assert placement.check(record("s-1", 5))
    assert misplaced(registry) == 0


def test_sessions_found_right_are_remembered_within_a_bound() -> None:
    counted: list[str] = []

    def count(topic: str) -> int:
        counted.append(topic)
        return 4

    placement = SessionPlacement(CollectorRegistry(), "loops", count, remember=10)
    sessions = [f"s-{i}" for i in range(25)]
    for session in sessions:
        placement.check(record(session, partition_for(session.encode(), 4)))
    assert len(placement._placed) == 10 and list(placement._placed) == sessions[-10:]
    looked = len(counted)
    placement.check(record(sessions[-1], partition_for(sessions[-1].encode(), 4)))
    assert len(counted) == looked  # remembered: no second look
