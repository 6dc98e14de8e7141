"""The store interface: what the persistence service writes through and readers query.

Two implementations: :class:`~.sqlite_store.SqliteStore` (``sqlite:///path``, the default)
and :class:`~.postgres_store.PostgresStore` (``postgresql://...``). :func:`open_store` picks
one from a URL. A store is used as an async context manager::

    async with open_store("sqlite:///agentstream.db", readonly=True) as store:
        for summary in await store.sessions(since=datetime.now(UTC) - timedelta(hours=1)):
            ...
        events = await store.timeline(session_id)

Order of a timeline: ``timestamp``, then ``seq``, then ``event_id``. ``seq`` counts per
producer instance, not per session, so it only breaks ties between events of one producer
stamped in the same microsecond; ``event_id`` (UUIDv7, creation-ordered within a process)
makes the order total and stable.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, overload
from urllib.parse import urlsplit, urlunsplit

from agentstream.consumers.runtime.since import as_utc
from agentstream.schemas import AgentstreamError, Event, RecordLocation


class StoreError(AgentstreamError):
    """The store refused or failed an operation (bad URL, schema missing, bad data)."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached right now (connection refused or lost, locked, shut down).
    Trying again later can succeed."""

    retriable = True


class StoreTimeoutError(StoreUnavailableError):
    """An operation took longer than the database or the client allows (PostgreSQL's
    ``statement_timeout``, the client's ``command_timeout``). The same batch may take as long
    again: the persistence service writes it in smaller parts."""


@dataclass(frozen=True, slots=True)
class EventQuery:
    """The filters of :meth:`Store.events`, as the backends get them (the limit checked)."""

    type: str | None
    agent: str | None
    session: str | None
    since: datetime | None
    until: datetime | None
    limit: int


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One line of ``agentstream sessions``."""

    session_id: str
    agent_id: str
    events: int
    first: datetime
    last: datetime
    stop_reason: str | None
    """``data.stop_reason`` of the session's last ``turn.ended`` event, if it has one."""

    @property
    def duration(self) -> timedelta:
        return self.last - self.first


class Store(abc.ABC):
    """An event store. Writes are idempotent by ``event_id``; reads return :class:`Event`."""

    backend: str
    """``sqlite`` or ``postgresql``."""

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        """The URL without its password, for messages."""
        self._dsn = url

    # --- lifecycle -------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect. Raises :class:`StoreUnavailableError` when the store does not answer."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections (idempotent)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- schema ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def migrate(self) -> list[int]:
        """Apply the migrations this store has not seen yet; return their versions.
        Safe to run from several processes at once."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""

    async def require_schema(self) -> None:
        """Raise :class:`StoreError` unless the store is migrated to this code's version."""
        have, want = await self.schema_version(), self.latest_version()
        if have < want:
            raise StoreError(
                f"expected the store {self.url} at schema version {want}, found version {have}; "
                f"run `agentstream db migrate --store {self.url}`"
            )
        if have > want:
            raise StoreError(
                f"expected the store {self.url} at schema version {want} or older, found "
                f"version {have} (written by a newer agentstream); upgrade agentstream"
            )

    @abc.abstractmethod
    def latest_version(self) -> int:
        """The schema version this code writes."""

    # --- writing ---------------------------------------------------------------------------

    async def write_batch(
        self,
        events: Sequence[Event],
        locations: Sequence[RecordLocation] | None = None,
        documents: Sequence[str] | None = None,
    ) -> int:
        """Store ``events`` in one transaction, skipping those whose ``event_id`` is already
        stored; return how many were new. The transaction is committed when this returns.
        ``locations`` (same length) records the Kafka topic, partition and offset of each;
        ``documents`` (same length) the JSON text kept as each whole event: the envelope
        each event was decoded from (the record's original, with fields this version does not
        know; default: the event re-encoded). A store may read column values from it.

        Raises :class:`StoreError` only when the database refused these events (see
        :meth:`_refuses_events`), :class:`StoreUnavailableError` for any other failure."""
        from .rows import event_json

        if not events:
            return 0
        texts = [event_json(e) for e in events] if documents is None else documents
        if len(texts) != len(events):
            raise ValueError(f"expected {len(events)} documents, got {len(texts)}")
        if locations is not None and len(locations) != len(events):
            raise ValueError(f"expected {len(events)} locations, got {len(locations)}")
        try:
            return await self._write(events, locations, texts)
        except StoreUnavailableError:
            raise
        except StoreError as exc:
            if self._refuses_events(exc.__cause__):
                raise
            # Dead-lettering a batch for the database's state would move every event of
            # it aside; retrying loses nothing and the operator sees why.
            raise StoreUnavailableError(
                f"{exc} — the database's state, not the events': retried until it accepts "
                "them, nothing is dead-lettered"
            ) from exc.__cause__

    @staticmethod
    @abc.abstractmethod
    def _refuses_events(error: BaseException | None) -> bool:
        """Whether a write failing with ``error`` (the driver's) refused what it was given: a
        value a column or an index cannot hold, a constraint. Then :meth:`write_batch` raises
        :class:`StoreError` and the service finds and dead-letters the events refused. Any
        other failure (a lock not granted, a database gone read-only or corrupt, a password
        changed) is :class:`StoreUnavailableError`: the same events are tried again."""

    @abc.abstractmethod
    async def _write(
        self,
        events: Sequence[Event],
        locations: Sequence[RecordLocation] | None,
        documents: Sequence[str],
    ) -> int:
        """:meth:`write_batch` after its checks: ``events`` is not empty, ``locations`` (when
        given) and ``documents`` have its length."""

    async def delete_before(self, cutoff: datetime, *, limit: int = 1_000) -> int:
        """Delete at most ``limit`` (>= 1) events stamped before ``cutoff``; return how many."""
        _check_limit(limit, least=1)
        return await self._delete_before(as_utc(cutoff), limit)

    @abc.abstractmethod
    async def _delete_before(self, cutoff: datetime, limit: int) -> int:
        """:meth:`delete_before` after its check."""

    # --- reading ---------------------------------------------------------------------------

    async def sessions(
        self, *, agent: str | None = None, since: datetime | None = None, limit: int = 50
    ) -> list[SessionSummary]:
        """Sessions, latest activity first: those with an event of ``agent`` (when given)
        and an event at or after ``since`` (when given). Counts cover the whole session."""
        _check_limit(limit)
        return await self._sessions(agent, as_utc(since), limit)

    @abc.abstractmethod
    async def _sessions(
        self, agent: str | None, since: datetime | None, limit: int
    ) -> list[SessionSummary]:
        """:meth:`sessions` after its check."""

    @overload
    async def timeline(self, session_id: str, *, raw: Literal[False] = False) -> list[Event]: ...

    @overload
    async def timeline(self, session_id: str, *, raw: Literal[True]) -> list[dict[str, Any]]: ...

    async def timeline(
        self, session_id: str, *, raw: bool = False
    ) -> list[Event] | list[dict[str, Any]]:
        """Every stored event of a session, in timeline order (see the module docs). With
        ``raw``, each as the JSON object stored: the envelope as the producer sent it, with
        fields this version's :class:`Event` does not know."""
        from .rows import event_from_json, original_document

        rows = await self._timeline_rows(session_id)
        if raw:
            return [original_document(text, f"row {eid} of {self.url}") for eid, text in rows]
        return [event_from_json(text, f"row {eid} of {self.url}") for eid, text in rows]

    async def timeline_as_stored(self, session_id: str) -> list[tuple[Event, dict[str, Any]]]:
        """:meth:`timeline` with each event's stored JSON object beside it (one query): the
        envelope as the producer sent it, fields this version does not know included."""
        from .rows import event_from_json, original_document

        found = []
        for eid, text in await self._timeline_rows(session_id):
            where = f"row {eid} of {self.url}"
            found.append((event_from_json(text, where), original_document(text, where)))
        return found

    @abc.abstractmethod
    async def _timeline_rows(self, session_id: str) -> list[tuple[str, str | bytes]]:
        """``(stored id, event JSON)`` of every event of a session, in timeline order."""

    async def events(
        self,
        *,
        type: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1_000,
    ) -> list[Event]:
        """Events matching every filter given, oldest first. ``type`` is a type or a prefix
        pattern ending in ``.*`` (``tool.*``); ``until`` is exclusive."""
        _check_limit(limit)
        return await self._events(
            EventQuery(type, agent, session, as_utc(since), as_utc(until), limit)
        )

    @abc.abstractmethod
    async def _events(self, query: EventQuery) -> list[Event]:
        """:meth:`events` after its check."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many events are stored."""


def _check_limit(limit: int, *, least: int = 0) -> None:
    """Refuse a ``limit`` below ``least``: SQLite reads ``LIMIT -1`` as no limit, PostgreSQL
    refuses it, and a query must not mean one thing on one store and another on the other."""
    if limit < least:
        raise ValueError(f"expected limit >= {least}, got {limit}")


_SECRET_PARAMETER = re.compile(r"(?i)(^|&)(password|sslpassword)=[^&]*")


def userinfo_unparsed(url: str) -> bool:
    """Whether ``url`` has an ``@`` its network location does not hold: a ``#``, ``/`` or
    ``?`` left unencoded in the password ends the location early, so the password is not
    where URL parsers look for it (and ``redact_url`` could not hide it)."""
    after = url.partition("://")[2]
    if "@" not in after:
        return False
    try:
        return "@" not in urlsplit(url).netloc
    except ValueError:  # does not parse at all: not this
        return False


def _unparsed(url: str) -> str:
    scheme = url.split(":", 1)[0] if ":" in url else ""
    return f"{scheme}://*** (a URL that does not parse)" if scheme else "***"


def redact_url(url: str) -> str:
    """The URL for messages: ``postgresql://user:secret@host/db?password=x`` →
    ``postgresql://user:***@host/db?password=***`` (libpq and asyncpg take a password in the
    query too). A URL that does not parse, or whose password holds a character that ends
    the host part (:func:`userinfo_unparsed`), shows its scheme only."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _unparsed(url)
    if userinfo_unparsed(url):
        return _unparsed(url)
    netloc = parts.netloc
    if password is not None:
        netloc = netloc.replace(f":{password}@", ":***@", 1)
    query = _SECRET_PARAMETER.sub(r"\1\2=***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def type_bounds(pattern: str) -> tuple[str, str] | None:
    """``tool.*`` → the half-open text range ``['tool.', 'tool/')`` (index-friendly, no LIKE
    escaping); None for an exact type. ``*`` alone is handled by the caller (no filter)."""
    if pattern.endswith(".*") and "*" not in pattern[:-2]:
        prefix = pattern[:-1]
        return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
    if any(c in pattern for c in "*?["):
        raise StoreError(
            f"expected an event type or a prefix pattern like 'tool.*', got {pattern!r}"
        )
    return None


def store_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a store URL (:func:`open_store`'s forms), or None."""
    try:
        open_store(url)  # parses only: nothing is opened
    except StoreError as exc:
        return str(exc)
    return None


def open_store(url: str, *, readonly: bool = False) -> Store:
    """The store a URL names (not connected yet: use ``async with`` or ``await open()``).

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``;
    ``postgresql://user@host:port/database`` (also ``postgres://``; extra query parameters
    are PostgreSQL settings, e.g. ``?search_path=agentstream``). ``readonly`` opens SQLite
    without creating the file.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from .sqlite_store import SqliteStore

        return SqliteStore(url, readonly=readonly)
    if scheme in ("postgresql", "postgres"):
        from .postgres_store import PostgresStore

        return PostgresStore(url)
    raise StoreError(
        f"expected a store URL sqlite:///path or postgresql://user@host/db, got {redact_url(url)!r}"
    )
