"""Headers, key and topic built on the sender thread: the same bytes as the codec's, from a
snapshot taken at publish time."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from support.samples import all_sample_events, sample_event

from agentstream.producer._headers import RecordFactory
from agentstream.producer.publisher import KafkaPublisher
from agentstream.schemas import Event, EventType
from agentstream.schemas.codec import Encoding, decode_record, event_headers, record_key, rfc3339
from agentstream.schemas.settings import KafkaSettings

Consume = Callable[..., Awaitable[list[Any]]]


def pending(event: Event) -> tuple[bytes, Any, float]:
    fields = (
        event.event_id,
        event.type,
        event.source,
        event.timestamp,
        event.seq,
        event.session_id,
        event.agent_id,
        event.turn_id,
    )
    return (b"value", fields, 1.5)


def variants() -> list[Event]:
    """Every type, plus the optional envelope fields empty in every combination."""
    out = all_sample_events()
    for i, (session, agent, turn, source) in enumerate(
        [("", "", "", "pod"), ("s", "", "t", ""), ("", "a", "", "pod"), ("s", "a", "t", "pod")]
    ):
        event = sample_event("tool.called", 100 + i)
        event.session_id, event.agent_id, event.turn_id, event.source = session, agent, turn, source
        event.seq = 2**40 + i
        out.append(event)
    enum_typed = sample_event("llm.token", 200)
    enum_typed.type = EventType.LLM_TOKEN
    out.append(enum_typed)
    return out


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_records_match_the_codec_byte_for_byte(encoding: Encoding) -> None:
    routing = KafkaSettings(topic_prefix="hdr").routing()
    factory = RecordFactory(routing, encoding)
    events = variants()
    # twice: the second round is served from the caches
    for _ in range(2):
        records = factory.build((pending(e) for e in events), 1)
        for event, record in zip(events, records, strict=True):
            assert list(record.headers) == event_headers(event, encoding)
            assert record.key == (record_key(event) or b"")
            assert record.topic == routing.topic_for(event.type)
            assert (record.value, record.created) == (b"value", 1.5)
        assert [record.index for record in records] == list(range(1, len(events) + 1))


def test_rfc3339_is_isoformat() -> None:
    rng = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(0))]
    stamps = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)]
    for _ in range(2_000):
        stamps.append(
            datetime(2026, 1, 1, tzinfo=rng.choice(zones))
            + timedelta(seconds=rng.randrange(10**9), microseconds=rng.choice([0, 1, 10, 999_999]))
        )
    for stamp in stamps:
        assert rfc3339(stamp) == stamp.isoformat().encode()
    with pytest.raises(ValueError, match="expected a timestamp with a time zone"):
        rfc3339(datetime(2026, 1, 1))  # naive: no RFC 3339 form


async def test_changing_the_event_after_publish_does_not_change_its_record(
    kafka_settings: KafkaSettings, consume: Consume
) -> None:
    event = sample_event("tool.called", 1)
    event.session_id, event.turn_id = "s-before", "turn-before"
    publisher = KafkaPublisher(kafka_settings, redact=None)
    try:
        publisher.publish(event)
        event.session_id, event.turn_id, event.type = "s-after", "turn-after", "message.received"
        assert publisher.flush(30)
    finally:
        publisher.close(5)
    (record,) = await consume(kafka_settings, kafka_settings.routing().events, 1)
    sent = decode_record(record.value, record.headers)
    assert (sent.session_id, sent.turn_id, sent.type) == ("s-before", "turn-before", "tool.called")
    assert record.key == b"s-before"
    assert list(record.headers) == event_headers(sent)
