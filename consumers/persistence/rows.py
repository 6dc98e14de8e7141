"""Conversions shared by the stores: timestamps as microseconds, the whole event as JSON."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from agentstream.schemas import Event
from agentstream.schemas.codec import Encoding

from .store import StoreError

log = logging.getLogger("agentstream.consumers.persistence")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _as_json(value: Any) -> Any:
    """What JSON holds of a MessagePack value it has no type for: an extension type as
    ``{"msgpack_ext": code, "data": base64}``; anything else as its text."""
    if isinstance(value, msgspec.msgpack.Ext):
        return {"msgpack_ext": value.code, "data": base64.b64encode(value.data).decode()}
    return str(value)


_encoder = msgspec.json.Encoder(enc_hook=_as_json)
_decoder = msgspec.json.Decoder(Event)


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch (exact; ``moment`` must be timezone-aware)."""
    return (moment - EPOCH) // _ONE_US


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


_INT64 = (-(2**63), 2**63 - 1)


def int64(value: int) -> int:
    """``value`` clamped to a signed 64-bit integer (the columns' type; producers may send a
    uint64 ``seq``). The ``event`` column keeps the exact value."""
    low, high = _INT64
    return value if low <= value <= high else max(low, min(high, value))


def event_json(event: Event) -> str:
    """The envelope re-encoded as JSON text (the ``event`` column of events built in code)."""
    return _encoder.encode(event).decode()


def original_json(event: Event, value: bytes, encoding: Encoding) -> str:
    """The ``event`` column of a consumed record: its original envelope as JSON text, with
    every field as the producer sent it, including those this version's ``Event`` does not
    know (a newer producer's). JSON records are kept as they came; MessagePack ones are
    decoded untyped and written as JSON (an extension type as ``{"msgpack_ext": code,
    "data": base64}``: it failed the whole batch into the dead-letter topic). Without
    ``value``, or with a MessagePack value that does not decode untyped, the decoded envelope
    re-encoded."""
    if not value:
        return event_json(event)
    if encoding == "json":
        return value.decode("utf-8")  # decoded as an envelope already: valid UTF-8 JSON
    try:
        return _encoder.encode(msgspec.msgpack.decode(value)).decode()
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        log.warning(
            "event %s: MessagePack envelope not representable as JSON (%s); storing the "
            "decoded envelope, fields unknown to this version are dropped",
            event.event_id,
            exc,
        )
        return event_json(event)


def original_document(text: str | bytes, where: str) -> dict[str, Any]:
    """A stored ``event`` column as a plain JSON object (unknown fields included)."""
    try:
        found = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise StoreError(f"expected a stored event envelope in {where}, got: {exc}") from None
    if not isinstance(found, dict):
        raise StoreError(f"expected a JSON object in {where}, got {type(found).__name__}")
    return found


def event_from_json(text: str | bytes, where: str) -> Event:
    """Decode a stored ``event`` column; ``where`` names the row for the error message."""
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise StoreError(f"expected a stored event envelope in {where}, got: {exc}") from None
