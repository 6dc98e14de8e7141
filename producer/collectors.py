"""Audit collectors: where an :class:`~agentstream.producer.audit.AuditEmitter` sends events.

Calute's three (``InMemoryCollector``, ``JSONLSinkCollector``, ``CompositeCollector``) with
their API, plus :class:`KafkaCollector`, which turns each audit event into an envelope and
hands it to the pod's :class:`~agentstream.producer.bus.Publisher`.

Unlike Calute, a failing child of a :class:`CompositeCollector` is logged and counted and the
other children still get the event.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

from agentstream.schemas import Event
from agentstream.schemas.catalogue import AUDIT_PREFIX

from ._failures import FailureLog
from .adapters import as_id, plain_data, to_utc, wire_type
from .audit_events import AuditEvent
from .scope import get_scope

if TYPE_CHECKING:
    from agentstream.schemas.settings import KafkaSettings

    from .bus import Publisher

__all__ = [
    "AuditCollector",
    "AuditEventLike",
    "CompositeCollector",
    "FailureLog",
    "InMemoryCollector",
    "JSONLSinkCollector",
    "KafkaCollector",
    "audit_envelope",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class AuditEventLike(Protocol):
    """What a collector accepts: Calute's, Xerxes' and our own audit events all qualify."""

    event_type: str

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class AuditCollector(Protocol):
    """Calute's collector protocol."""

    def emit(self, event: Any) -> None: ...

    def flush(self) -> None: ...


def _to_json(event: Any) -> str:
    to_json = getattr(event, "to_json", None)
    if callable(to_json):
        return str(to_json())
    return json.dumps(event.to_dict(), default=str)


class InMemoryCollector:
    """Keeps every event in a lock-protected list (tests, debugging)."""

    def __init__(self) -> None:
        self._events: list[Any] = []
        self._lock = threading.Lock()

    def emit(self, event: Any) -> None:
        with self._lock:
            self._events.append(event)

    def flush(self) -> None:
        """Nothing is buffered."""

    def get_events(self) -> list[Any]:
        """A copy of the events, in insertion order."""
        with self._lock:
            return list(self._events)

    def get_events_by_type(self, event_type: str) -> list[Any]:
        with self._lock:
            return [e for e in self._events if e.event_type == event_type]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


class JSONLSinkCollector:
    """One JSON object per line, to a path (opened in append mode, owned: ``close()`` closes
    it) or to an open text stream (not owned: ``close()`` only flushes it)."""

    def __init__(self, sink: str | os.PathLike[str] | IO[str]) -> None:
        self._lock = threading.Lock()
        self._owned = isinstance(sink, str | os.PathLike)
        self._stream: IO[str] = (
            open(sink, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
            if isinstance(sink, str | os.PathLike)
            else sink
        )
        self._closed = False

    def emit(self, event: Any) -> None:
        line = _to_json(event) + "\n"
        with self._lock:
            if self._closed:
                raise ValueError(
                    f"expected an open JSONL sink, got a closed one ({self._stream!r})"
                )
            self._stream.write(line)

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stream.flush()
            if self._owned:
                self._stream.close()


class CompositeCollector:
    """Forwards emit and flush to every child in order; a failing child is logged and counted
    (:attr:`failures`) and does not keep the event from the children after it."""

    def __init__(self, collectors: Iterable[AuditCollector] | None = None) -> None:
        self._collectors: list[AuditCollector] = list(collectors or ())
        self._lock = threading.Lock()
        self.failures = FailureLog("a CompositeCollector child")

    def add(self, collector: AuditCollector) -> None:
        with self._lock:
            self._collectors.append(collector)

    @property
    def collectors(self) -> list[AuditCollector]:
        with self._lock:
            return list(self._collectors)

    def emit(self, event: Any) -> None:
        for collector in self.collectors:
            try:
                collector.emit(event)
            except Exception as exc:
                self.failures.record(
                    exc, f"{type(collector).__name__}.emit({getattr(event, 'event_type', '?')})"
                )

    def flush(self) -> None:
        for collector in self.collectors:
            try:
                collector.flush()
            except Exception as exc:
                self.failures.record(exc, f"{type(collector).__name__}.flush()")


_ENVELOPE_FIELDS = frozenset({"event_type", "timestamp", "agent_id", "turn_id", "session_id"})


def audit_envelope(event: Any, *, agent_id: str = "") -> Event:
    """The envelope of an audit event (ours, Calute's or Xerxes'): type
    ``audit.<event_type>``, the event's timestamp, its ids as envelope fields (empty ones
    filled from the current :func:`~agentstream.producer.scope.event_scope`, then
    ``agent_id``), and every other field (severity, metadata, class fields) in ``data``.

    Foreign events (any object with ``event_type`` and ``to_dict()``; dataclasses whose
    ``to_dict()`` is ``asdict``, as Calute's and Xerxes', are read field by field) keep every field,
    converted to plain values (:func:`~agentstream.producer.adapters.plain_data`: an object
    the wire cannot carry becomes its ``str()``, as in Calute's JSONL sink); an
    ``event_type`` that cannot be a type tag is made one, the original kept in
    ``data["event_type"]``."""
    data_fields = _data_fields(type(event))
    if data_fields is not None:  # one of ours: read the fields, no intermediate dict
        return _own_envelope(event, data_fields, agent_id)
    fields = _foreign_fields(event)
    data = plain_data({k: v for k, v in fields.items() if k not in _ENVELOPE_FIELDS})
    timestamp, ev_agent, ev_session, ev_turn = (
        fields.get("timestamp"),
        fields.get("agent_id"),
        fields.get("session_id"),
        fields.get("turn_id"),
    )
    raw_type = str(event.event_type)
    type_ = wire_type(raw_type, prefix=AUDIT_PREFIX)
    if type_ != AUDIT_PREFIX + raw_type:
        data["event_type"] = raw_type
    scope = get_scope()
    return Event(
        type=type_,
        timestamp=to_utc(timestamp, "audit event"),
        agent_id=as_id(ev_agent) or scope.agent_id or agent_id,
        session_id=as_id(ev_session) or scope.session_id,
        turn_id=as_id(ev_turn) or scope.turn_id,
        user_id=scope.user_id,
        data=data,
    )


def _own_envelope(event: AuditEvent, data_fields: tuple[str, ...], agent_id: str) -> Event:
    """:func:`audit_envelope` for one of our :class:`AuditEvent` classes: fields read
    directly."""
    data = {name: getattr(event, name) for name in data_fields}
    data["metadata"] = dict(event.metadata)
    return _audit_event(
        AUDIT_PREFIX + event.event_type,
        to_utc(event.timestamp, "audit event"),
        (event.agent_id, event.session_id, event.turn_id),
        data,
        agent_id,
    )


def _audit_event(
    type_: str, timestamp: datetime, ids: tuple[Any, Any, Any], data: dict[str, Any], agent_id: str
) -> Event:
    """The envelope of one of our audit events (the emitter's hot path): ids used as they are
    when they are strings, empty ones taken from the scope (the agent id then from the
    collector)."""
    ev_agent, ev_session, ev_turn = ids
    ev_agent, ev_session, ev_turn = ev_agent or "", ev_session or "", ev_turn or ""
    if type(ev_agent) is not str or type(ev_session) is not str or type(ev_turn) is not str:
        ev_agent, ev_session, ev_turn = as_id(ev_agent), as_id(ev_session), as_id(ev_turn)
    scope = get_scope()
    return Event(
        type=type_,
        timestamp=timestamp,
        agent_id=ev_agent or scope.agent_id or agent_id,
        session_id=ev_session or scope.session_id,
        turn_id=ev_turn or scope.turn_id,
        user_id=scope.user_id,
        data=data,
    )


_FOREIGN_FIELDS: dict[type, tuple[str, ...] | None] = {}


def _foreign_fields(event: Any) -> dict[str, Any]:
    """The fields of a foreign audit event. Calute's and Xerxes' events are dataclasses whose
    ``to_dict()`` is ``asdict(self)``: those are read field by field instead (the same dict,
    without ``asdict``'s deep copy, which costs more than the rest of the envelope; the
    values are copied by :func:`plain_data` anyway). Any other ``to_dict()`` is called."""
    cls = type(event)
    names = _FOREIGN_FIELDS.get(cls, ())
    if names == ():
        code = getattr(getattr(cls, "to_dict", None), "__code__", None)
        plain_asdict = code is not None and code.co_names == ("asdict",)  # return asdict(self)
        names = _FOREIGN_FIELDS[cls] = (
            tuple(f.name for f in dataclasses.fields(cls))
            if plain_asdict and dataclasses.is_dataclass(cls)
            else None
        )
    if names is None:
        return dict(event.to_dict())
    return {name: getattr(event, name) for name in names}


_DATA_FIELDS: dict[type, tuple[str, ...]] = {}


def _data_fields(cls: type) -> tuple[str, ...] | None:
    """The non-envelope field names of one of our audit event classes (None for others)."""
    names = _DATA_FIELDS.get(cls)
    if names is None:
        if not (isinstance(cls, type) and issubclass(cls, AuditEvent)):
            return None
        names = _DATA_FIELDS[cls] = tuple(
            f.name for f in dataclasses.fields(cls) if f.name not in _ENVELOPE_FIELDS
        )
    return names


class KafkaCollector:
    """Publishes every audit event to Kafka through the pod's shared publisher.

    ``emit`` maps the event with :func:`audit_envelope` and calls ``publisher.publish``: it
    encodes and enqueues, never waits on the network. ``flush()`` waits until everything
    published so far is acknowledged, up to ``flush_timeout`` seconds (logged when it is not).
    A collector built by :meth:`from_settings` owns its publisher and closes it in
    :meth:`close`.

    Neither ``emit`` nor ``flush`` raises: Calute's and Xerxes' own ``AuditEmitter`` call
    collectors without isolation, so an error here would reach the agent's tool call. A
    failure is logged (1st, 10th, 100th...) and counted in :attr:`failures`.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        agent_id: str = "",
        flush_timeout: float | None = 30.0,
        owns_publisher: bool = False,
    ) -> None:
        self.publisher = publisher
        self.agent_id = agent_id
        self.flush_timeout = flush_timeout
        self._owns_publisher = owns_publisher
        self.failures = FailureLog("KafkaCollector")

    @classmethod
    def from_settings(
        cls, settings: KafkaSettings, *, agent_id: str = "", **publisher_options: Any
    ) -> KafkaCollector:
        """A collector with its own :class:`~agentstream.producer.publisher.KafkaPublisher`
        (prefer sharing the pod's one publisher with the EventBus)."""
        from .publisher import KafkaPublisher

        return cls(
            KafkaPublisher(settings, **publisher_options), agent_id=agent_id, owns_publisher=True
        )

    def emit(self, event: Any) -> None:
        try:
            self.publisher.publish(audit_envelope(event, agent_id=self.agent_id))
        except Exception as exc:
            self.failures.record(exc, f"emit({getattr(event, 'event_type', event)!r})")

    def emit_fields(
        self, cls: type[AuditEvent], ids: tuple[Any, Any, Any], fields: dict[str, Any]
    ) -> None:
        """What ``emit`` does with the event ``cls(**fields)`` carrying ``ids`` (agent,
        session, turn), without building that object (see :func:`fields_sink`): the same
        envelope, stamped now, its data the class's severity, empty metadata, then ``fields``
        (which name class fields, in class order)."""
        data: dict[str, Any] = {"severity": cls.severity, "metadata": {}, **fields}
        try:
            event = _audit_event(
                AUDIT_PREFIX + cls.event_type, datetime.now(UTC), ids, data, self.agent_id
            )
            self.publisher.publish(event)
        except Exception as exc:
            self.failures.record(exc, f"emit({cls.event_type!r})")

    def flush(self) -> None:
        try:
            done = self.publisher.flush(self.flush_timeout)
        except Exception as exc:
            self.failures.record(exc, "flush()")
            return
        if not done:
            logger.warning(
                "KafkaCollector.flush: not every audit event was acknowledged within %ss",
                self.flush_timeout,
            )

    def close(self) -> None:
        if self._owns_publisher:
            self.publisher.close()
        else:
            self.flush()


FieldsSink = Callable[[type[AuditEvent], tuple[Any, Any, Any], dict[str, Any]], None]
"""``sink(cls, (agent_id, session_id, turn_id), fields)``: one audit event, as its fields."""


def fields_sink(collector: object) -> FieldsSink | None:
    """How an :class:`~agentstream.producer.audit.AuditEmitter` may hand ``collector`` its
    events as fields instead of event objects, or None when it may not.

    Only a :class:`KafkaCollector` whose ``emit`` is not overridden: it only turns the object
    into an envelope, so the object need not exist (building it, its ISO timestamp and parsing
    that back cost more than the rest of the envelope). Any other collector (a subclass that
    looks at the events, a :class:`CompositeCollector`) gets Calute's event objects.
    """
    if isinstance(collector, KafkaCollector) and type(collector).emit is KafkaCollector.emit:
        return collector.emit_fields
    return None
