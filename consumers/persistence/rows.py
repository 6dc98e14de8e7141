"""Conversions shared by the stores: timestamps as microseconds, the whole event as JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from agentstream.schemas import Event

from .store import StoreError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_encoder = msgspec.json.Encoder()
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
    """The whole envelope as JSON text (what the ``event`` column holds)."""
    return _encoder.encode(event).decode()


def event_from_json(text: str | bytes, where: str) -> Event:
    """Decode a stored ``event`` column; ``where`` names the row for the error message."""
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise StoreError(f"expected a stored event envelope in {where}, got: {exc}") from None
