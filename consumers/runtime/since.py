"""``--since`` values, one reading for every command that takes one (``tail``, ``sessions``): a
duration back from now (``90s``, ``15m``, ``1.5h``, ``2d``, ``1w``) or an ISO 8601 time
(``2026-11-01T12:00:00Z``; without an offset it is UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import overload

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The moment ``text`` names (timezone-aware); ValueError for anything else."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is not None:
        seconds = float(found.group(1)) * _SECONDS[found.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        except OverflowError:  # before year 1, or more days than a timedelta holds
            raise ValueError(
                f"expected --since as a duration back to year 1 at most, got {text!r}"
            ) from None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"expected --since as a duration (90s, 15m, 1h, 2d, 1w) or an ISO time, got {text!r}"
        ) from None
    return as_utc(moment)


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` with UTC as its zone when it has none (the reading of every time agentstream
    is given: ``--since``, the stores' query API)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
