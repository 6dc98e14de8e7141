"""The SQLite store: the standard library's ``sqlite3`` on one connection, in one worker thread.

WAL journal (readers never block the writer), ``synchronous=NORMAL`` by default: a commit
survives a crash of the process (the case ``kill -9`` tests) but the last transactions can
be lost with the machine's power; ``sqlite:///path?synchronous=full`` makes commits survive
that too (one fsync per commit: little cost with 1,000-event transactions). Every call runs
on the store's own thread, one at a time, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from agentstream.schemas import Event, RecordLocation

from .migrations import SQLITE_MIGRATIONS
from .rows import event_from_json, from_micros, int64, to_micros
from .store import (
    EventQuery,
    SessionSummary,
    Store,
    StoreError,
    StoreUnavailableError,
    type_bounds,
)

T = TypeVar("T")

_COLUMNS = 15
_INSERT_HEAD = """
INSERT INTO events (event_id, type, timestamp_us, agent_id, user_id, session_id, turn_id, seq,
                    source, schema_version, event, kafka_topic, kafka_partition, kafka_offset,
                    ingested_at_us)
VALUES """
_ROW_MARKS = "(" + ", ".join("?" * _COLUMNS) + ")"
_MAX_ROWS = 2_000
"""Rows per INSERT statement (15 columns: 30,000 parameters, under SQLite's 32,766)."""
_ROUND_ROWS = 50
"""Statements are padded to a multiple of this many rows, so a few prepared statements
serve every batch size (padding repeats the last row: ``ON CONFLICT DO NOTHING`` skips it)."""


def insert_sql(rows: int) -> str:
    """The multi-row ``INSERT ... ON CONFLICT (event_id) DO NOTHING`` for ``rows`` rows."""
    marks = ", ".join([_ROW_MARKS] * rows)
    return f"{_INSERT_HEAD}{marks} ON CONFLICT (event_id) DO NOTHING"


_ORDER = "ORDER BY timestamp_us, seq, event_id"
_SYNCHRONOUS = ("off", "normal", "full", "extra")


def sqlite_path(url: str) -> tuple[str, str]:
    """``sqlite:///rel.db`` → ``rel.db``; ``sqlite:////abs.db`` → ``/abs.db`` (``%XX``
    escapes decoded: write ``?`` and ``#`` in a file name as ``%3F`` and ``%23``); and the
    ``synchronous`` option (default ``normal``)."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.path == "/" or parts.fragment:
        raise StoreError(
            f"expected sqlite:///relative/path.db or sqlite:////absolute/path.db, got {url!r}"
        )
    try:
        options = parse_qs(parts.query, strict_parsing=True) if parts.query else {}
    except ValueError:
        options = {"?": [parts.query]}
    synchronous = options.pop("synchronous", ["normal"])[-1].lower()
    if synchronous not in _SYNCHRONOUS or options:
        raise StoreError(
            f"expected no option but synchronous={'|'.join(_SYNCHRONOUS)} in {url!r} "
            f"(write ? and # in a file name as %3F and %23)"
        )
    return unquote(parts.path[1:]), synchronous


class _NotWritableError(Exception):
    pass


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOENT)
"""What opening the store's file for writing says when no wait would help: a read-only file
system, no permission, a directory in the way, a file system that creates no file there (its
directory exists). A full disk or an I/O error is an outage."""


def _check_writable(path: str) -> None:
    """Open ``path`` for writing (created if absent, as SQLite would; never truncated): SQLite
    says only "unable to open database file", which reads as an outage. (Not its write-ahead
    log: a probe file there could be one another connection starts using.)"""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise _NotWritableError(exc.strerror) from None
        raise


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class SqliteStore(Store):
    backend = "sqlite"

    @staticmethod
    def _refuses_events(error: BaseException | None) -> bool:
        # IntegrityError: a constraint; DataError: a value too big (SQLITE_TOOBIG). Not a
        # DatabaseError such as "database disk image is malformed".
        return isinstance(error, sqlite3.IntegrityError | sqlite3.DataError)

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        super().__init__(url)
        self.path, self._synchronous = sqlite_path(url)
        self._readonly = readonly
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # the file opened (device, inode)

    # --- the worker thread -----------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise StoreError(f"the store {self.url} is not open (use `async with`)")
        conn = self._conn
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)
        except sqlite3.OperationalError as exc:
            # locked by another writer, disk full, I/O error: may pass
            raise StoreUnavailableError(f"SQLite {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self._readonly and self.path != ":memory:":
            if not os.path.exists(self.path):
                raise FileNotFoundError(self.path)
            if os.path.isdir(self.path):  # SQLite says "disk I/O error"
                raise IsADirectoryError(self.path)
            target, uri = f"{Path(self.path).absolute().as_uri()}?mode=ro", True
        else:
            directory = os.path.dirname(os.path.abspath(self.path))
            if self.path != ":memory:" and not os.path.isdir(directory):
                raise NotADirectoryError(directory)
            if self.path != ":memory:":
                _check_writable(self.path)
            target, uri = self.path, False
        conn = sqlite3.connect(
            target, uri=uri, isolation_level=None, check_same_thread=True, cached_statements=256
        )
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if not self._readonly:
                conn.execute("PRAGMA journal_mode = WAL")  # a locked or full disk may refuse
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                if self.path != ":memory:":
                    self._identity = _file_identity(self.path)
        except BaseException:
            conn.close()  # not left to the garbage collector (Python 3.13 warns then)
            raise
        return conn

    def _check_identity(self) -> None:
        """A store file deleted (or replaced) under the service: SQLite goes on writing the
        open, removed file, and the events would be acknowledged and lost at exit. Taken for
        an outage (nothing committed) until the file is back or the service restarts."""
        if self._identity is not None and _file_identity(self.path) != self._identity:
            raise StoreUnavailableError(
                f"SQLite store {self.path} was deleted or replaced while open: not writing "
                "into the removed file (restore it, or restart the service to start a new one)"
            )

    async def open(self) -> None:
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(1, thread_name_prefix="agentstream-sqlite")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except FileNotFoundError:
            raise StoreError(
                f"expected a SQLite store at {self.path}, found no such file (the persistence "
                f"service creates it; or run `agentstream db migrate --store {self.url}`)"
            ) from None
        except IsADirectoryError:
            raise StoreError(
                f"expected a SQLite store at {self.path}, found a directory (--store names the "
                "database file: sqlite:///path/to/agentstream.db)"
            ) from None
        except NotADirectoryError as exc:  # a setting to fix, not an outage to wait out
            raise StoreError(
                f"expected the directory of the SQLite store {self.url} to exist, "
                f"{exc.args[0]} does not"
            ) from None
        except _NotWritableError as exc:
            raise StoreError(
                f"expected a SQLite store the service can write at {self.path}, got "
                f"{exc.args[0]}: point --store at a writable volume"
            ) from None
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open SQLite store {self.path}: {exc}") from exc
        finally:
            if self._conn is None:
                executor.shutdown(wait=False)
        self._executor = executor

    async def close(self) -> None:
        if self._executor is None:
            return
        conn, executor = self._conn, self._executor
        self._conn = self._executor = None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    # --- schema ----------------------------------------------------------------------------

    def latest_version(self) -> int:
        return SQLITE_MIGRATIONS[-1].version

    async def migrate(self) -> list[int]:
        return await self._run(_migrate)

    async def schema_version(self) -> int:
        return await self._run(_schema_version)

    # --- writing ---------------------------------------------------------------------------

    async def _write(
        self,
        events: Sequence[Event],
        locations: Sequence[RecordLocation] | None,
        documents: Sequence[str],
    ) -> int:
        now = to_micros(datetime.now(UTC))
        if locations is None:
            rows = [
                _row(e, None, None, None, now, t) for e, t in zip(events, documents, strict=True)
            ]
        else:
            rows = [
                _row(e, loc.topic, loc.partition, loc.offset, now, t)
                for e, loc, t in zip(events, locations, documents, strict=True)
            ]

        def insert(conn: sqlite3.Connection) -> int:
            self._check_identity()
            return _insert(conn, rows)

        return await self._run(insert)

    async def _delete_before(self, cutoff: datetime, limit: int) -> int:
        sql = (
            "DELETE FROM events WHERE rowid IN "
            "(SELECT rowid FROM events WHERE timestamp_us < ? LIMIT ?)"
        )
        micros = to_micros(cutoff)
        return await self._run(lambda conn: conn.execute(sql, (micros, limit)).rowcount)

    # --- reading ---------------------------------------------------------------------------

    async def count(self) -> int:
        return await self._run(
            lambda conn: conn.execute("SELECT count(*) FROM events").fetchone()[0]
        )

    async def _timeline_rows(self, session_id: str) -> list[tuple[str, str | bytes]]:
        sql = f"SELECT event_id, event FROM events WHERE session_id = ? {_ORDER}"
        rows = await self._run(lambda conn: conn.execute(sql, (session_id,)).fetchall())
        return [(eid, text) for eid, text in rows]

    async def _events(self, query: EventQuery) -> list[Event]:
        where: list[str] = []
        args: list[Any] = []
        if query.type is not None and query.type != "*":
            bounds = type_bounds(query.type)
            if bounds is None:
                where.append("type = ?")
                args.append(query.type)
            else:
                where.append("type >= ? AND type < ?")
                args.extend(bounds)
        for column, value in (("agent_id", query.agent), ("session_id", query.session)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.since is not None:
            where.append("timestamp_us >= ?")
            args.append(to_micros(query.since))
        if query.until is not None:
            where.append("timestamp_us < ?")
            args.append(to_micros(query.until))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT event_id, event FROM events {clause} {_ORDER} LIMIT ?"
        args.append(query.limit)
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return [event_from_json(text, f"row {eid} of {self.path}") for eid, text in rows]

    async def _sessions(
        self, agent: str | None, since: datetime | None, limit: int
    ) -> list[SessionSummary]:
        # Sessions with an event of the agent and an event since then, each on its own: one
        # event that is both left out a session whose agent acted earlier than another did.
        conditions: list[str] = []
        args: list[Any] = []
        if agent is not None:
            conditions.append("agent_id = ?")
            args.append(agent)
        if since is not None:
            conditions.append("timestamp_us >= ?")
            args.append(to_micros(since))
        picked = " INTERSECT ".join(
            f"SELECT DISTINCT session_id FROM events WHERE session_id <> '' AND {condition}"
            for condition in conditions or ["1 = 1"]
        )
        sql = f"""
            SELECT session_id, max(agent_id), count(*), min(timestamp_us), max(timestamp_us),
                   (SELECT CASE json_type(last.event, '$.data.stop_reason')
                           WHEN 'text' THEN json_extract(last.event, '$.data.stop_reason') END
                      FROM events AS last
                     WHERE last.session_id = e.session_id AND last.type = 'turn.ended'
                     ORDER BY last.timestamp_us DESC, last.seq DESC, last.event_id DESC
                     LIMIT 1)
              FROM events AS e
             WHERE session_id IN ({picked})
             GROUP BY session_id
             ORDER BY max(timestamp_us) DESC, session_id
             LIMIT ?
        """
        args.append(limit)
        rows = await self._run(lambda conn: conn.execute(sql, args).fetchall())
        return [
            SessionSummary(
                session_id=sid,
                agent_id=agent if agent is not None else agent_id or "",
                events=n,
                first=from_micros(first),
                last=from_micros(last),
                stop_reason=None if reason is None else str(reason),
            )
            for sid, agent_id, n, first, last, reason in rows
        ]


def _row(
    e: Event, topic: str | None, partition: int | None, offset: int | None, now: int, text: str
) -> tuple[Any, ...]:
    return (
        e.event_id,
        e.type,
        to_micros(e.timestamp),
        e.agent_id,
        e.user_id,
        e.session_id,
        e.turn_id,
        int64(e.seq),
        e.source,
        int64(e.schema_version),
        text,
        topic,
        partition,
        offset,
        now,
    )


def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> int:
    """Insert ``rows`` in one transaction, with as few statements as possible.

    Every statement the sqlite3 module runs releases the GIL while SQLite works and takes it
    back afterwards; while the event loop is busy, taking it back waits up to the interpreter's
    switch interval (5 ms). With ``executemany`` that wait came per row (~25x slower under load);
    here a batch of up to ``_MAX_ROWS`` rows is one multi-row INSERT that commits by itself
    (autocommit: one statement is one atomic transaction), so it waits once per batch.
    """
    per_statement = min(_MAX_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _COLUMNS)
    if len(rows) <= per_statement:
        return _insert_statement(conn, rows, per_statement)
    inserted = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for start in range(0, len(rows), per_statement):
            inserted += _insert_statement(conn, rows[start : start + per_statement], per_statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return inserted


def _insert_statement(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], most: int) -> int:
    size = min(most, -(-len(rows) // _ROUND_ROWS) * _ROUND_ROWS)
    params = [value for row in rows for value in row]
    params.extend(rows[-1] * (size - len(rows)))
    return conn.execute(insert_sql(size), params).rowcount


def _schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if exists is None:
        return 0
    return int(
        conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
    )


def _migrate(conn: sqlite3.Connection) -> list[int]:
    conn.execute("BEGIN IMMEDIATE")  # one migrating process at a time
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_us INTEGER NOT NULL)"
        )
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        applied = []
        for migration in SQLITE_MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (migration.version, migration.name, to_micros(datetime.now(UTC))),
            )
            applied.append(migration.version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied
