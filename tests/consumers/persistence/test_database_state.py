"""A write failing for the database's state, not for the events: retried, never dead-lettered.

Before, only a few kinds of failure counted as an outage; any other (a lock held past
``lock_timeout`` while an operator ran ``VACUUM FULL``, a server left read-only by a failover,
a corrupt file) was taken for events the database refused: the service bisected every batch
down to single events, each failed the same way, and every event went to the dead-letter
topic. And the other way round: a TLS setting the server refuses is a setting to fix, not an
outage to wait out."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from support.persistence import (
    committed_total,
    count_is,
    dead_lettered,
    metric,
    persistence,
    settings_for,
    stream,
)
from support.produce import produce_events
from support.runtime import wait_until

from agentstream.consumers.persistence import (
    StoreError,
    StoreUnavailableError,
    open_store,
    postgres_store,
)
from agentstream.consumers.persistence.service import PersistenceSettings, until_available
from agentstream.schemas.settings import KafkaSettings


async def migrated(url: str) -> None:
    async with open_store(url) as store:
        await store.migrate()


@pytest.mark.postgres
async def test_a_lock_held_past_lock_timeout_is_an_outage(pg_schema_url: str) -> None:
    await migrated(pg_schema_url)
    locker = await asyncpg.connect(pg_schema_url)
    try:
        async with open_store(f"{pg_schema_url}&lock_timeout=200") as store:
            async with locker.transaction():
                await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(StoreUnavailableError, match="lock timeout") as caught:
                    await store.write_batch(stream(5))
                assert "nothing is dead-lettered" in str(caught.value)
            assert await store.write_batch(stream(5)) == 5  # the lock is gone
    finally:
        await locker.close()


@pytest.mark.postgres
async def test_a_read_only_server_is_an_outage(pg_schema_url: str) -> None:
    """What a write meets on a former primary after a failover (or a standby behind a stale
    address)."""
    await migrated(pg_schema_url)
    async with open_store(f"{pg_schema_url}&default_transaction_read_only=on") as store:
        with pytest.raises(StoreUnavailableError, match="read-only transaction"):
            await store.write_batch(stream(5))
        assert await store.count() == 0  # reading goes on


@pytest.mark.postgres
async def test_the_service_waits_out_a_locked_table_and_dead_letters_nothing(
    kafka_settings: KafkaSettings, pg_schema_url: str
) -> None:
    events = stream(100)
    await migrated(pg_schema_url)
    settings = settings_for(kafka_settings, f"{pg_schema_url}&lock_timeout=100")
    locker = await asyncpg.connect(pg_schema_url)
    try:
        async with persistence(settings) as (consumer, store):
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")  # VACUUM FULL
            await produce_events(kafka_settings, events)
            await wait_until(
                lambda: metric(consumer, "agentstream_persistence_store_unavailable_total") >= 3,
                what="the service retrying",
            )
            assert committed_total(consumer) == 0
            await transaction.commit()
            await wait_until(lambda: count_is(store, 100), what="the 100 events stored")
            await wait_until(lambda: committed_total(consumer) == 100, what="offsets committed")
            assert dead_lettered(consumer) == 0
    finally:
        await locker.close()


def corrupt_all_but_the_first_page(path: Path) -> None:
    """Overwrite every page but the first (the schema) of a SQLite file: its tables and
    indexes are unreadable, as after a disk fault."""
    with sqlite3.connect(path) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    size = path.stat().st_size
    with path.open("r+b") as out:
        out.seek(page)
        out.write(b"\xa5" * (size - page))


async def test_a_corrupt_sqlite_file_is_an_outage_not_a_refusal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    async with open_store(url) as store:
        await store.migrate()
        await store.write_batch(stream(500))
    corrupt_all_but_the_first_page(tmp_path / "events.db")
    async with open_store(url) as store:
        with pytest.raises(StoreUnavailableError, match="malformed"):
            await store.write_batch(stream(5, prefix="later"))


async def test_a_refusal_is_still_one(tmp_path: Path) -> None:
    """A constraint the events break stays theirs: found and dead-lettered alone."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    async with open_store(url) as store:
        await store.migrate()
    with sqlite3.connect(tmp_path / "events.db") as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
    db.close()
    async with open_store(url) as store:
        with pytest.raises(StoreError, match="refused by a trigger") as caught:
            await store.write_batch(stream(5))
        assert not isinstance(caught.value, StoreUnavailableError)


@pytest.mark.postgres
async def test_a_tls_setting_the_server_refuses_is_a_settings_error_not_an_outage(
    pg_schema_url: str,
) -> None:
    """Before, the service waited for the database forever, as for a server that is down."""
    admin = await asyncpg.connect(pg_schema_url)
    try:
        server_tls = await admin.fetchval("SHOW ssl") == "on"
    finally:
        await admin.close()
    refused = [
        (
            f"{pg_schema_url}&sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
            "expected a file at /nonexistent/root.crt, named by sslrootcert",
        ),
        (f"{pg_schema_url}&sslmode=verify-full", "sslmode"),  # ~/.postgresql/root.crt
    ]
    if not server_tls:
        refused.append((f"{pg_schema_url}&sslmode=require", "does not accept TLS"))
    for url, said in refused:
        with pytest.raises(StoreError, match=said) as caught:
            async with open_store(url):
                pass
        assert not isinstance(caught.value, StoreUnavailableError)


@pytest.mark.parametrize("where", ["/proc/agentstream.db", "directory"])
async def test_a_sqlite_path_that_cannot_be_written_is_a_settings_error(
    tmp_path: Path, where: str
) -> None:
    """A store on a read-only volume, or a directory's path: SQLite says only "unable to open
    database file", which read as an outage: the service waited for it forever."""
    path = tmp_path if where == "directory" else Path(where)
    with pytest.raises(StoreError, match="expected a SQLite store the service can write") as caught:
        async with open_store(f"sqlite:///{path}"):
            pass
    assert not isinstance(caught.value, StoreUnavailableError)
    assert str(path) in str(caught.value)


async def test_the_wait_for_the_store_at_start_says_so_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, one WARNING per attempt: every 5 s for as long as the database was down."""
    settings = PersistenceSettings(store_retry_backoff_ms=1, store_retry_max_backoff_ms=2)
    attempts = 0

    async def opening() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 20:
            raise StoreUnavailableError("PostgreSQL postgresql://db/x: connection refused")
        return "open"

    with caplog.at_level(logging.INFO, logger="agentstream.consumers.persistence"):
        assert await until_available("opening the store", opening, settings) == "open"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        (
            "WARNING",
            "opening the store: store unavailable (attempt 1), retrying: "
            "PostgreSQL postgresql://db/x: connection refused",
        ),
        (
            "INFO",
            "opening the store: the store answers after 19 attempts (18 more since the last line)",
        ),
    ]


@pytest.mark.postgres
async def test_batches_slower_than_statement_timeout_are_written_in_smaller_parts(
    kafka_settings: KafkaSettings, pg_schema_url: str
) -> None:
    """A DBA's statement_timeout shorter than a batch's insert: before, the same batch was
    cancelled and retried forever and the partition stalled. A trigger makes each row take
    10 ms, the timeout is 250 ms: batches of tens of events cannot pass whole."""
    events = stream(300)
    await migrated(pg_schema_url)
    admin = await asyncpg.connect(pg_schema_url)
    try:
        await admin.execute(
            "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$"
        )
        await admin.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_row()"
        )
    finally:
        await admin.close()
    settings = settings_for(kafka_settings, f"{pg_schema_url}&statement_timeout=250")
    async with persistence(settings) as (consumer, store):
        await produce_events(kafka_settings, events)
        await wait_until(lambda: count_is(store, 300), timeout=60, what="the 300 events stored")
        await wait_until(lambda: committed_total(consumer) == 300, what="offsets committed")
        assert metric(consumer, "agentstream_persistence_store_unavailable_total") == 0
        assert dead_lettered(consumer) == 0


async def test_a_port_where_no_postgresql_answers_is_said_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another service on the port (Redis, say) takes the connection and never answers the
    startup message: the error was `TimeoutError()`, after 60 s."""
    monkeypatch.setattr(postgres_store, "_CONNECT_TIMEOUT_S", 0.5)
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        store = open_store(f"postgresql://postgres@127.0.0.1:{port}/test")
        with pytest.raises(StoreUnavailableError, match=r"no PostgreSQL handshake within 0\.5 s"):
            await store.open()
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_sqlite_file_deleted_under_the_store_is_an_outage(tmp_path: Path) -> None:
    """SQLite went on writing the open, removed file: the service acknowledged the events
    (offsets committed, /readyz 200) and they were gone at exit."""
    path = tmp_path / "events.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.migrate()
        assert await store.write_batch(stream(1)) == 1
        for name in ("events.db", "events.db-wal", "events.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        with pytest.raises(StoreUnavailableError, match="deleted or replaced while open"):
            await store.write_batch(stream(1, prefix="later"))
