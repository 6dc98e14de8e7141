"""Topics, and which event types travel on which topic.

Topics (the prefix is configurable, ``agentstream`` by default):

``<prefix>.events``   every event agents emit, keyed by session
``<prefix>.tokens``   ``llm.token``: high volume, short retention, kept apart
``<prefix>.alerts``   findings of the services (budget warnings and exceedances, loop alerts)
``<prefix>.control``  directives to agent pods (pause, resume, reload)
``<prefix>.dlq``      records a service could not handle, with the reason in headers

A subscription pattern is an exact type, a glob (``tool.*``) or ``*``, as on the in-pod
bus. :meth:`Routing.topics_for_pattern` gives the topics that can hold matching events.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .catalogue import EventType
from .envelope import checked_type

EVENTS, TOKENS, ALERTS, CONTROL, DLQ = "events", "tokens", "alerts", "control", "dlq"
TOPIC_KINDS = (EVENTS, TOKENS, ALERTS, CONTROL, DLQ)

DEFAULT_ROUTES: tuple[tuple[str, str], ...] = ((EventType.LLM_TOKEN.value, TOKENS), ("*", EVENTS))
"""Where producers in agent pods send each type: first matching pattern wins."""

ALERT_TYPES: tuple[str, ...] = (
    EventType.BUDGET_WARNING.value,
    EventType.BUDGET_EXCEEDED.value,
    EventType.AUDIT_TOOL_LOOP_WARNING.value,
    EventType.AUDIT_TOOL_LOOP_BLOCK.value,
)
"""Types the services publish on the alerts topic (they may also come from pods)."""

CONTROL_TYPES: tuple[str, ...] = tuple(t.value for t in EventType if t.value.startswith("control."))
"""Types published on the control topic as directives to pods."""


_MAX_CACHED_TYPES = 4096
MAX_TOPIC_LENGTH = 249
"""Kafka's limit on a topic name."""
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")
_LONGEST_KIND = max(len(kind) for kind in TOPIC_KINDS)


def topic_name_problem(name: str) -> str | None:
    """Why Kafka would refuse ``name`` as a topic name (said as expected, got), or None."""
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        return (
            "expected a topic name of ASCII letters, digits, '.', '_' and '-' (not '.' or "
            f"'..'), got {name!r}"
        )
    if len(name) > MAX_TOPIC_LENGTH:
        return f"expected a topic name of at most {MAX_TOPIC_LENGTH} characters, got {len(name)}"
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why ``<prefix>.<kind>`` would not make valid topic names, or None."""
    if not prefix:  # ".events": valid for Kafka, but a set-and-empty variable, not a choice
        return "expected a topic prefix (agentstream by default), got an empty one"
    longest = f"{prefix}.{'x' * _LONGEST_KIND}"
    problem = topic_name_problem(longest)
    if problem is None:
        return None
    if len(longest) > MAX_TOPIC_LENGTH:
        return (
            f"expected a topic prefix of at most {MAX_TOPIC_LENGTH - _LONGEST_KIND - 1} "
            f"characters, got {len(prefix)}"
        )
    return f"expected a topic prefix of ASCII letters, digits, '.', '_' and '-', got {prefix!r}"


def pattern_problem(pattern: str) -> str | None:
    """Why a subscription pattern can match no event, or None: it is ``*``, a glob, or a type
    tag as envelopes carry them (dotted lower-case words)."""
    if pattern == "*" or checked_type(pattern):
        return None
    if _is_glob(pattern):
        # Types are lower case and hold no '[': such a glob matched nothing, silently.
        unclosed = "[" in pattern and "]" not in pattern[pattern.index("[") :]
        if pattern == pattern.lower() and not unclosed:
            return None
        return (
            "expected a glob that can match an event type (dotted lower-case words, as "
            f"tool.*), got {pattern!r}"
        )
    return (
        "expected an event type (dotted lower-case words, as tool.called), a glob (tool.*) "
        f"or '*', got {pattern!r}"
    )


def matches(pattern: str, event_type: str) -> bool:
    """Whether ``event_type`` matches a subscription pattern (exact, glob or ``*``)."""
    if pattern == "*" or pattern == event_type:
        return True
    return _is_glob(pattern) and fnmatch.fnmatchcase(event_type, pattern)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True)
class Routing:
    """The routing table: topic names, producer routes, and pattern → topics for consumers."""

    prefix: str = "agentstream"
    routes: Sequence[tuple[str, str]] = DEFAULT_ROUTES
    _topic_cache: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def topic(self, kind: str) -> str:
        """The full name of a topic kind (``events`` → ``agentstream.events``)."""
        if kind not in TOPIC_KINDS:
            raise ValueError(f"expected a topic kind among {TOPIC_KINDS}, got {kind!r}")
        return f"{self.prefix}.{kind}"

    @property
    def events(self) -> str:
        return self.topic(EVENTS)

    @property
    def tokens(self) -> str:
        return self.topic(TOKENS)

    @property
    def alerts(self) -> str:
        return self.topic(ALERTS)

    @property
    def control(self) -> str:
        return self.topic(CONTROL)

    @property
    def dlq(self) -> str:
        return self.topic(DLQ)

    def all_topics(self) -> list[str]:
        return [self.topic(kind) for kind in TOPIC_KINDS]

    def topic_for(self, event_type: str) -> str:
        """The topic a producer in a pod sends ``event_type`` to."""
        topic = self._topic_cache.get(event_type)
        if topic is None:
            kind = next((k for p, k in self.routes if matches(p, event_type)), EVENTS)
            topic = self.topic(kind)
            if len(self._topic_cache) < _MAX_CACHED_TYPES:  # types are few; garbage is not
                self._topic_cache[event_type] = topic
        return topic

    def topics_for_pattern(self, pattern: str) -> frozenset[str]:
        """Every topic that can hold an event matching ``pattern``.

        Known types count where producers route them, alert types also on the alerts topic
        and control types also on the control topic. An exact type gets its route's topic even
        when the catalogue does not know it; a glob can match unknown types too, so it also gets
        the topic of every route whose pattern could overlap it.
        """
        topics: set[str] = set()
        for event_type in EventType:
            if matches(pattern, event_type.value):
                topics.add(self.topic_for(event_type.value))
        if any(matches(pattern, t) for t in ALERT_TYPES):
            topics.add(self.alerts)
        if any(matches(pattern, t) for t in CONTROL_TYPES):
            topics.add(self.control)
        if _is_glob(pattern):
            topics.update(self.topic(kind) for p, kind in self.routes if _may_overlap(p, pattern))
        else:
            topics.add(self.topic_for(pattern))
        return frozenset(topics)


def _may_overlap(route: str, pattern: str) -> bool:
    """Whether two globs can match a common type (conservative: literal prefixes agree)."""
    a, b = _literal_prefix(route), _literal_prefix(pattern)
    return a.startswith(b) or b.startswith(a)


def _literal_prefix(pattern: str) -> str:
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern
