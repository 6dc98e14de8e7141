"""The PostgreSQL store behind PgBouncer in transaction mode, the usual way to share a
PostgreSQL server in production: prepared statements do not survive between transactions
there. With asyncpg's statement cache every write failed ("prepared statement
__asyncpg_stmt_4__ does not exist"), and the failure read as events the database refused:
the persistence service would have sent them to the dead-letter topic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from support.persistence import stream
from support.pgbouncer import PGBOUNCER, pgbouncer

from agentstream.consumers.persistence import open_store
from agentstream.consumers.persistence.postgres_store import statement_cache_option
from agentstream.consumers.persistence.store import StoreError, StoreUnavailableError
from agentstream.schemas import RecordLocation

from .conftest import PG_BASE

pytestmark = pytest.mark.postgres


def pooled(tmp_path: Path, database_url: str, pool_size: int) -> Iterator[str]:
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (the Makefile's APT_PACKAGES lists it)")
    database = urlsplit(database_url).path.lstrip("/")
    with pgbouncer(tmp_path, PG_BASE, database, pool_size=pool_size) as url:
        yield url


@pytest.fixture
def pooled_url(tmp_path: Path, pg_database_url: str) -> Iterator[str]:
    """Through PgBouncer, two server connections for the store's four."""
    yield from pooled(tmp_path, pg_database_url, 2)


async def test_the_store_works_behind_pgbouncer_in_transaction_mode(pooled_url: str) -> None:
    events = stream(2_000, sessions=10)
    async with open_store(pooled_url) as store:
        assert await store.migrate() == [1]

        async def writer(k: int) -> None:  # four partitions writing at once
            for start in range(k * 100, len(events), 400):
                batch = events[start : start + 100]
                where = [RecordLocation("t.events", k, start + i) for i in range(len(batch))]
                assert await store.write_batch(batch, where) == len(batch)

        await asyncio.gather(*(writer(k) for k in range(4)))
        assert await store.count() == 2_000
        timeline = await store.timeline("s3")
        assert [e.seq for e in timeline] == sorted(e.seq for e in events if e.session_id == "s3")
        assert len(await store.sessions(limit=50)) == 10


async def test_a_statement_cache_behind_pgbouncer_is_an_outage_saying_what_to_set(
    pooled_url: str,
) -> None:
    """The store's connection prepares its insert on one server connection; another client
    then holds that one in a transaction (PgBouncer hands out the server connection released
    last), so the next write runs on the other, where the statement does not exist. An outage
    (retried, nothing dead-lettered), with the setting to change."""
    events = stream(300)
    where = [RecordLocation("t.events", 0, i) for i in range(300)]
    async with open_store(f"{pooled_url}?statement_cache_size=100") as store:
        await store.migrate()
        await store.write_batch(events[:100], where[:100])
        other = await asyncpg.connect(pooled_url, statement_cache_size=0)
        try:
            async with other.transaction():
                await other.execute("SELECT 1")
                with pytest.raises(StoreUnavailableError) as failure:
                    await store.write_batch(events[100:200], where[100:200])
        finally:
            await other.close()
    assert "does not exist" in str(failure.value)
    assert "Remove statement_cache_size from the store URL" in str(failure.value)


def test_statement_cache_size_is_read_off_the_url_not_sent_to_the_server() -> None:
    base = "postgresql://u@h/db"
    assert statement_cache_option(base) == (base, 0)
    assert statement_cache_option(f"{base}?statement_cache_size=20") == (base, 20)
    assert statement_cache_option(f"{base}?search_path=x&statement_cache_size=0&sslmode=off") == (
        f"{base}?search_path=x&sslmode=off",
        0,
    )
    with pytest.raises(StoreError, match="expected statement_cache_size=N"):
        statement_cache_option(f"{base}?statement_cache_size=lots")
