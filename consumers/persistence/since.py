"""``--since`` values: a duration back from now (``90s``, ``15m``, ``1h``, ``2d``, ``1w``) or
an ISO 8601 time (``2026-11-01T12:00:00Z``; without an offset it is UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .store import StoreError

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    match = _DURATION.fullmatch(text.strip().lower())
    if match:
        amount, unit = float(match.group(1)), _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(
            f"expected --since as a duration (90s, 15m, 1h, 2d, 1w) or an ISO time, got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
