"""The wire format: record value, key and headers of an event.

Value
    The whole envelope, msgspec JSON by default or MessagePack, chosen per record by its
    ``content-type`` header. A record is self-contained: persisted, replayed or dead-lettered
    as it is.
Key
    The event's ``session_id``, so a session is one key on one partition and keeps its order.
    Events without a session are keyed by ``source`` (the producer instance), which keeps
    each producer's session-less events in order; an event with neither has no key.
Headers
    CloudEvents 1.0, Kafka protocol binding, binary mode: ``ce_specversion``, ``ce_id``,
    ``ce_type``, ``ce_source``, ``ce_time``, ``content-type``, and the extension attributes
    ``ce_sessionid``, ``ce_agentid``, ``ce_turnid`` (when set) and ``ce_sequence``. A consumer
    filters on ``ce_type`` without decoding the value. The CloudEvent's data is the envelope.

Encoders and decoders are built once, at import.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from .envelope import TYPE_PATTERN, Event, _DecodedEvent, checked_type
from .errors import (
    EventTypeError,
    MalformedRecordError,
    PayloadValidationError,
    RecordLocation,
    RecordTooLargeError,
    UnknownContentTypeError,
)

JSON = "application/json"
MSGPACK = "application/msgpack"
Encoding = Literal["json", "msgpack"]
CONTENT_TYPES: dict[str, str] = {"json": JSON, "msgpack": MSGPACK}
_READ_TYPES: dict[str, Literal["json", "msgpack"]] = {
    JSON: "json",
    "text/json": "json",
    MSGPACK: "msgpack",
    "application/x-msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
}

DEFAULT_MAX_RECORD_BYTES = 1_048_576
"""aiokafka's ``max_request_size`` default, and about Kafka's ``message.max.bytes``."""

Headers = Sequence[tuple[str, bytes]]

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_json_decoder = msgspec.json.Decoder(_DecodedEvent)  # WireEvent's checks; see decode_event
_msgpack_decoder = msgspec.msgpack.Decoder(_DecodedEvent)
_ENCODE = {"json": _json_encoder.encode, "msgpack": _msgpack_encoder.encode}
_DECODE = {"json": _json_decoder.decode, "msgpack": _msgpack_decoder.decode}


def encode_event(
    event: Event, encoding: Encoding = "json", *, max_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> bytes:
    """The record value of ``event``; raises :class:`RecordTooLargeError` past ``max_bytes``."""
    return checked_size(_ENCODE[encoding](event), event, encoding, max_bytes)


def checked_size(value: bytes, event: Event, encoding: Encoding, max_bytes: int) -> bytes:
    """``value``, the encoding of ``event``, unless it is larger than ``max_bytes``:
    :class:`RecordTooLargeError` then."""
    if len(value) > max_bytes:
        raise RecordTooLargeError(
            f"event {event.event_id} of type {event.type!r} encodes to {len(value)} bytes "
            f"({encoding}); the largest record allowed is {max_bytes} bytes (max_request_size)"
        )
    return value


def decode_event(
    value: bytes | None,
    encoding: Encoding = "json",
    *,
    validate: bool = True,
    where: RecordLocation | None = None,
) -> Event:
    """Decode a record value. With ``validate`` the typed payload is checked (and cached).

    Raises a :class:`~agentstream.schemas.errors.DecodeError` subclass that says what was
    wrong and, given ``where``, which record it was.
    """
    if not value:
        raise MalformedRecordError(
            "expected an encoded event, the record value is empty", where=where
        )
    try:
        event: Event = _DECODE[encoding](value)
    except msgspec.ValidationError as exc:
        text = str(exc)
        is_type = text.endswith("`$.type`") or text.endswith("field `type`")
        not_object = text.startswith("Expected `object`, got") and " - at `" not in text
        cls = (
            EventTypeError
            if is_type
            else MalformedRecordError
            if not_object
            else PayloadValidationError
        )
        raise cls(
            f"expected an agentstream event envelope ({encoding}): {text}", where=where
        ) from None
    except msgspec.DecodeError as exc:
        raise MalformedRecordError(
            f"expected {encoding} encoding of an event, got undecodable bytes ({exc}); "
            f"first bytes {value[:32]!r}",
            where=where,
        ) from None
    except RecursionError:  # msgspec stops at the interpreter's recursion limit
        raise MalformedRecordError(
            f"expected an event msgspec can decode ({encoding}), got objects or arrays nested "
            f"deeper than the interpreter's recursion limit (about 1,000 levels on Python "
            f"3.11 and 3.12, about 10,000 on 3.13) in {len(value)} bytes; first bytes "
            f"{value[:32]!r}",
            where=where,
        ) from None
    # WireEvent's checks: the required identity fields (by the decoder), the type pattern
    # (here, once per distinct type). The decoded class has Event's exact layout: hand back a
    # plain Event, equal to one built in code.
    if not checked_type(event.type):
        raise EventTypeError(
            f"expected an agentstream event envelope ({encoding}): Expected `str` matching "
            f"regex {TYPE_PATTERN!r}, got {event.type!r} - at `$.type`",
            where=where,
        )
    event.__class__ = Event
    if validate:
        try:
            _ = event.payload
        except PayloadValidationError as exc:
            raise exc.at(where) if where is not None else exc from None
    return event


def encoding_of(
    content_type: bytes | str | None, *, where: RecordLocation | None = None
) -> Encoding:
    """The encoding a ``content-type`` header names; no header means JSON."""
    if content_type is None:
        return "json"
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    found = _READ_TYPES.get(text.split(";", 1)[0].strip().lower())
    if found is None:
        raise UnknownContentTypeError(
            f"expected content-type {JSON} or {MSGPACK}, got {text!r}", where=where
        )
    return found


def header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The first value of header ``name``, or None."""
    if headers:
        for key, value in headers:
            if key == name:
                return value
    return None


def decode_record(
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]] | None,
    *,
    validate: bool = True,
    where: RecordLocation | None = None,
) -> Event:
    """Decode a consumed record: picks the encoding from ``content-type`` and checks that the
    envelope's type is the one ``ce_type`` announced."""
    headers = tuple(headers or ())
    encoding = encoding_of(header(headers, "content-type"), where=where)
    event = decode_event(value, encoding, validate=validate, where=where)
    announced = header(headers, "ce_type")
    if announced is not None:
        text = announced.decode("utf-8", "replace")
        if text != event.type:
            raise announced_type_error(text, event.type, where=where)
    return event


def announced_type_error(
    announced: str, found: str, *, where: RecordLocation | None = None
) -> EventTypeError:
    """The error for an envelope whose type is not the one its ``ce_type`` header announced."""
    return EventTypeError(
        f"expected the envelope type to match header ce_type={announced!r}, got {found!r}",
        where=where,
    )


def untagged_error(announced: bytes, *, where: RecordLocation | None = None) -> EventTypeError:
    """The error for a ``ce_type`` header that is no event type (dotted lower-case words): a
    service whose subscriptions skip records by that header would skip it unseen, where the
    others dead-letter it for not matching its envelope."""
    return EventTypeError(
        f"expected an event type in header ce_type (dotted lower-case words, as tool.called), "
        f"got {announced.decode('utf-8', 'replace')!r}",
        where=where,
    )


def record_key(event: Event) -> bytes | None:
    """The Kafka key: ``session_id``, else ``source``, else none."""
    key = event.session_id or event.source
    return key.encode() if key else None


_SPECVERSION = ("ce_specversion", b"1.0")
_CONTENT_TYPE_HEADERS = {
    name: ("content-type", value.encode()) for name, value in CONTENT_TYPES.items()
}


def rfc3339(timestamp: datetime) -> bytes:
    """``timestamp.isoformat()`` as bytes, the ``ce_time`` header. For UTC timestamps msgspec
    writes the same digits about three times faster (with ``Z``, turned back into
    ``+00:00``). Raises ValueError for a naive datetime: it has no RFC 3339 form, and no
    consumer would decode an envelope holding one (``Event.timestamp`` needs a time zone)."""
    if timestamp.tzinfo is UTC:
        text = _json_encoder.encode(timestamp)
        return text[1:-2] + b"+00:00" if text[-2:] == b'Z"' else text[1:-1]
    if timestamp.utcoffset() is None:
        raise ValueError(f"expected a timestamp with a time zone, got the naive {timestamp}")
    return timestamp.isoformat().encode()


def event_headers(event: Event, encoding: Encoding = "json") -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers for ``event``."""
    headers = [
        _SPECVERSION,
        ("ce_id", event.event_id.encode()),
        ("ce_type", str(event.type).encode()),
        ("ce_source", (event.source or "agentstream").encode()),
        ("ce_time", rfc3339(event.timestamp)),
        _CONTENT_TYPE_HEADERS[encoding],
        ("ce_sequence", str(event.seq).encode()),
    ]
    if event.session_id:
        headers.append(("ce_sessionid", event.session_id.encode()))
    if event.agent_id:
        headers.append(("ce_agentid", event.agent_id.encode()))
    if event.turn_id:
        headers.append(("ce_turnid", event.turn_id.encode()))
    return headers
