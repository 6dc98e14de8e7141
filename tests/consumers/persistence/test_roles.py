"""The PostgreSQL store run as a least-privilege role: the migrations applied by a role that may
create tables (``agentstream db migrate``), the service by one that may only read and write
rows. Before, the service's start tried ``CREATE TABLE IF NOT EXISTS`` anyway and waited
forever on "permission denied", the schema already at its version."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest
from support.persistence import stream

from agentstream.consumers.persistence import open_store
from agentstream.consumers.persistence.store import StoreUnavailableError
from agentstream.schemas import RecordLocation

from .conftest import PG_BASE

pytestmark = pytest.mark.postgres


@pytest.fixture
async def writer_role(pg_schema_url: str) -> AsyncIterator[tuple[str, str]]:
    """A role that may use the test's schema and nothing more yet: ``(name, its URL)``."""
    role, password = f"t_writer_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    schema = pg_schema_url.rsplit("search_path=", 1)[1]
    admin = await asyncpg.connect(PG_BASE)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        server = urlsplit(PG_BASE)
        yield (
            role,
            (
                f"postgresql://{role}:{password}@{server.hostname}:{server.port or 5432}"
                f"{server.path}?search_path={schema}"
            ),
        )
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_a_role_that_may_only_write_rows_runs_the_service_on_a_migrated_schema(
    pg_schema_url: str, writer_role: tuple[str, str]
) -> None:
    role, url = writer_role
    async with open_store(pg_schema_url) as owner:  # `agentstream db migrate`, as the owner
        assert await owner.migrate() == [1]
    schema = pg_schema_url.rsplit("search_path=", 1)[1]
    admin = await asyncpg.connect(PG_BASE)
    try:
        tables = f"ALL TABLES IN SCHEMA {schema}"
        await admin.execute(f"GRANT SELECT, INSERT, DELETE ON {tables} TO {role}")
    finally:
        await admin.close()
    events = stream(50, sessions=2)
    async with open_store(url) as store:
        assert await store.migrate() == []  # the service's start: nothing to apply, no DDL
        where = [RecordLocation("t.events", 0, i) for i in range(50)]
        assert await store.write_batch(events, where) == 50
        assert len(await store.timeline("s1")) == 25


async def test_a_pending_migration_without_the_privilege_says_what_to_do(
    writer_role: tuple[str, str],
) -> None:
    _, url = writer_role
    async with open_store(url) as store:
        with pytest.raises(StoreUnavailableError) as refused:  # the service waits and retries
            await store.migrate()
    text = str(refused.value)
    assert "permission denied" in text
    assert "apply the migrations as a role that may create tables" in text
