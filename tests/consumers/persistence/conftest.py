"""Stores for the persistence tests: a fresh SQLite file, or a private PostgreSQL schema.

PostgreSQL tests are marked ``postgres``. They need the server at
``AGENTSTREAM_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``); when
it does not answer they are skipped, saying why, unless ``AGENTSTREAM_REQUIRE_POSTGRES=1``
(set by ``.ci/run``), which makes them fail instead.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from support.proxy import TcpProxy

from agentstream.consumers.persistence import Store, open_store

PG_BASE = os.environ.get("AGENTSTREAM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""

    async def probe() -> None:
        conn = await asyncpg.connect(PG_BASE, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"no PostgreSQL answers at {PG_BASE}: {exc!r}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres") is None:
        return
    problem = postgres_problem()
    if problem is None:
        return
    if os.environ.get("AGENTSTREAM_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{problem} (AGENTSTREAM_REQUIRE_POSTGRES=1 requires it)", pytrace=False)
    pytest.skip(f"{problem}; set AGENTSTREAM_TEST_POSTGRES or start the server")


def with_path(url: str, database: str) -> str:
    head, _, tail = url.rpartition("/")
    return f"{head}/{database}{tail[tail.find('?') :] if '?' in tail else ''}"


@pytest.fixture
async def pg_schema_url() -> AsyncIterator[str]:
    """A URL whose ``search_path`` is a schema of its own (dropped afterwards)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_BASE)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in PG_BASE else "?"
        yield f"{PG_BASE}{sep}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def pg_database_url() -> AsyncIterator[str]:
    """A URL of a database of its own (for tests that kill every connection to it)."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_BASE)
    try:
        await admin.execute(f"CREATE DATABASE {database}")
        yield with_path(PG_BASE, database)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_schema_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, migrated store."""
    async with open_store(store_url) as opened:
        await opened.migrate()
        yield opened


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    """A proxy in front of PostgreSQL that the test can stop and start."""
    target = urlsplit(PG_BASE)
    proxy = TcpProxy(0, target.port or 5432, target_host=target.hostname or "127.0.0.1").start()
    try:
        yield proxy
    finally:
        proxy.stop()
