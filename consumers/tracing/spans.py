"""The spans a turn becomes: plain data, independent of OpenTelemetry's classes.

Times are Unix nanoseconds taken from event timestamps (never from the clock of this
process), so rebuilding a turn from the same events gives the same spans.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

AttributeValue = str | bool | int | float | list[Any] | dict[str, Any]
"""A scalar, or JSON-like lists and maps (OTLP ``array_value`` / ``kvlist_value``)."""
Attributes = dict[str, AttributeValue]

INCOMPLETE = "agentstream.incomplete"
"""Attribute set to ``True`` on a span (and the root) closed without its closing event."""
INCOMPLETE_REASON = "agentstream.incomplete_reason"


class StatusCode(enum.IntEnum):
    """OTLP ``Status.StatusCode`` values."""

    UNSET = 0
    OK = 1
    ERROR = 2


class SpanKind(enum.IntEnum):
    """OTLP ``Span.SpanKind`` values (the ones used here)."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3


@dataclass(slots=True)
class SpanEvent:
    """A point in time inside a span (a guard check, a memory recall, a policy decision)."""

    name: str
    time_ns: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    parent_span_id: bytes | None
    name: str
    start_ns: int
    end_ns: int | None = None  # None while open
    kind: SpanKind = SpanKind.INTERNAL
    attributes: Attributes = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    status: StatusCode = StatusCode.UNSET
    status_message: str = ""

    @property
    def is_open(self) -> bool:
        return self.end_ns is None

    def finish(self, end_ns: int) -> None:
        """Close the span at ``end_ns`` (never before its start: clocks of pods disagree)."""
        self.end_ns = max(end_ns, self.start_ns)

    def fail(self, message: str) -> None:
        self.status = StatusCode.ERROR
        self.status_message = message

    def close_incomplete(self, end_ns: int, reason: str) -> None:
        """Close an open span whose closing event never came, and say so."""
        self.finish(end_ns)
        self.attributes[INCOMPLETE] = True
        self.attributes[INCOMPLETE_REASON] = reason
        if self.status != StatusCode.ERROR:
            self.fail(f"incomplete: {reason}")


@dataclass(slots=True)
class Trace:
    """One finished turn: its root span first, then the children in opening order."""

    trace_id: bytes
    session_id: str
    agent_id: str
    source: str
    spans: list[Span]
    complete: bool
    dropped_spans: int = 0  # children refused by the per-turn span limit

    @property
    def root(self) -> Span:
        return self.spans[0]
