"""Turning what ``publish()`` enqueued into Kafka records, on the sender thread.

``publish()`` only stamps, redacts, encodes and enqueues a :data:`~._records.Pending` tuple:
the value, a snapshot of the envelope fields the headers and the key are made of
(:data:`~._records.HeaderFields`), the publish time and the publish index. The snapshot is
taken under the publisher's lock right after stamping, so a later change to the caller's
``Event`` object cannot make the headers disagree with the encoded value.

:class:`RecordFactory` builds topic, key and CloudEvents headers from it: byte for byte what
:func:`~agentstream.schemas.codec.event_headers`, :func:`~agentstream.schemas.codec.record_key`
and :meth:`~agentstream.schemas.routing.Routing.topic_for` give for the same event, but with
the per-type, per-source and per-session parts cached (bounded) and the constant headers built
once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TypeVar

from agentstream.schemas.codec import CONTENT_TYPES, Encoding, rfc3339
from agentstream.schemas.envelope import TYPE_PATTERN, checked_type
from agentstream.schemas.routing import Routing

from ._records import Pending, _Record, log

Header = tuple[str, bytes]

_SPECVERSION: Header = ("ce_specversion", b"1.0")
_MAX_CACHED = 4_096
_T = TypeVar("_T")


class RecordFactory:
    """Topic, key and CloudEvents headers for pending records (sender thread only)."""

    def __init__(self, routing: Routing, encoding: Encoding) -> None:
        self._routing = routing
        self._content_type: Header = ("content-type", CONTENT_TYPES[encoding].encode())
        self._types: dict[str, tuple[str, Header]] = {}  # type -> topic, ce_type
        self._sources: dict[str, tuple[bytes, Header]] = {}  # source -> key, ce_source
        self._sessions: dict[str, tuple[bytes, Header]] = {}  # session -> key, ce_sessionid
        self._agents: dict[str, Header] = {}
        self._turns: dict[str, Header] = {}
        self.refused: list[tuple[_Record, str]] = []
        """What :meth:`build` left out: a bare record (its value and publish index, to be
        finished) and why, naming the event; the caller empties it."""

    def build(self, pending: Iterable[Pending], first_index: int) -> list[_Record]:
        """One record per pending tuple, in order, with publish indices from ``first_index``.
        A tuple whose envelope fields cannot make headers (agent code set a field to another
        type) is left out and kept in :attr:`refused` with the reason, for the caller to count
        and finish."""
        types, sources, sessions = self._types, self._sources, self._sessions
        agents, turns = self._agents, self._turns
        content_type = self._content_type
        records: list[_Record] = []
        append = records.append
        for index, (value, fields, created) in enumerate(pending, first_index):
            try:
                event_id, type_, source, timestamp, seq, session, agent, turn = fields
                topic, type_header = types.get(type_) or self._type(type_)
                source_key, source_header = sources.get(source) or self._source(source)
                headers = [
                    _SPECVERSION,
                    ("ce_id", event_id.encode()),
                    type_header,
                    source_header,
                    ("ce_time", rfc3339(timestamp)),
                    content_type,
                    ("ce_sequence", str(seq).encode()),
                ]
                if session:
                    key, session_header = sessions.get(session) or self._session(session)
                    headers.append(session_header)
                else:
                    key = source_key
                if agent:
                    headers.append(agents.get(agent) or _cached(agents, agent, "ce_agentid"))
                if turn:
                    headers.append(turns.get(turn) or _cached(turns, turn, "ce_turnid"))
            except Exception as exc:  # never stops the records after it
                why = field_problem(fields) or repr(exc)
                event_id = fields[0] if isinstance(fields, tuple) and fields else "?"
                bare = _Record("", b"", value, (), created, index)
                self.refused.append((bare, f"event {event_id}: unencodable: {why}"))
                continue
            append(_Record(topic, key, value, tuple(headers), created, index))
        return records

    def _type(self, type_: str) -> tuple[str, Header]:
        if isinstance(type_, str) and not checked_type(type_):  # once per type: it is cached
            log.warning(
                "event type %r is not a type tag (expected dotted lower-case words such as "
                "'tool.called', %s): its events are sent, and consumers will put them on the "
                "dead-letter topic",
                type_,
                TYPE_PATTERN,
            )
        entry = (self._routing.topic_for(type_), ("ce_type", str(type_).encode()))
        return _remember(self._types, type_, entry)

    def _source(self, source: str) -> tuple[bytes, Header]:
        entry = (source.encode(), ("ce_source", (source or "agentstream").encode()))
        return _remember(self._sources, source, entry)

    def _session(self, session: str) -> tuple[bytes, Header]:
        key = session.encode()
        return _remember(self._sessions, session, (key, ("ce_sessionid", key)))


_FIELDS: tuple[tuple[str, type], ...] = (
    ("event_id", str),
    ("type", str),
    ("source", str),
    ("timestamp", datetime),
    ("seq", int),
    ("session_id", str),
    ("agent_id", str),
    ("turn_id", str),
)


def field_problem(fields: object) -> str | None:
    """What is wrong with a snapshot of envelope fields, said as expected against found."""
    if not isinstance(fields, tuple) or len(fields) != len(_FIELDS):
        return f"expected {len(_FIELDS)} envelope fields, got {fields!r:.80}"
    for (name, expected), value in zip(_FIELDS, fields, strict=True):
        naive = isinstance(value, datetime) and value.tzinfo is None
        if not isinstance(value, expected) or naive:
            what = "an aware datetime" if expected is datetime else expected.__name__
            return f"expected {name} as {what}, got {type(value).__name__} {value!r:.80}"
    return None


def _cached(cache: dict[str, Header], value: str, name: str) -> Header:
    return _remember(cache, value, (name, value.encode()))


def _remember(cache: dict[str, _T], key: str, entry: _T) -> _T:
    if len(cache) >= _MAX_CACHED:
        cache.clear()
    cache[key] = entry
    return entry
