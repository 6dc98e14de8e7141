"""Agent code that gets the envelope wrong, or closes the publisher at once: the events after
it are still delivered, the bad ones counted, and no client is left open."""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
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


class _Opaque:
    def __str__(self) -> str:
        return "opaque thing"


async def test_data_the_encoder_refuses_is_sent_as_text_not_dropped(
    kafka_settings: KafkaSettings, consume: Consume, caplog: pytest.LogCaptureFixture
) -> None:
    """Corail's bus carries any object in ``data``; msgspec encodes none of these. The event
    still leaves the pod, those values as text, the rest as they were (and redacted)."""
    odd: dict[str, Any] = {
        "name": "export",
        "path": Path("/tmp/report.csv"),
        "error": ValueError("boom"),
        "object": _Opaque(),
        "by_pair": {(1, 2): "pair key"},
        "huge": 2**70,
        "nested": [{"deep": 1j}],
        "kept": {"n": 3, "when": datetime(2026, 11, 1, 12, tzinfo=UTC)},
        "token": "Bearer abcdefghijklmnopqrstuvwxyz0123456789",
    }
    event = sample_event("tool.result", 1)
    event.data = odd
    publisher = KafkaPublisher(kafka_settings)  # default redaction
    try:
        with caplog.at_level(logging.WARNING, logger="agentstream.producer.publisher"):
            publisher.publish(event)
            assert publisher.flush(30)
        assert publisher.stats().delivered == 1 and not any(publisher.stats().dropped.values())
    finally:
        publisher.close(5)
    assert event.data is odd and isinstance(odd["path"], Path)  # the caller's objects stay
    assert f"event {event.event_id} of type tool.result" in caplog.text
    assert "TypeError: Encoding objects of type PosixPath is unsupported" in caplog.text
    [record] = await consume(kafka_settings, kafka_settings.routing().events, 1)
    data = decode_record(record.value, record.headers).data
    assert data["path"] == "/tmp/report.csv" and data["error"] == "boom"
    assert data["object"] == "opaque thing" and data["by_pair"] == {"(1, 2)": "pair key"}
    assert data["huge"] == str(2**70) and data["nested"] == [{"deep": "1j"}]
    assert data["kept"] == {"n": 3, "when": "2026-11-01T12:00:00Z"}
    assert "abcdefghijklmnopqrstuvwxyz" not in data["token"]


async def test_lone_surrogates_are_mended_and_the_event_sent(
    kafka_settings: KafkaSettings, consume: Consume, caplog: pytest.LogCaptureFixture
) -> None:
    """UTF-8 cannot carry a lone surrogate, and Python strings may hold one: a tool's output
    decoded with ``surrogateescape``, a JSON ``\\ud83d`` escape without its pair. msgspec
    refused the whole event, and an audit record was lost for one character."""
    escaped = b"caf\xe9".decode("utf-8", "surrogateescape")  # 'caf\udce9'
    split_pair = "\ud83d\ude00"  # two code points of one UTF-16 pair: mended into 😀
    event = sample_event("tool.result", 1)
    event.session_id = f"session-{escaped}"
    event.agent_id = f"agent{split_pair}"
    event.data = {"name": "cat", "output": f"read {escaped}", escaped: [split_pair, "\ud83d"]}
    publisher = KafkaPublisher(kafka_settings, redact=None)
    try:
        with caplog.at_level(logging.WARNING, logger="agentstream.producer.publisher"):
            publisher.publish(event)
            assert publisher.flush(30)
        stats = publisher.stats()
        assert stats.delivered == 1 and not any(stats.dropped.values())
    finally:
        publisher.close(5)
    assert "surrogates not allowed" in caplog.text and "replaced by U+FFFD" in caplog.text
    assert event.session_id == f"session-{escaped}"  # the caller's event stays as it was
    [record] = await consume(kafka_settings, kafka_settings.routing().events, 1)
    sent = decode_record(record.value, record.headers)
    assert sent.event_id == event.event_id
    assert (sent.session_id, sent.agent_id) == ("session-caf\ufffd", "agent\U0001f600")
    assert sent.data == {
        "name": "cat",
        "output": "read caf\ufffd",
        "caf\ufffd": ["\U0001f600", "\ufffd"],
    }
    headers = dict(record.headers)  # headers and key follow the envelope as sent
    assert record.key == headers["ce_sessionid"] == "session-caf\ufffd".encode()
    assert headers["ce_agentid"] == "agent\U0001f600".encode()


async def test_a_type_that_is_no_tag_is_sent_with_a_warning_once(
    kafka_settings: KafkaSettings, consume: Consume, caplog: pytest.LogCaptureFixture
) -> None:
    """Consumers dead-letter such events (their reason names the type); the agent's developer
    learns it from the pod's log at the first one, not from the dead-letter topic."""
    events = [sample_event("tool.called", n) for n in range(3)]
    for event in events:
        event.type = "Tool Called"
    publisher = KafkaPublisher(kafka_settings, redact=None)
    try:
        with caplog.at_level(logging.WARNING, logger="agentstream.producer.publisher"):
            for event in events:
                publisher.publish(event)
            assert publisher.flush(30)
    finally:
        publisher.close(5)
    warned = [r.getMessage() for r in caplog.records if "is not a type tag" in r.getMessage()]
    assert len(warned) == 1 and "event type 'Tool Called'" in warned[0]
    records = await consume(kafka_settings, kafka_settings.routing().events, 3)
    assert [dict(r.headers)["ce_type"] for r in records] == [b"Tool Called"] * 3


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
