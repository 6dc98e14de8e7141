"""Corail's ``EventBus``, shipping every event it sees to Kafka.

>>> bus = EventBus(publisher, agent_id="my-agent")          # publisher: the pod's KafkaPublisher
>>> bus.subscribe(EventType.TOOL_CALLED, on_tool_called)     # exact type
>>> bus.subscribe("tool.*", on_any_tool_event)               # glob (beyond the seed)
>>> bus.subscribe("*", audit_log)                            # everything
>>> with bus.scope(session_id="s-1", user_id="u-7"):         # ids for events emitted inside
...     await bus.emit(Event(type=EventType.TOOL_CALLED, data={"name": "calc", "args": {}}))

``emit`` records the event (history), stamps the scope's ids where the event's own are empty,
hands it to the publisher (encode and enqueue: no network wait), then runs the matching
handlers concurrently: exact-type ones, then glob ones, then ``"*"`` ones. A handler's error
is logged with its name and the event type and never reaches the emitter.

``emit_sync`` does the recording and shipping at once, in the caller's order, and schedules
only the handlers: on the running loop, or from another thread on the loop the bus was
started on. Without any loop the event is still recorded and shipped (Corail only recorded it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from msgspec.structs import replace

from agentstream.schemas import Event
from agentstream.schemas.ids import new_event_id
from agentstream.schemas.routing import matches
from agentstream.schemas.throttle import ThrottledLog

from ._failures import FailureLog
from .scope import EMPTY_SCOPE, Scope, event_scope, get_scope

if TYPE_CHECKING:
    from agentstream.schemas.settings import KafkaSettings

    from .control import ControlListener

__all__ = ["DEFAULT_HISTORY_SIZE", "EventBus", "Handler", "Publisher"]

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_SIZE = 1000
_WILDCARD = "*"
_MAX_TRACKED_SESSIONS = 10_000
_MAX_TRACKED_AGENTS = 1_000
_MAX_LOCAL_IDS = 1_000
_MAX_CACHED_TYPES = 4_096  # dispatch tables kept; types past it are matched at each emit

Handler = Callable[[Event], Awaitable[None] | None]
"""``async def handler(event) -> None`` (Corail's shape); a plain function works too."""


class Publisher(Protocol):
    """What the bus and ``KafkaCollector`` need from ``KafkaPublisher``."""

    def publish(self, event: Event) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self, timeout: float | None = None) -> None: ...


def _pattern_key(event_type: object) -> str:
    """A subscription key: EventType members (ours or any enum with a str value) → value."""
    value = getattr(event_type, "value", event_type)
    if not isinstance(value, str):
        raise TypeError(f"expected an EventType, a type string, a glob or '*', got {event_type!r}")
    return value


def _handler_name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)


class EventBus:
    """In-process pub/sub for one agent pod (Corail's API) that also ships events to Kafka.

    ``publisher``: the pod's shared publisher (``None``: local only, as Corail).
    ``agent_id``: stamped on events that carry none (after the scope's), and the agent whose
    control directives this bus receives. ``control``: a
    :class:`~agentstream.producer.control.ControlListener`, started by :meth:`start`
    (or ``async with bus``) and stopped by :meth:`close`.
    """

    def __init__(
        self,
        publisher: Publisher | None = None,
        *,
        agent_id: str = "",
        control: ControlListener | None = None,
        history_size: int = DEFAULT_HISTORY_SIZE,
    ) -> None:
        self.publisher = publisher
        self.agent_id = agent_id
        self.control = control
        # Copy-on-write: subscribe() and unsubscribe() (under the lock) build new ones and swap
        # them in, so that an emit on another thread never iterates a dict being changed.
        self._handlers: dict[str, tuple[Handler, ...]] = {}
        self._dispatch_cache: dict[str, tuple[Handler, ...]] = {}
        self._subscribing = threading.Lock()
        self.skipped_handler_runs = 0
        """Events emitted with handlers to run and no event loop to run them on."""
        self._skipped = ThrottledLog(logger)
        self._history: deque[Event] = deque(maxlen=history_size)
        self._tasks: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: dict[str, None] = {}  # least recently emitted in first
        self._agents: dict[str, None] = {}  # the agents this bus emitted for (scopes name them)
        self._local_ids: dict[str, None] = {}
        self.handler_errors = 0
        self.publish_failures = FailureLog("EventBus publish")

    # --- subscriptions ----------------------------------------------------------------------

    def subscribe(self, event_type: object, handler: Handler) -> None:
        """Call ``handler`` for events of ``event_type`` (an EventType, a type string, a glob
        such as ``"tool.*"``, or ``"*"``). Subscribing twice calls it twice."""
        key = _pattern_key(event_type)
        with self._subscribing:
            handlers = dict(self._handlers)
            handlers[key] = (*handlers.get(key, ()), handler)
            self._swap(handlers)

    def unsubscribe(self, event_type: object, handler: Handler) -> None:
        """Remove the first subscription of ``handler`` to ``event_type`` (no-op if none)."""
        key = _pattern_key(event_type)
        with self._subscribing:
            current = self._handlers.get(key, ())
            try:
                index = current.index(handler)
            except ValueError:
                return
            handlers = dict(self._handlers)
            rest = (*current[:index], *current[index + 1 :])
            if rest:
                handlers[key] = rest
            else:
                del handlers[key]
            self._swap(handlers)

    def _swap(self, handlers: dict[str, tuple[Handler, ...]]) -> None:
        # The map first, then a new cache: a reader takes the cache before the map (see
        # _handlers_for), so no result of an older map lands in the new cache.
        self._handlers = handlers
        self._dispatch_cache = {}

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions exist (duplicates counted)."""
        return sum(len(handlers) for handlers in self._handlers.values())

    def _handlers_for(self, event_type: str) -> tuple[Handler, ...]:
        cache = self._dispatch_cache  # before the map: see _swap
        subscribed = self._handlers
        handlers = cache.get(event_type)
        if handlers is None:
            globs = [
                h
                for pattern, hs in subscribed.items()
                if pattern not in (event_type, _WILDCARD) and matches(pattern, event_type)
                for h in hs
            ]
            exact = subscribed.get(event_type, ())
            handlers = (*exact, *globs, *subscribed.get(_WILDCARD, ()))
            if len(cache) < _MAX_CACHED_TYPES:  # types may come from tool or request names
                cache[event_type] = handlers
        return handlers

    # --- history ----------------------------------------------------------------------------

    @property
    def history(self) -> list[Event]:
        """The last ``history_size`` (1000) events seen here, newest first."""
        return list(reversed(self._history))

    def clear_history(self) -> None:
        self._history.clear()

    # --- scope ------------------------------------------------------------------------------

    def scope(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> AbstractContextManager[Scope]:
        """Stamp these ids on events emitted inside the ``with`` block where the event's own
        are empty (see :mod:`agentstream.producer.scope`; shared with ``KafkaCollector``)."""
        return event_scope(
            session_id=session_id, user_id=user_id, agent_id=agent_id, turn_id=turn_id
        )

    # --- emitting ---------------------------------------------------------------------------

    async def emit(self, event: Event) -> None:
        """Record and ship ``event``, then run the matching handlers concurrently."""
        if self._loop is None or self._loop.is_closed():  # a later asyncio.run() rebinds it
            self._loop = asyncio.get_running_loop()
        self._record(event)
        handlers = self._dispatch_cache.get(event.type)
        if handlers is None:
            handlers = self._handlers_for(event.type)
        if handlers:
            await self._dispatch(event, handlers)

    def emit_sync(self, event: Event) -> None:
        """Fire-and-forget from synchronous code: records and ships ``event`` now (in call
        order), and schedules the handlers on the running loop, or from another thread on the
        bus's loop (the one it was started or first awaited on). With no loop at all the
        handlers cannot run; the event is still recorded and shipped."""
        self._record(event)
        handlers = self._dispatch_cache.get(event.type)
        if handlers is None:
            handlers = self._handlers_for(event.type)
        if handlers:
            self._schedule(event, handlers)

    async def emit_local(self, event: Event) -> None:
        """Record ``event`` and run its handlers, never shipping it (control directives
        received from Kafka come in this way: a handler that re-emits one cannot loop it
        back)."""
        self._mark_local(event.event_id)
        self._history.append(event)
        handlers = self._handlers_for(event.type)
        if handlers:
            await self._dispatch(event, handlers)

    def _record(self, event: Event) -> None:
        scope = get_scope()
        if scope is not EMPTY_SCOPE:
            if not event.session_id:
                event.session_id = scope.session_id
            if not event.user_id:
                event.user_id = scope.user_id
            if not event.agent_id:
                event.agent_id = scope.agent_id
            if not event.turn_id:
                event.turn_id = scope.turn_id
        if not event.agent_id:
            event.agent_id = self.agent_id
        self._history.append(event)
        if self.control is not None:
            if event.session_id:
                _note(self._sessions, event.session_id, _MAX_TRACKED_SESSIONS)
            if event.agent_id and event.agent_id != self.agent_id:
                _note(self._agents, event.agent_id, _MAX_TRACKED_AGENTS)
        if self.publisher is None or (self._local_ids and event.event_id in self._local_ids):
            return
        if event.seq:  # published before: the same object emitted again is another event
            event = replace(event, event_id=new_event_id())
        try:
            self.publisher.publish(event)
        except Exception as exc:
            self.publish_failures.record(exc, f"publish({event.type})")

    def _schedule(self, event: Event, handlers: tuple[Handler, ...]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._track(loop.create_task(self._dispatch(event, handlers)))
            return
        bus_loop = self._loop
        if bus_loop is not None and bus_loop.is_running() and not bus_loop.is_closed():
            bus_loop.call_soon_threadsafe(self._spawn, event, handlers)
            return
        self.skipped_handler_runs += 1
        self._skipped(
            "no-loop",
            "emit_sync(%s) on a thread without an event loop, and the bus's loop is not running: "
            "its %d handler(s) not run (the event is recorded and shipped; await bus.start() "
            "or emit once on the loop that should run them)",
            event.type,
            len(handlers),
        )

    def _spawn(self, event: Event, handlers: tuple[Handler, ...]) -> None:
        self._track(asyncio.ensure_future(self._dispatch(event, handlers)))

    def _track(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, event: Event, handlers: tuple[Handler, ...]) -> None:
        if len(handlers) == 1:
            await self._safe_call(handlers[0], event)
        else:
            await asyncio.gather(*(self._safe_call(h, event) for h in handlers))

    async def _safe_call(self, handler: Handler, event: Event) -> None:
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # the emitter itself is cancelled: it goes on
                raise
            # The handler awaited something cancelled elsewhere: a handler's error like any
            # other (Corail's gather(return_exceptions=True) kept it from the emitter too).
            self.handler_errors += 1
            logger.error(
                "EventBus handler %s failed for %s: %r", _handler_name(handler), event.type, exc
            )
        except Exception as exc:
            self.handler_errors += 1
            logger.error(
                "EventBus handler %s failed for %s: %r",
                _handler_name(handler),
                event.type,
                exc,
                exc_info=exc,
            )

    # --- bookkeeping for the control channel ------------------------------------------------

    def has_session(self, session_id: str) -> bool:
        """Whether this bus emitted in ``session_id`` recently (the 10,000 sessions emitted
        in last; tracked only when a control listener is attached)."""
        return session_id in self._sessions

    def has_agent(self, agent_id: str) -> bool:
        """Whether this bus emitted events of ``agent_id`` recently: its own ``agent_id``, or
        one a scope gave (the 1,000 last; tracked only when a control listener is attached)."""
        return bool(agent_id) and (agent_id == self.agent_id or agent_id in self._agents)

    def _mark_local(self, event_id: str) -> None:
        self._local_ids[event_id] = None
        if len(self._local_ids) > _MAX_LOCAL_IDS:
            del self._local_ids[next(iter(self._local_ids))]

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the bus to the running loop and start the control listener, if any."""
        self._loop = asyncio.get_running_loop()
        if self.control is not None:
            await self.control.start(self)

    async def enable_control(self, settings: KafkaSettings, **options: Any) -> ControlListener:
        """Create and start a control listener for this bus's agent."""
        from .control import ControlListener

        if self.control is not None:
            raise RuntimeError("expected a bus without a control listener, this one has one")
        self.control = ControlListener(settings, **options)
        await self.start()
        return self.control

    async def close(self) -> None:
        """Stop the control listener and wait for scheduled handlers. The publisher is
        shared and not closed here: close it where it was created, after the bus."""
        if self.control is not None:
            await self.control.stop()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        # A task that finished just before may not have run its done-callback yet (Python
        # 3.12 schedules it later than 3.11): closed means no reference is left.
        self._tasks = {t for t in self._tasks if not t.done()}

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _note(recent: dict[str, None], key: str, limit: int) -> None:
    """``key`` used now: last in ``recent`` (the least recently used first out past ``limit``).
    emit_sync may run in several threads at once: a racing change is harmless here."""
    with contextlib.suppress(RuntimeError, KeyError, StopIteration):
        if key in recent:
            if next(reversed(recent)) != key:
                del recent[key]
                recent[key] = None
            return
        recent[key] = None
        if len(recent) > limit:
            del recent[next(iter(recent))]
