"""Agent code that gets the envelope wrong, or closes the publisher at once: the events after
it are still delivered, the bad ones counted, and no client is left open."""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from support.samples import sample_event

from agentstream.producer.publisher import KafkaPublisher
from agentstream.schemas import Event
from agentstream.schemas.codec import decode_record
from agentstream.schemas.settings import KafkaSettings

Consume = Callable[..., Awaitable[list[Any]]]


def bad(field: str, value: Any, n: int) -> Event:
    event = sample_event("tool.called", n)
    setattr(event, field, value)
    return event


async def test_an_envelope_field_of_the_wrong_type_is_dropped_not_the_events_after_it(
    kafka_settings: KafkaSettings, consume: Consume, caplog: pytest.LogCaptureFixture
) -> None:
    good = [sample_event("tool.called", n) for n in range(10)]
    wrong = [
        bad("session_id", 123, 100),
        bad("agent_id", 7, 101),
        bad("timestamp", "2026-11-01T12:00:00Z", 102),
        bad("timestamp", datetime(2026, 11, 1, 12), 103),  # naive: no time zone for ce_time
    ]
    publisher = KafkaPublisher(kafka_settings, redact=None)
    try:
        with caplog.at_level(logging.WARNING, logger="agentstream.producer.publisher"):
            for event in [*good[:5], *wrong, *good[5:]]:  # the same sender rounds
                publisher.publish(event)
            assert publisher.flush(30)  # nothing is stuck behind the bad ones
        stats = publisher.stats()
        assert (stats.delivered, stats.dropped["unencodable"], stats.in_memory) == (10, 4, 0)
        assert "unencodable: expected session_id as str, got int 123" in caplog.text
    finally:
        publisher.close(5)
    records = await consume(kafka_settings, kafka_settings.routing().events, 10)
    ids = [decode_record(r.value, r.headers).event_id for r in records]
    assert sorted(ids) == sorted(e.event_id for e in good)


def test_a_publisher_closed_at_once_leaves_no_client_open(
    kafka_settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """close() while the sender is still connecting cancels aiokafka's start(): the half
    started producer is stopped too (it was left for the garbage collector to complain)."""
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(3):
            KafkaPublisher(kafka_settings, redact=None).close(5)
        gc.collect()
    assert "Unclosed" not in caplog.text, caplog.text
