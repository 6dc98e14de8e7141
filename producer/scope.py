"""Context ids for events: ``with event_scope(session_id=..., user_id=...):``.

Corail's runtime leaves ``agent_id``, ``user_id`` and ``session_id`` empty, and Kafka needs the
session to partition by. A scope stamps the ids onto every event emitted inside it -- through
an :class:`~agentstream.producer.bus.EventBus` or an ``AuditEmitter`` with a ``KafkaCollector``
-- where the event's own field is empty. It lives in a :class:`contextvars.ContextVar`, so it
follows ``asyncio`` tasks created inside it (each task gets a copy of the context) and stays
apart between threads. Nested scopes override the ids they name and inherit the others.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

__all__ = ["EMPTY_SCOPE", "Scope", "current_scope", "event_scope", "get_scope"]


@dataclass(frozen=True, slots=True)
class Scope:
    session_id: str = ""
    user_id: str = ""
    agent_id: str = ""
    turn_id: str = ""

    @property
    def empty(self) -> bool:
        return not (self.session_id or self.user_id or self.agent_id or self.turn_id)


EMPTY_SCOPE = Scope()
_current: contextvars.ContextVar[Scope] = contextvars.ContextVar(
    "agentstream_event_scope", default=EMPTY_SCOPE
)


def current_scope() -> Scope:
    """The ids in force here (:data:`EMPTY_SCOPE` outside any scope)."""
    return _current.get()


get_scope = _current.get
""":func:`current_scope` without the wrapper call, for hot paths."""


@contextmanager
def event_scope(
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    agent_id: str | None = None,
    turn_id: str | None = None,
) -> Iterator[Scope]:
    """Stamp these ids on events emitted inside the block (``None`` keeps the outer value)."""
    outer = _current.get()
    changes = {
        name: value
        for name, value in (
            ("session_id", session_id),
            ("user_id", user_id),
            ("agent_id", agent_id),
            ("turn_id", turn_id),
        )
        if value is not None
    }
    scope = replace(outer, **changes) if changes else outer
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)
