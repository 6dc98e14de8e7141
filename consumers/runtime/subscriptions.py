"""Subscriptions: which handler gets which events, and how it is called."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agentstream.schemas import Event, EventType
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.routing import (
    ALERTS,
    CONTROL,
    EVENTS,
    TOKENS,
    Routing,
    matches,
    pattern_problem,
)

from .record import Record

Handler = Callable[..., Awaitable[None]]
"""``async def h(event: Event) -> None`` or ``async def h(event, record: Record) -> None``."""
BatchHandler = Callable[[list[Record]], Awaitable[None]]
"""``async def h(records: list[Record]) -> None``: consecutive matching records of one partition."""
PartitionsCallback = Callable[[frozenset[Any]], Awaitable[None]]

SUBSCRIBABLE_KINDS = (EVENTS, TOKENS, ALERTS, CONTROL)
"""Topic kinds a subscription can be narrowed to (``topics=``)."""


def pattern_text(pattern: str | EventType) -> str:
    text = pattern.value if isinstance(pattern, EventType) else str(pattern)
    problem = pattern_problem(text)
    if problem is not None:  # it would receive nothing, without a word
        raise ConfigurationError(problem)
    return text


def handler_name(handler: Callable[..., object]) -> str:
    return str(
        getattr(handler, "__qualname__", None) or getattr(handler, "__name__", repr(handler))
    )


def _takes_record(handler: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # builtins, some C callables: call with the event only
        return False
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


@dataclass(frozen=True)
class Subscription:
    """An event handler on a pattern (and, if ``topics`` is set, only on those topics)."""

    pattern: str
    name: str
    handler: Handler
    takes_record: bool
    topics: frozenset[str] | None = None
    timeout_s: float | None = None

    def matches(self, topic: str, event_type: str) -> bool:
        return (self.topics is None or topic in self.topics) and matches(self.pattern, event_type)

    def call(self, event: Event, record: Record | None) -> Awaitable[None]:
        """Call the handler (``record`` is given whenever it takes one)."""
        return self.handler(event, record) if self.takes_record else self.handler(event)


@dataclass(frozen=True, eq=False)  # identity hash: a dict key on the hot path
class BatchSubscription:
    """A batch handler on a pattern: up to ``max_records`` records, at most ``max_wait_ms`` old
    (and, if ``topics`` is set, only records of those topics)."""

    pattern: str
    name: str
    handler: BatchHandler
    max_records: int
    max_wait_ms: int
    topics: frozenset[str] | None = None
    timeout_s: float | None = None

    def matches(self, topic: str, event_type: str) -> bool:
        return (self.topics is None or topic in self.topics) and matches(self.pattern, event_type)


Lookup = tuple[tuple[Subscription, ...], tuple[BatchSubscription, ...]]


@dataclass
class SubscriptionTable:
    """Every subscription of a consumer, with the per-(topic, type) lookups the hot path needs."""

    events: list[Subscription] = field(default_factory=list)
    batches: list[BatchSubscription] = field(default_factory=list)
    _by_topic: dict[str, dict[str, Lookup]] = field(default_factory=dict)

    def add(self, subscription: Subscription | BatchSubscription) -> None:
        taken = {s.name for s in self.all()}
        if subscription.name in taken:
            raise ConfigurationError(
                f"expected a unique handler name, {subscription.name!r} is already subscribed; "
                "pass name=..."
            )
        if isinstance(subscription, Subscription):
            self.events.append(subscription)
        else:
            self.batches.append(subscription)
        self._by_topic.clear()

    def all(self) -> Iterable[Subscription | BatchSubscription]:
        yield from self.events
        yield from self.batches

    def patterns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.pattern for s in self.all()))

    def topics(self, routing: Routing) -> frozenset[str]:
        """The topics to fetch: per subscription, its ``topics`` or every topic that can hold
        events matching its pattern; the union over all."""
        found: set[str] = set()
        for sub in self.all():
            found |= (
                sub.topics if sub.topics is not None else routing.topics_for_pattern(sub.pattern)
            )
        return frozenset(found)

    def for_type(self, topic: str, event_type: str) -> Lookup:
        """The subscriptions that take ``event_type`` records of ``topic`` (memoised, at most
        4096 types per topic: types are bounded by the catalogue plus what producers invent)."""
        by_type = self._by_topic.get(topic)
        if by_type is None:
            by_type = self._by_topic[topic] = {}
        found = by_type.get(event_type)
        if found is None:
            found = (
                tuple(s for s in self.events if s.matches(topic, event_type)),
                tuple(s for s in self.batches if s.matches(topic, event_type)),
            )
            if len(by_type) < 4096:
                by_type[event_type] = found
        return found


def _require_async(handler: Callable[..., object]) -> None:
    if not inspect.iscoroutinefunction(handler) and not inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    ):
        raise ConfigurationError(
            f"expected an async handler (async def), got {handler_name(handler)!r}"
        )


def make_subscription(
    pattern: str | EventType,
    handler: Handler,
    name: str | None,
    topics: frozenset[str] | None = None,
    timeout_ms: int | None = None,
) -> Subscription:
    _require_async(handler)
    return Subscription(
        pattern_text(pattern),
        name or handler_name(handler),
        handler,
        _takes_record(handler),
        topics,
        _timeout_seconds(timeout_ms),
    )


def make_batch_subscription(
    pattern: str | EventType,
    handler: BatchHandler,
    name: str | None,
    max_records: int,
    max_wait_ms: int,
    topics: frozenset[str] | None = None,
    timeout_ms: int | None = None,
) -> BatchSubscription:
    if max_records < 1 or max_wait_ms < 0:
        raise ConfigurationError(
            f"expected max_records >= 1 and max_wait_ms >= 0, got {max_records} and {max_wait_ms}"
        )
    _require_async(handler)
    return BatchSubscription(
        pattern_text(pattern),
        name or handler_name(handler),
        handler,
        max_records,
        max_wait_ms,
        topics,
        _timeout_seconds(timeout_ms),
    )


def _timeout_seconds(timeout_ms: int | None) -> float | None:
    if timeout_ms is None:
        return None
    if timeout_ms <= 0:
        raise ConfigurationError(f"expected timeout_ms > 0 or None, got {timeout_ms}")
    return timeout_ms / 1000


def topic_restriction(
    routing: Routing, pattern: str | EventType, kinds: Iterable[str] | None
) -> frozenset[str] | None:
    """The topic names ``kinds`` (``events``, ``tokens``, ``alerts``, ``control``) stand for,
    checked against what ``pattern`` can match; None when not restricted."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = [kinds]
    wanted = tuple(dict.fromkeys(kinds))
    unknown = [k for k in wanted if k not in SUBSCRIBABLE_KINDS]
    if unknown or not wanted:
        raise ConfigurationError(
            f"expected topic kinds among {SUBSCRIBABLE_KINDS}, got {list(wanted)!r}"
        )
    text = pattern_text(pattern)
    possible = routing.topics_for_pattern(text)
    topics = frozenset(routing.topic(k) for k in wanted) & possible
    if not topics:
        raise ConfigurationError(
            f"expected topics that can hold {text!r} events ({sorted(possible)}), "
            f"got kinds {list(wanted)!r}"
        )
    return topics
