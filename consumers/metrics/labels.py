"""Bounded label values: a metric's series count must not grow with the traffic.

Agent, tool and model names come from the agents, so they are unbounded in principle.
:class:`BoundedLabel` lets through an allow-list, or else the first ``limit`` distinct values
it sees, and maps everything else to ``other``. Event types pass when the catalogue knows
them. Session and user ids are never label values.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentstream.schemas import EventType

OTHER = "other"
"""The label value of everything a bound did not let through."""

UNKNOWN = "unknown"
"""The label value of a missing or empty name (Corail leaves ``agent_id`` empty)."""

MAX_LABEL_CHARS = 128
"""Longer values are cut: a label value is a name, not a payload."""

_KNOWN_TYPES = frozenset(t.value for t in EventType)


def type_label(event_type: str) -> str:
    """The ``type`` label: the type itself when the catalogue knows it, else ``other``."""
    return event_type if event_type in _KNOWN_TYPES else OTHER


class BoundedLabel:
    """Maps raw names to at most ``limit`` label values (plus ``other`` and ``unknown``).

    With ``allow`` only those names pass and ``limit`` is ignored; without it the first
    ``limit`` distinct names seen pass, in order of arrival. Each process decides on its own,
    so two instances may let different names through when there are more than ``limit``;
    an allow-list makes them agree (see docs/metrics.md).
    """

    __slots__ = ("_allow", "_cache", "_cache_limit", "_limit", "_passed")

    def __init__(self, limit: int = 50, allow: Iterable[str] | None = None) -> None:
        if limit < 0:
            raise ValueError(f"expected a label limit >= 0, got {limit}")
        self._allow = frozenset(allow) if allow is not None else None
        self._limit = limit
        self._passed: set[str] = set()
        self._cache: dict[str, str] = {}
        self._cache_limit = max(4 * limit, 1024)

    @property
    def passed(self) -> frozenset[str]:
        """The names let through so far (the allow-list when one is set)."""
        return self._allow if self._allow is not None else frozenset(self._passed)

    def __call__(self, value: object) -> str:
        """The label value of ``value`` (anything that is not a non-empty string is unknown)."""
        if type(value) is str:
            hit = self._cache.get(value)
            if hit is not None:
                return hit
            label = self._resolve(value)
            if len(self._cache) < self._cache_limit:
                self._cache[value] = label
            return label
        return UNKNOWN

    def _resolve(self, value: str) -> str:
        if not value:
            return UNKNOWN
        value = value[:MAX_LABEL_CHARS]
        if self._allow is not None:
            return value if value in self._allow else OTHER
        if value in self._passed:
            return value
        if value in (OTHER, UNKNOWN) or len(self._passed) >= self._limit:
            return OTHER
        self._passed.add(value)
        return value
