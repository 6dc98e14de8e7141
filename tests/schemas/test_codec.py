"""Encoding, decoding and the typed errors for every kind of bad input."""

from __future__ import annotations

import json
from datetime import UTC

import msgspec
import pytest
from support.samples import SAMPLE_DATA, all_sample_events, sample_event

from agentstream.schemas import (
    Event,
    EventType,
    EventTypeError,
    MalformedRecordError,
    PayloadValidationError,
    RecordLocation,
    RecordTooLargeError,
    UnknownContentTypeError,
    decode_event,
    decode_record,
    encode_event,
    encoding_of,
    event_headers,
    header,
    record_key,
)
from agentstream.schemas.payloads import AuditOther, ToolCalled, TurnEnded

WHERE = RecordLocation("agentstream.events", 3, 1234)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize("event", all_sample_events(), ids=lambda e: e.type)
def test_every_type_round_trips(event: Event, encoding: str) -> None:
    decoded = decode_event(encode_event(event, encoding), encoding)  # type: ignore[arg-type]
    assert decoded == event
    assert type(decoded) is Event
    assert decoded.timestamp.tzinfo is not None


def test_typed_payload_view() -> None:
    event = sample_event("turn.ended")
    assert event.payload == TurnEnded(round=2, stop_reason="end_turn")  # type: ignore[arg-type]
    assert decode_event(encode_event(event)).payload.stop_reason == "end_turn"  # type: ignore[attr-defined]


def test_keys_a_producer_adds_are_kept() -> None:
    event = Event(type="tool.called", data={"name": "search", "args": {}, "trace_hint": [1, 2]})
    decoded = decode_event(encode_event(event, "msgpack"), "msgpack")
    assert decoded.data["trace_hint"] == [1, 2]
    assert decoded.payload == ToolCalled(name="search", args={})


def test_unknown_audit_type_keeps_every_field() -> None:
    data = {"severity": "info", "metadata": {"k": 1}, "skill_name": "summarise", "version": 3}
    event = Event(type="audit.skill_used", data=data)
    decoded = decode_event(encode_event(event))
    assert decoded.data == data
    assert decoded.payload == AuditOther(severity="info", metadata={"k": 1})


def test_enum_types_encode_as_their_value() -> None:
    event = Event(type=EventType.TOOL_CALLED, data={"name": "x"})
    assert json.loads(encode_event(event))["type"] == "tool.called"


def test_bad_bytes_give_a_readable_malformed_record_error() -> None:
    with pytest.raises(MalformedRecordError) as info:
        decode_event(b"\x00\xffnot json at all", where=WHERE)
    message = str(info.value)
    assert "expected json encoding of an event" in message
    assert "agentstream.events[3]@1234" in message
    assert info.value.where == WHERE
    assert not info.value.retriable


def test_bad_msgpack_bytes() -> None:
    with pytest.raises(MalformedRecordError):
        decode_event(b"\xc1\xc1\xc1", "msgpack")


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_data_nested_too_deep_is_malformed_not_a_recursion_error(encoding: str) -> None:
    """msgspec raises RecursionError past the interpreter's recursion limit (about 1,000
    levels on 3.11 and 3.12, 10,000 on 3.13): one such record must be a DecodeError
    (dead-lettered) like any bad input, not an error that ends a worker."""
    event = sample_event("tool.called")
    event.data = {"args": "HOLE"}
    if encoding == "json":  # [[[...]]] 50,000 deep
        value = encode_event(event).replace(b'"HOLE"', b"[" * 50_000 + b"]" * 50_000)
    else:  # fixarray of one, 50,000 times, then an empty one
        value = encode_event(event, "msgpack").replace(b"\xa4HOLE", b"\x91" * 50_000 + b"\x90")
    with pytest.raises(MalformedRecordError, match="nested deeper") as raised:
        decode_event(value, encoding, where=WHERE)  # type: ignore[arg-type]
    assert "agentstream.events[3]@1234" in str(raised.value)


def test_an_empty_value_is_malformed() -> None:
    with pytest.raises(MalformedRecordError, match="empty"):
        decode_event(b"")
    with pytest.raises(MalformedRecordError):
        decode_event(None)


@pytest.mark.parametrize("value", [b"[1, 2, 3]", b'"text"', b"12", b"null"])
def test_a_json_value_that_is_not_an_object_is_malformed(value: bytes) -> None:
    with pytest.raises(MalformedRecordError, match=r"envelope.*Expected `object`"):
        decode_event(value)


def test_an_empty_event_id_is_rejected() -> None:
    """Stores and services deduplicate by event_id: every event without one would be taken
    for a copy of the first."""
    with pytest.raises(PayloadValidationError, match=r"\$\.event_id"):
        decode_event(_raw(event_id=""))


def _raw(**changes: object) -> bytes:
    document = json.loads(encode_event(sample_event("tool.called")))
    document.update(changes)
    for key, value in list(document.items()):
        if value is None:
            del document[key]
    return json.dumps(document).encode()


def test_a_malformed_type_tag_is_an_event_type_error() -> None:
    with pytest.raises(EventTypeError, match=r"\$\.type"):
        decode_event(_raw(type="Tool Called!"), where=WHERE)


def test_a_missing_type_tag_is_an_event_type_error() -> None:
    with pytest.raises(EventTypeError, match="type"):
        decode_event(_raw(type=None))


def test_a_type_tag_that_disagrees_with_the_header_is_an_event_type_error() -> None:
    value = encode_event(sample_event("tool.called"))
    headers = [("ce_type", b"tool.result"), ("content-type", b"application/json")]
    with pytest.raises(EventTypeError) as info:
        decode_record(value, headers, where=WHERE)
    assert "ce_type='tool.result'" in str(info.value)
    assert "'tool.called'" in str(info.value)


def test_data_of_the_wrong_shape_for_its_type_is_a_validation_error() -> None:
    with pytest.raises(PayloadValidationError) as info:
        decode_event(_raw(data={"name": 42}), where=WHERE)
    assert "ToolCalled" in str(info.value)
    assert "$.name" in str(info.value)
    assert "agentstream.events[3]@1234" in str(info.value)


def test_a_missing_payload_field_is_a_validation_error() -> None:
    with pytest.raises(PayloadValidationError, match="missing required field `name`"):
        decode_event(_raw(data={"args": {}}))


@pytest.mark.parametrize("field", ["event_id", "timestamp"])
def test_a_missing_envelope_identity_field_is_rejected_not_invented(field: str) -> None:
    with pytest.raises(PayloadValidationError, match=f"missing required field `{field}`"):
        decode_event(_raw(**{field: None}))


def test_a_naive_timestamp_is_rejected() -> None:
    with pytest.raises(PayloadValidationError, match="timezone"):
        decode_event(_raw(timestamp="2026-11-01T12:00:00"))


def test_validation_can_be_deferred() -> None:
    event = decode_event(_raw(data={"name": 42}), validate=False)
    with pytest.raises(PayloadValidationError):
        _ = event.payload


def test_an_over_size_record_is_refused_at_encode_time() -> None:
    event = Event(type="tool.result", data={"name": "dump", "output": "x" * 2_000})
    with pytest.raises(RecordTooLargeError) as info:
        encode_event(event, max_bytes=1_000)
    assert "the largest record allowed is 1000 bytes" in str(info.value)
    assert event.event_id in str(info.value)


def test_content_types() -> None:
    assert encoding_of(None) == "json"
    assert encoding_of(b"application/json; charset=utf-8") == "json"
    assert encoding_of("application/vnd.msgpack") == "msgpack"
    with pytest.raises(UnknownContentTypeError, match="application/xml"):
        encoding_of(b"application/xml", where=WHERE)


def test_msgpack_records_decode_by_their_content_type() -> None:
    event = sample_event("guard.blocked")
    value = encode_event(event, "msgpack")
    assert decode_record(value, event_headers(event, "msgpack")) == event


def test_cloudevents_binary_mode_headers() -> None:
    event = sample_event("tool.called", 7)
    headers = dict(event_headers(event))
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_id"] == event.event_id.encode()
    assert headers["ce_type"] == b"tool.called"
    assert headers["ce_source"] == b"pod-7-1234-abcdef"
    assert headers["ce_time"] == b"2026-11-01T12:00:00.123456+00:00"
    assert headers["content-type"] == b"application/json"
    assert headers["ce_sessionid"] == event.session_id.encode()
    assert headers["ce_agentid"] == b"agent-weather"
    assert headers["ce_turnid"] == b"a1b2c3d4e5f6"
    assert headers["ce_sequence"] == b"7"
    assert all(name.islower() for name in headers)


def test_empty_extension_attributes_are_left_out() -> None:
    headers = dict(event_headers(Event(type="agent.started")))
    assert "ce_sessionid" not in headers and "ce_agentid" not in headers
    assert headers["ce_source"] == b"agentstream"


def test_record_key_is_the_session_with_a_documented_fallback() -> None:
    assert record_key(Event(type="agent.started", session_id="s1", source="p")) == b"s1"
    assert record_key(Event(type="agent.started", source="pod-1")) == b"pod-1"
    assert record_key(Event(type="agent.started")) is None


def test_header_lookup() -> None:
    assert header([("a", b"1"), ("b", b"2")], "b") == b"2"
    assert header(None, "b") is None


def test_timestamps_are_utc_after_a_round_trip() -> None:
    event = sample_event("tool.called")
    assert decode_event(
        encode_event(event, "msgpack"), "msgpack"
    ).timestamp.utcoffset() == UTC.utcoffset(None)


def test_to_dict_is_corails_shape() -> None:
    document = sample_event("tool.called").to_dict()
    assert document["type"] == "tool.called"
    assert document["timestamp"] == "2026-11-01T12:00:00.123456Z"
    assert document["data"] == SAMPLE_DATA["tool.called"]
    assert msgspec.json.decode(msgspec.json.encode(document)) == document
