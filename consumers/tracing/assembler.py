"""Routing events to the turns they belong to, and deciding when a turn is finished.

A turn is identified by ``(scope, session_id, key)``: the scope is the Kafka partition it is
read from (so a revoked partition's turns can be dropped), the key is the event's ``turn_id``
(Calute, or any producer that stamps one) or, for events without one (Corail), the event id
of the ``message.received`` that opened it. An event without a ``turn_id`` joins the turn most
recently opened in its session (a Calute turn opened inside an open Corail request's tool call
leaves the request's events to the request); a
``message.received`` without one starts a new turn (a turn still open there is closed as
``superseded``).

A turn finishes on ``audit.turn_end`` / ``turn.ended``; Corail's ``message.response``, which
comes right after ``turn.ended``, still becomes the root's output when it arrives before
:meth:`TraceAssembler.settle` (the service settles after each batch, before exporting).
A turn is otherwise closed incomplete:
after ``idle_timeout`` without events (:meth:`TraceAssembler.expire`), when it grows older than
``max_turn_duration`` in event time, or when it is the least recently active turn and the
number of open turns exceeds ``max_open_turns`` (LRU eviction).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from agentstream.schemas import Event

from .spans import Trace
from .turn import TRACED_TYPES, TURN_END_TYPES, TurnBuilder, TurnLimits, time_ns

TurnRef = tuple[Hashable, str, str]  # (scope, session_id, turn key)


@dataclass(slots=True)
class _OpenTurn:
    builder: TurnBuilder
    touched: float  # monotonic time of the last event
    named: bool = False  # opened by an event with a turn_id (Calute), not a Corail request


class TraceAssembler:
    """Pure assembly: events in, finished traces out. No I/O, no Kafka, no clock but the one
    given (monotonic seconds, for idle timeouts)."""

    def __init__(
        self,
        *,
        limits: TurnLimits | None = None,
        max_open_turns: int = 10_000,
        idle_timeout_s: float = 300.0,
        max_turn_duration_s: float = 3_600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_open_turns < 1:
            raise ValueError(f"max_open_turns must be at least 1, got {max_open_turns}")
        self.limits = limits or TurnLimits()
        self.max_open_turns = max_open_turns
        self.idle_timeout_s = idle_timeout_s
        self.max_turn_duration_ns = int(max_turn_duration_s * 1e9)
        self._clock = clock
        self._turns: OrderedDict[TurnRef, _OpenTurn] = OrderedDict()
        self._current: dict[tuple[Hashable, str], str] = {}
        self._ended: dict[tuple[Hashable, str], TurnBuilder] = {}
        self._closed: OrderedDict[TurnRef, None] = OrderedDict()  # the last max_open_turns
        self.ignored: Counter[str] = Counter()
        """Traced events that belonged to no turn, by reason (for the service's metrics)."""

    @property
    def open_turns(self) -> int:
        return len(self._turns)

    def add(self, event: Event, scope: Hashable = None) -> list[Trace]:
        """Apply one event; return the traces this finished (usually none, or its own turn)."""
        if event.type not in TRACED_TYPES:
            return []
        finished: list[Trace] = []
        ref = self._route(event, scope, finished)
        if ref is None:
            ended = self._ended.get((scope, event.session_id))
            if event.type == "message.response" and ended is not None:
                ended.set_response(event.data if isinstance(event.data, dict) else {})
            else:
                self.ignored["outside_turn"] += 1
            return finished
        entry = self._turns.get(ref)
        if entry is None and ref in self._closed:
            # Its trace went out already: a builder opened again would send the same trace and
            # root span ids again, without the turn's start (a backend keeps one of the two)
            self.ignored["closed_turn"] += 1
            return finished
        if entry is None:
            named = bool(event.turn_id)
            entry = _OpenTurn(TurnBuilder(ref[1], ref[2], event, self.limits), self._clock(), named)
            self._turns[ref] = entry
            self._make_current(scope, ref, named=named)
        else:
            entry.touched = self._clock()
            self._turns.move_to_end(ref)
        builder = entry.builder
        if not builder.add(event):
            self.ignored["duplicate"] += 1
        if builder.ended:
            finished.append(self._close(ref, None))
        elif time_ns(event.timestamp) - builder.started_ns > self.max_turn_duration_ns:
            finished.append(self._close(ref, "max_duration"))
        while len(self._turns) > self.max_open_turns:
            oldest = next(iter(self._turns))
            finished.append(self._close(oldest, "evicted"))
        return finished

    def _make_current(self, scope: Hashable, ref: TurnRef, *, named: bool) -> None:
        """The session's events without a ``turn_id`` go to the turn opened last, except that
        a turn opened by an event with one (Calute code running inside a Corail request's
        tool) does not take the place of an open Corail request: the request's later events,
        which have no ``turn_id``, still go to it."""
        key = (scope, ref[1])
        current = self._current.get(key)
        if named and current is not None:
            entry = self._turns.get((scope, ref[1], current))
            if entry is not None and not entry.named:
                return
        self._current[key] = ref[2]

    def _route(self, event: Event, scope: Hashable, finished: list[Trace]) -> TurnRef | None:
        session = event.session_id
        if event.turn_id:
            ref = (scope, session, event.turn_id)
            if ref in self._turns or event.type not in _NEVER_OPENS:
                return ref
            return None
        current = self._current.get((scope, session))
        current_ref = (scope, session, current) if current is not None else None
        if current_ref is not None and current_ref not in self._turns:
            current_ref = None
        if event.type == "message.received":
            if current_ref is not None:
                finished.append(self._close(current_ref, "superseded"))
            return (scope, session, event.event_id)
        if current_ref is not None:
            return current_ref
        if event.type in _NEVER_OPENS:
            return None
        return (scope, session, event.event_id)  # a turn whose opening event was not seen

    def expire(self) -> list[Trace]:
        """Close the turns idle for longer than ``idle_timeout`` (oldest activity first)."""
        deadline = self._clock() - self.idle_timeout_s
        finished: list[Trace] = []
        while self._turns:
            ref, entry = next(iter(self._turns.items()))
            if entry.touched > deadline:
                break
            finished.append(self._close(ref, "idle_timeout"))
        return finished

    def drop_scope(self, scope: Hashable) -> int:
        """Forget the open turns of one scope (a revoked partition); return how many."""
        refs = [ref for ref in self._turns if ref[0] == scope]
        for ref in refs:
            del self._turns[ref]
        for key in [key for key in self._current if key[0] == scope]:
            del self._current[key]
        for ref in [ref for ref in self._closed if ref[0] == scope]:
            del self._closed[ref]
        return len(refs)

    def settle(self) -> None:
        """The traces finished so far are being exported: late answers no longer reach them."""
        self._ended.clear()

    def _close(self, ref: TurnRef, reason: str | None) -> Trace:
        entry = self._turns.pop(ref)
        self._closed[ref] = None
        if len(self._closed) > self.max_open_turns:
            self._closed.popitem(last=False)
        if self._current.get((ref[0], ref[1])) == ref[2]:
            del self._current[(ref[0], ref[1])]
        if reason is None:
            self._ended[(ref[0], ref[1])] = entry.builder
        return entry.builder.finish(reason)


_NEVER_OPENS = TURN_END_TYPES | {"message.response"}
"""Types that only make sense inside a turn: alone, they are counted and ignored."""
