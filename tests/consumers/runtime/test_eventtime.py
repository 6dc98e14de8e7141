"""EventTime: an event whose timestamp is far from its record's is timed by the record."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from agentstream.consumers.runtime import Record
from agentstream.consumers.runtime.eventtime import EventTime
from agentstream.schemas import Event

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
SKEWED = "agentstream_consumer_clock_skewed_events_total"


def record(at: datetime, record_ms: int = NOW_MS) -> Record:
    event = Event(type="tool.called", timestamp=at, session_id="s")
    return Record(event, "t.events", 2, 40, b"s", record_ms, ())


def skewed(registry: CollectorRegistry) -> float:
    return registry.get_sample_value(SKEWED, {"service": "svc", "topic": "t.events"}) or 0.0


@pytest.mark.parametrize(
    "at",
    [
        datetime(1, 1, 1, tzinfo=UTC),  # Go's zero time
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        NOW - timedelta(hours=1, milliseconds=1),
        NOW + timedelta(hours=1, milliseconds=1),
    ],
)
def test_an_event_further_than_the_skew_is_timed_by_its_record(
    at: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    timing = EventTime(registry, "svc", 3_600_000, topics=["t.events"])
    assert skewed(registry) == 0  # the series exists from the start
    rec = record(at)
    with caplog.at_level(logging.WARNING):
        timed = timing.event(rec)
    assert timed.timestamp == NOW and timed is not rec.event
    assert (timed.event_id, timed.type, timed.session_id) == (
        rec.event.event_id,
        "tool.called",
        "s",
    )
    assert rec.event.timestamp == at  # the record's event is left as it came
    assert skewed(registry) == 1
    assert f"at t.events[2]@40 is stamped {at.isoformat()}" in caplog.text


@pytest.mark.parametrize(
    ("at", "record_ms", "max_skew_ms"),
    [
        (NOW - timedelta(hours=1), NOW_MS, 3_600_000),  # at the bound
        (NOW + timedelta(minutes=59), NOW_MS, 3_600_000),
        (datetime(1, 1, 1, tzinfo=UTC), -1, 3_600_000),  # a record without a timestamp
        (datetime(1, 1, 1, tzinfo=UTC), NOW_MS, 0),  # the check turned off
    ],
)
def test_an_event_within_the_skew_keeps_its_time(
    at: datetime, record_ms: int, max_skew_ms: int
) -> None:
    registry = CollectorRegistry()
    rec = record(at, record_ms)
    assert EventTime(registry, "svc", max_skew_ms).event(rec) is rec.event
    assert skewed(registry) == 0


def test_a_record_read_again_to_restore_state_is_retimed_without_being_counted_again() -> None:
    registry = CollectorRegistry()
    timing = EventTime(registry, "svc")
    event = Event(type="tool.called", timestamp=datetime(1, 1, 1, tzinfo=UTC))
    timed = timing.of(event, NOW_MS, "t.events", 0, 7, count=False)
    assert timed.timestamp == NOW and skewed(registry) == 0
