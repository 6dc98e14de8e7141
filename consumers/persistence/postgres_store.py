"""The PostgreSQL store: asyncpg, a small connection pool, one statement per batch.

A batch is one ``INSERT ... SELECT ... ON CONFLICT (event_id) DO NOTHING`` in a single round
trip: the documents travel as one JSON array (``jsonb_array_elements``), and the values that
are not in them, or not exactly, as binary arrays beside it (``unnest``: ids, timestamps,
Kafka offsets), joined by position. ``benchmarks/bench_persistence.py`` compares it with
COPY into a staging table and with ``executemany``. The envelope's text and integer columns
are read by the server from the ``jsonb`` document it parses anyway (``event->>'agent_id'``:
the document is the same envelope the event was decoded from, so the values are the decoded
ones, with the ``Event`` defaults where a field is absent); the Kafka topic and partition,
one per batch, are parameters. Encoding each of those as an array of its own, and the
documents as a ``jsonb[]``, cost the consumer's event loop 4.2 µs per event against 2.8
(measured with four partitions writing at once; the server's time per event did not change).
Timestamps stay a binary array: the server rounds a fraction past microseconds half to even,
msgspec half up, and the column must hold the decoded value.

PostgreSQL cannot store everything an event may hold: ``uuid`` needs a UUID and ``text`` and
``jsonb`` refuse the NUL character. So an ``event_id`` that is not a UUID is stored under a
UUIDv5 derived from it (deterministic, so redelivery still deduplicates; the original id
stays in the ``event`` column), NUL characters in strings become U+FFFD, and integers beyond
their column's range (64 bits for ``seq``, 32 for ``schema_version``) are clamped there
(exact in ``event``), as are the first and last instants in ``timestamp`` (``_finite``).

Connection losses (refused, terminated, server shutting down or starting, timeouts) and a
missing or inaccessible table raise :class:`StoreUnavailableError` (see ``_OUTAGE_CLASSES``);
the pool replaces broken connections on the next call.

Prepared statements are not cached by default (``statement_cache_size``, asyncpg's option, is
0 unless the URL sets ``?statement_cache_size=N``): a batch is one statement, so a cache saves
one parse per thousand events, and a connection pooler in transaction mode (PgBouncer before
1.21, the usual way to share PostgreSQL in production) cannot keep prepared statements between
transactions. With a cache behind such a pooler every write fails with "prepared statement
... does not exist"; that is taken as an outage with what to set, never as events the
database refused (which would send them to the dead-letter topic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

from agentstream.schemas import SCHEMA_VERSION, Event, RecordLocation

from .migrations import POSTGRES_MIGRATIONS
from .rows import event_from_json
from .store import (
    EventQuery,
    SessionSummary,
    Store,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    type_bounds,
    userinfo_unparsed,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

_CLAMP = "least(greatest({}, -9223372036854775808), 9223372036854775807)::bigint"
_CLAMP32 = "least(greatest({}, -2147483648), 2147483647)::integer"
_INSERT = f"""
INSERT INTO events (event_id, type, timestamp, agent_id, user_id, session_id, turn_id, seq,
                    source, schema_version, event, kafka_topic, kafka_partition, kafka_offset)
SELECT row.id, doc->>'type', row.ts, coalesce(doc->>'agent_id', ''),
       coalesce(doc->>'user_id', ''), coalesce(doc->>'session_id', ''),
       coalesce(doc->>'turn_id', ''), {_CLAMP.format("coalesce((doc->'seq')::numeric, 0)")},
       coalesce(doc->>'source', ''),
       {_CLAMP32.format(f"coalesce((doc->'schema_version')::numeric, {SCHEMA_VERSION})")}, doc,
       coalesce(row.topic, $4), coalesce(row.kafka_partition, $5), row.kafka_offset
  FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS batch(doc, n)
  JOIN unnest($2::uuid[], $3::timestamptz[], $6::bigint[], $7::text[], $8::integer[])
       WITH ORDINALITY AS row(id, ts, kafka_offset, topic, kafka_partition, n) USING (n)
ON CONFLICT (event_id) DO NOTHING
"""
"""Strings and integers come from the document (an absent one is the ``Event`` default; the
integers clamped to their column's range); ids and timestamps from the decoded events. Topic
and partition are ``$4`` and ``$5`` when the whole batch has one, else arrays (``$7``, ``$8``)."""
_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)
"""asyncpg writes these two as ``-infinity`` and ``infinity`` (and reads those back naive):
a Go producer's zero time (0001-01-01T00:00:00Z) would sort before every event forever, escape
no retention and break the duration of its session. The column gets them 1 µs inside."""


def _finite(stamp: datetime) -> datetime:
    if stamp <= _FIRST:
        return _FIRST + timedelta(microseconds=1)
    return _LAST - timedelta(microseconds=1) if stamp >= _LAST else stamp


_CHUNK_CHARS = 64 * 2**20
"""Documents per statement are cut at this much JSON text (one ``jsonb`` value holds at most
256 MiB); the statements of one batch share its transaction."""
_ID_ORDER = "(event->>'event_id') COLLATE \"C\""
_ORDER = f"ORDER BY timestamp, seq, {_ID_ORDER}"
"""The SQLite store's order: ties broken by the producer's id byte by byte (not by the
``uuid`` column, which holds a UUIDv5 for an id that is no UUID), whatever the collation."""
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
"""An id stored as it is: a UUID, in either case (UUIDs are case-insensitive, RFC 9562:
``...00AB`` and ``...00ab`` are one event here, two on SQLite, which compares text). Storing
capitals under a UUIDv5 instead would store again, after an upgrade, the events stored before
it under their own id when they are delivered again."""
_ID_NAMESPACE = uuid.UUID("6f1d4a52-2c8e-4f4e-9a43-5f3c7d0e8b21")
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
_MIGRATION_LOCK = 0x61676E74  # pg_advisory_xact_lock key: "agnt"
_OUTAGE_CLASSES = ("08", "53", "57", "40", "42", "3D", "3F")
"""SQLSTATE classes taken for an outage anywhere (connecting, reading, writing): connection
exception, insufficient resources, operator intervention (shutdown, terminated, starting up),
transaction rollback (deadlock), and the schema missing or not accessible (undefined table, no
privilege, no such database or schema): an operator fixes those."""
_REFUSED_CLASSES = ("22", "23", "54")
"""SQLSTATE classes of a write that refused its events: data exception, integrity constraint
violation, program limit exceeded (a value too large for its index row). A write failing with
any other is retried (``Store._refuses_events``): a lock held past ``lock_timeout`` (55P03),
a server read-only after a failover (25006), an I/O or internal error (58, XX), a password
changed under a running service (28P01)."""


_CONNECT_TIMEOUT_S = 60.0
"""asyncpg's connect timeout (its default), named in the error when it passes."""

_STATEMENT_CACHE = "statement_cache_size"
_PREPARED_STATEMENT_STATES = ("26000", "42P05")
"""invalid_sql_statement_name, duplicate_prepared_statement: a pooler's doing (see above)."""


def statement_cache_option(url: str) -> tuple[str, int]:
    """``url`` without ``statement_cache_size=N`` (agentstream's, not a PostgreSQL setting:
    asyncpg would send it to the server), and ``N`` (0 when absent)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, 0
    kept, size = [], 0
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name != _STATEMENT_CACHE:
            kept.append(item)
            continue
        if not value.isdigit():
            raise StoreError(
                f"expected {_STATEMENT_CACHE}=N (0 or more prepared statements cached per "
                f"connection) in the store URL, got {item!r}"
            )
        size = int(value)
    return (f"{base}?{'&'.join(kept)}" if kept else base), size


def _url_problem(url: str) -> str | None:
    """Why ``url`` does not parse as a URL (the reason never quotes the password), or None."""
    if userinfo_unparsed(url):
        return "percent-encode the characters #, /, ? and @ in the user name and password"
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return str(exc)
    return None


def stored_id(event_id: str) -> str:
    """The ``uuid`` an event is stored under (its own id when it is a UUID)."""
    if len(event_id) == 36 and _UUID.fullmatch(event_id):
        return event_id
    return str(uuid.uuid5(_ID_NAMESPACE, event_id))


def _text(value: str) -> str:
    """Text PostgreSQL takes: NUL characters become U+FFFD, as they were stored (so a
    lookup by the id the producer used finds it)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _json(text: str) -> str:
    """JSON text jsonb accepts (it refuses NUL characters: replaced by U+FFFD)."""
    return _JSON_NUL.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


def _chunks(documents: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive documents of at most :data:`_CHUNK_CHARS` together
    (at least one each)."""
    chunks: list[tuple[int, int]] = []
    start = size = 0
    for i, text in enumerate(documents):
        if size and size + len(text) > _CHUNK_CHARS:
            chunks.append((start, i))
            start, size = i, 0
        size += len(text) + 1
    chunks.append((start, len(documents)))
    return chunks


def _inserted(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <rows>"


def _misconfigured(exc: BaseException) -> str | None:
    """What to fix when ``exc`` is a connection setting that no wait makes work (a TLS mode the
    server refuses, a certificate that is missing or not trusted), else None. Such errors are
    ``OSError``s or asyncpg interface errors, which otherwise mean an outage."""
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return (
            "the server does not accept TLS connections: drop sslmode from the store URL "
            "(or use sslmode=prefer), or enable ssl on the server"
        )
    if isinstance(exc, asyncpg.ClientConfigurationError | ssl.SSLCertVerificationError):
        return (
            "check the TLS options of the store URL (sslmode, sslrootcert, sslcert, sslkey) "
            "and the files they name"
        )
    return None


def _check_tls_files(dsn: str, shown: str) -> None:
    """Raise :class:`StoreError` when a file a TLS option of ``dsn`` names is not there
    (asyncpg's FileNotFoundError would read as an outage: it is one for a Unix socket)."""
    for name, values in parse_qs(urlsplit(dsn).query).items():
        path = values[-1]
        named = name in ("sslrootcert", "sslcert", "sslkey", "sslcrl") and path != "system"
        if named and not os.path.isfile(path):
            raise StoreError(f"expected a file at {path}, named by {name} in {shown}")


def is_outage(exc: BaseException) -> bool:
    """Whether an asyncpg error means the server is (temporarily) unreachable."""
    if _misconfigured(exc) is not None:
        return False
    if isinstance(
        exc,
        OSError
        | asyncio.TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.InternalClientError,
    ):
        return True  # InternalClientError: a connection cut in the middle of a protocol step
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state in _PREPARED_STATEMENT_STATES:  # a pooler in transaction mode: a setting
            return True
        return state[:2] in _OUTAGE_CLASSES or state == "25006"  # read-only (failover)
    return isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, asyncpg.DataError)


def _too_slow(exc: BaseException) -> bool:
    """The statement ran past ``statement_timeout`` (57014, query_canceled) or the client's
    ``command_timeout``."""
    return isinstance(exc, asyncio.TimeoutError) or getattr(exc, "sqlstate", None) == "57014"


def _hint(exc: BaseException) -> str:
    """What to do about an error that is a setting, not an outage that passes."""
    if getattr(exc, "sqlstate", None) == "42501":  # insufficient_privilege
        return (
            " — the store's role lacks a privilege: grant it (SELECT, INSERT and DELETE on "
            "the tables), or apply the migrations as a role that may create tables "
            "(`agentstream db migrate --store URL`); retried until then"
        )
    if getattr(exc, "sqlstate", None) in _PREPARED_STATEMENT_STATES:
        return (
            " — prepared statements do not survive between transactions here: a connection "
            f"pooler in transaction mode (PgBouncer)? Remove {_STATEMENT_CACHE} from the store "
            "URL (0, the default, caches none)"
        )
    return ""


def _terminate(conn: asyncpg.Connection) -> None:
    """Close ``conn`` at once, unless the server did: asyncpg then already took it back from
    us (its proxy raises InterfaceError 'released back to the pool', which hid the real error
    of the attempt in the log)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        if not conn.is_closed():
            conn.terminate()


async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Give ``conn`` back to the pool. A release that fails (its reset cut by the server:
    'another operation is in progress') is cleaned up by asyncpg, which terminates the
    connection; it must neither hide the error of a failed attempt nor fail one whose
    transaction committed."""
    try:
        await pool.release(conn)
    except Exception as exc:
        log.debug("releasing a PostgreSQL connection failed (asyncpg closes it): %r", exc)


class PostgresStore(Store):
    backend = "postgresql"

    @staticmethod
    def _refuses_events(error: BaseException | None) -> bool:
        if isinstance(error, asyncpg.PostgresError):
            return (error.sqlstate or "")[:2] in _REFUSED_CLASSES
        return isinstance(error, asyncpg.DataError)  # a value asyncpg cannot encode

    def __init__(self, url: str, *, pool_size: int = 4, command_timeout: float = 60.0) -> None:
        super().__init__(url)
        problem = _url_problem(url)
        if problem is not None:
            raise StoreError(f"expected a postgresql:// URL, got {self.url}: {problem}")
        self._dsn, self._statement_cache_size = statement_cache_option(url)
        self._pool: asyncpg.Pool | None = None
        self._pool_size = pool_size
        self._command_timeout = command_timeout

    async def _run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self._pool is None:
            raise StoreError(f"the store {self.url} is not open (use `async with`)")
        pool = self._pool
        try:
            conn = await pool.acquire()
            try:
                return await fn(conn)
            except Exception as exc:
                if is_outage(exc):
                    _terminate(conn)  # its protocol state is unknown: the pool opens a new one
                raise
            finally:
                await _release(pool, conn)
        except Exception as exc:
            if is_outage(exc):
                kind = StoreTimeoutError if _too_slow(exc) else StoreUnavailableError
                raise kind(f"PostgreSQL {self.url}: {exc!r}{_hint(exc)}") from exc
            if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
                raise StoreError(f"PostgreSQL {self.url}: {exc!r}") from exc
            raise

    async def open(self) -> None:
        if self._pool is not None:
            return
        _check_tls_files(self._dsn, self.url)
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=self._command_timeout,
                statement_cache_size=self._statement_cache_size,
                timeout=_CONNECT_TIMEOUT_S,
            )
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                raise StoreUnavailableError(
                    f"cannot connect to {self.url}: no PostgreSQL handshake within "
                    f"{_CONNECT_TIMEOUT_S:g} s (nothing answers at that address, another "
                    "service listens on that port, or the server is too loaded to answer)"
                ) from exc
            if is_outage(exc):
                raise StoreUnavailableError(f"cannot connect to {self.url}: {exc!r}") from exc
            fix = _misconfigured(exc)
            raise StoreError(
                f"cannot connect to {self.url}: {exc!r}{f' — {fix}' if fix else ''}"
            ) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

    # --- schema ----------------------------------------------------------------------------

    def latest_version(self) -> int:
        return POSTGRES_MIGRATIONS[-1].version

    async def migrate(self) -> list[int]:
        """Apply what is pending. A schema already at this version is only read: the service
        may run as a role that can write rows but not create tables (the migrations applied
        by another, with ``agentstream db migrate``)."""
        if await self.schema_version() >= self.latest_version():
            return []
        return await self._run(_migrate)

    async def schema_version(self) -> int:
        async def query(conn: asyncpg.Connection) -> int:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return 0
            return int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            )

        return await self._run(query)

    # --- writing ---------------------------------------------------------------------------

    async def _write(
        self,
        events: Sequence[Event],
        locations: Sequence[RecordLocation] | None,
        documents: Sequence[str],
    ) -> int:
        statements = [
            (
                _json(f"[{','.join(documents[start:end])}]"),
                *self._columns(events, locations, start, end),
            )
            for start, end in _chunks(documents)
        ]

        async def insert(conn: asyncpg.Connection) -> int:
            if len(statements) == 1:
                return _inserted(await conn.execute(_INSERT, *statements[0]))
            async with conn.transaction():
                return sum([_inserted(await conn.execute(_INSERT, *args)) for args in statements])

        return await self._run(insert)

    @staticmethod
    def _columns(
        events: Sequence[Event],
        locations: Sequence[RecordLocation] | None,
        start: int,
        end: int,
    ) -> tuple[Any, ...]:
        """``$2`` to ``$8`` of :data:`_INSERT` for ``events[start:end]``."""
        ids = [stored_id(e.event_id) for e in events[start:end]]
        stamps = [
            t if _FIRST < t < _LAST else _finite(t)
            for t in [e.timestamp for e in events[start:end]]
        ]
        if locations is None:
            return ids, stamps, None, None, None, None, None
        where = locations[start:end]
        first = where[0]
        offsets = [loc.offset for loc in where]
        if all(loc.topic == first.topic and loc.partition == first.partition for loc in where):
            return ids, stamps, _text(first.topic), first.partition, offsets, None, None
        topics = [_text(loc.topic) for loc in where]
        return ids, stamps, None, None, offsets, topics, [loc.partition for loc in where]

    async def _delete_before(self, cutoff: datetime, limit: int) -> int:
        sql = (
            "DELETE FROM events WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM events WHERE timestamp < $1 LIMIT $2))"
        )

        async def delete(conn: asyncpg.Connection) -> int:
            return int((await conn.execute(sql, cutoff, limit)).rsplit(" ", 1)[-1])

        return await self._run(delete)

    # --- reading ---------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(await conn.fetch(sql, *args))

        return await self._run(fetch)

    def _decode(self, rows: list[asyncpg.Record]) -> list[Event]:
        return [event_from_json(r[1], f"row {r[0]} of {self.url}") for r in rows]

    async def count(self) -> int:
        return int((await self._fetch("SELECT count(*) FROM events"))[0][0])

    async def _timeline_rows(self, session_id: str) -> list[tuple[str, str | bytes]]:
        sql = f"SELECT event_id, event::text FROM events WHERE session_id = $1 {_ORDER}"
        return [(str(r[0]), r[1]) for r in await self._fetch(sql, _text(session_id))]

    async def _events(self, query: EventQuery) -> list[Event]:
        where: list[str] = []
        args: list[Any] = []

        def add(condition: str, *values: Any) -> None:
            marks = [f"${len(args) + i + 1}" for i in range(len(values))]
            where.append(condition.format(*marks))
            args.extend(values)

        if query.type is not None and query.type != "*":
            bounds = type_bounds(query.type)
            if bounds is None:
                add("type = {}", _text(query.type))
            else:
                add("type >= {} AND type < {}", *map(_text, bounds))
        if query.agent is not None:
            add("agent_id = {}", _text(query.agent))
        if query.session is not None:
            add("session_id = {}", _text(query.session))
        if query.since is not None:
            add("timestamp >= {}", query.since)
        if query.until is not None:
            add("timestamp < {}", query.until)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        args.append(query.limit)
        sql = f"SELECT event_id, event::text FROM events {clause} {_ORDER} LIMIT ${len(args)}"
        return self._decode(await self._fetch(sql, *args))

    async def _sessions(
        self, agent: str | None, since: datetime | None, limit: int
    ) -> list[SessionSummary]:
        # Sessions with an event of the agent and an event since then, each on its own (see
        # the SQLite store).
        conditions: list[str] = []
        args: list[Any] = []
        if agent is not None:
            args.append(_text(agent))
            conditions.append(f"agent_id = ${len(args)}")
        if since is not None:
            args.append(since)
            conditions.append(f"timestamp >= ${len(args)}")
        args.append(limit)
        picked = " INTERSECT ".join(
            f"SELECT DISTINCT session_id FROM events WHERE session_id <> '' AND {condition}"
            for condition in conditions or ["true"]
        )
        sql = f"""
            WITH picked AS ({picked})
            SELECT e.session_id, max(e.agent_id COLLATE "C"), count(*), min(e.timestamp),
                   max(e.timestamp),
                   (SELECT CASE jsonb_typeof(last.event -> 'data' -> 'stop_reason')
                           WHEN 'string' THEN last.event -> 'data' ->> 'stop_reason' END
                      FROM events AS last
                     WHERE last.session_id = e.session_id AND last.type = 'turn.ended'
                     ORDER BY last.timestamp DESC, last.seq DESC,
                              (last.event->>'event_id') COLLATE "C" DESC
                     LIMIT 1)
              FROM events AS e JOIN picked USING (session_id)
             GROUP BY e.session_id
             ORDER BY max(e.timestamp) DESC, e.session_id COLLATE "C"
             LIMIT ${len(args)}
        """
        return [
            SessionSummary(
                session_id=sid,
                agent_id=agent if agent is not None else agent_id or "",
                events=n,
                first=first,
                last=last,
                stop_reason=reason,
            )
            for sid, agent_id, n, first, last, reason in await self._fetch(sql, *args)
        ]


async def _migrate(conn: asyncpg.Connection) -> list[int]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in POSTGRES_MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    return applied
