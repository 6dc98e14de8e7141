"""Pairing the start of a call with its outcome inside a session, with bounded memory.

A duration needs two events: ``tool.called`` then ``tool.result``/``tool.error``, or
``llm.call.started`` then ``llm.call.completed``. Both events of a call share the session,
hence the partition, so each instance of the service pairs the calls of its own partitions
and its state is dropped with them when they move to another instance.

Calls are matched by an explicit key when the events carry one (``call_id``, the LLM
``round``), else by name in order (first started, first finished), as Corail's tracing
listener does. Memory is bounded three ways: sessions (least recently started first out),
open calls per session (oldest first out) and age (``expire``: how long the service has
held a call, not how old its event claims to be, so a backlog drained hours late is paired
as it happened). The calls still open when their session's turn ends get no outcome either.
Every start dropped without its outcome is counted by reason, so operators see when
durations are incomplete.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable

DropCallback = Callable[[str, int], None]
"""Called with ``(reason, count)`` when open calls are dropped without an outcome."""

EVICTED, EXPIRED, REVOKED = "evicted", "expired", "revoked"
SESSION_ENDED, TURN_ENDED = "session_ended", "turn_ended"


class _Session:
    __slots__ = ("open", "size", "touched")

    def __init__(self) -> None:
        self.open: dict[tuple[str, Hashable], deque[tuple[float, str]]] = {}  # (owner, key)
        self.size = 0
        self.touched = 0.0


class PendingCalls:
    """Open calls per session: ``start`` records one, ``finish`` takes its start back."""

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        max_per_session: int = 64,
        on_drop: DropCallback | None = None,
    ) -> None:
        if max_sessions < 1 or max_per_session < 1:
            raise ValueError(
                f"expected max_sessions and max_per_session >= 1, "
                f"got {max_sessions} and {max_per_session}"
            )
        self._sessions: dict[str, _Session] = {}
        self._max_sessions = max_sessions
        self._max_per_session = max_per_session
        self._on_drop = on_drop

    def __len__(self) -> int:
        """Open calls over all sessions."""
        return sum(s.size for s in self._sessions.values())

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def start(
        self, session: str, owner: str, key: Hashable, at: float, info: str = "", *, seen: float
    ) -> None:
        """A call started at ``at`` (seconds, the event's time), ``seen`` by the service then
        (its clock, for :meth:`expire`); ``info`` comes back with it (a model name)."""
        state = self._sessions.pop(session, None)
        if state is None:
            state = _Session()
            if len(self._sessions) >= self._max_sessions:
                oldest = next(iter(self._sessions))
                self._drop(self._sessions.pop(oldest).size, EVICTED)
        self._sessions[session] = state  # most recently started last
        if state.size >= self._max_per_session:
            self._drop_oldest_call(state)
        queue = state.open.get((owner, key))
        if queue is None:
            queue = state.open[owner, key] = deque()
        queue.append((at, info))
        state.size += 1
        state.touched = seen

    def finish(self, session: str, owner: str, key: Hashable) -> tuple[float, str] | None:
        """The ``(start, info)`` of ``owner``'s oldest open call under ``key``, or None."""
        state = self._sessions.get(session)
        if state is None:
            return None
        queue = state.open.get((owner, key))
        if not queue:
            return None
        found = queue.popleft()
        if not queue:
            del state.open[owner, key]
        state.size -= 1
        if not state.size:
            del self._sessions[session]
        return found

    def end_session(self, session: str) -> None:
        """The session ended: its open calls get no outcome."""
        state = self._sessions.pop(session, None)
        if state is not None:
            self._drop(state.size, SESSION_ENDED)

    def end_owner(self, session: str, owner: str) -> None:
        """``owner``'s turn in ``session`` ended: its open calls get no outcome; those of other
        owners (an agent it called) stay open."""
        state = self._sessions.get(session)
        if state is None:
            return
        ended = [key for key in state.open if key[0] == owner]
        dropped = sum(len(state.open.pop(key)) for key in ended)
        if dropped:
            state.size -= dropped
            if not state.size:
                del self._sessions[session]
            self._drop(dropped, TURN_ENDED)

    def expire(self, started_before: float) -> None:
        """Drop sessions whose latest start was seen before ``started_before``."""
        stale = [k for k, s in self._sessions.items() if s.touched < started_before]
        for key in stale:
            self._drop(self._sessions.pop(key).size, EXPIRED)

    def clear(self, reason: str = REVOKED) -> None:
        dropped = len(self)
        self._sessions.clear()
        self._drop(dropped, reason)

    def _drop_oldest_call(self, state: _Session) -> None:
        key = min(state.open, key=lambda k: state.open[k][0][0])
        queue = state.open[key]
        queue.popleft()
        if not queue:
            del state.open[key]
        state.size -= 1
        self._drop(1, EVICTED)

    def _drop(self, count: int, reason: str) -> None:
        if count and self._on_drop is not None:
            self._on_drop(reason, count)
