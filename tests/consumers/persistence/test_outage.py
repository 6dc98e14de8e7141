"""PostgreSQL going away during ingestion: the service retries, commits no offsets for
unwritten events, and when the database is back every event is stored exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

import asyncpg
import pytest
from support.persistence import (
    committed_total,
    count_is,
    metric,
    persistence,
    settings_for,
    stream,
)
from support.produce import produce_events
from support.proxy import TcpProxy
from support.runtime import running_consumer, wait_until

from agentstream.consumers.persistence import Store, StoreUnavailableError, open_store
from agentstream.consumers.persistence.service import SERVICE
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings

pytestmark = pytest.mark.postgres


async def stored_ids(store: Store) -> list[str]:
    return [e.event_id for e in await store.events(limit=1_000_000)]


async def test_outage_holds_offsets_and_loses_nothing(
    kafka_settings: KafkaSettings, pg_database_url: str, pg_proxy: TcpProxy
) -> None:
    proxy = pg_proxy
    before, during = stream(500, prefix="a"), stream(500, prefix="b")
    settings = settings_for(kafka_settings, proxy.url_for(pg_database_url))
    async with persistence(settings) as (consumer, _), open_store(pg_database_url) as direct:
        await produce_events(kafka_settings, before)
        await wait_until(lambda: count_is(direct, 500), what="the first 500 stored")
        await wait_until(lambda: committed_total(consumer) == 500, what="their offsets committed")

        proxy.stop()  # the database goes away: connections cut, new ones refused
        await produce_events(kafka_settings, during)
        await wait_until(
            lambda: metric(consumer, "agentstream_persistence_store_unavailable_total") >= 6,
            what="the service retrying the store",
        )
        assert metric(consumer, "agentstream_persistence_store_up") == 0
        assert committed_total(consumer) == 500  # nothing unwritten was committed
        assert await direct.count() == 500

        proxy.start()  # back on the same port
        await wait_until(lambda: count_is(direct, 1_000), what="the rest stored after the outage")
        await wait_until(lambda: committed_total(consumer) == 1_000, what="all offsets committed")
        assert metric(consumer, "agentstream_persistence_store_up") == 1
        assert sorted(await stored_ids(direct)) == sorted(e.event_id for e in before + during)


async def surviving_count(store: Store) -> int:
    """The count, or -1 when the killer cut this reader's connection too."""
    try:
        return await store.count()
    except StoreUnavailableError:
        return -1


KILL_ROUNDS = 100
"""Rounds of the killer (30 ms apart, plus the query): about 3 to 10 s of cut connections."""


async def test_connections_killed_during_ingestion(
    kafka_settings: KafkaSettings, pg_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[Event] = stream(6_000, sessions=50)
    database = pg_database_url.rsplit("/", 1)[1].split("?")[0]
    settings = settings_for(kafka_settings, pg_database_url, batch_max_records=100)
    admin = await asyncpg.connect(pg_database_url.rsplit("/", 1)[0] + "/test")
    kills = 0

    async def killer(store: Store) -> None:
        # A bounded number of rounds: on a slow machine a write (with its new connection)
        # takes longer than the 30 ms between kills, and killing until everything is stored
        # never ended (a livelock of the test, not the service: every write was cut).
        nonlocal kills
        for _ in range(KILL_ROUNDS):
            if await surviving_count(store) >= len(events):
                return
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            kills += killed
            await asyncio.sleep(0.03)

    try:
        async with persistence(settings) as (consumer, _), open_store(pg_database_url) as direct:
            task = asyncio.create_task(killer(direct))
            try:
                await produce_events(kafka_settings, events)
                await wait_until(
                    lambda: _is(surviving_count(direct), len(events)), timeout=60, what="all stored"
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            failed_writes = metric(consumer, "agentstream_persistence_store_unavailable_total")
        async with open_store(pg_database_url) as reader:
            ids = await stored_ids(reader)
    finally:
        await admin.close()
    assert kills > 0
    assert failed_writes > 0, "no write was interrupted: the test did not exercise the outage path"
    # Each retry says why the attempt failed, not that cleaning up its connection found it
    # already taken back by asyncpg (the server had closed it).
    retries = [r.getMessage() for r in caplog.records if "unavailable writing" in r.getMessage()]
    assert retries
    assert not [m for m in retries if "released back to the pool" in m]
    assert len(ids) == len(set(ids)) == len(events)
    assert set(ids) == {e.event_id for e in events}


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_service_waits_for_the_database_at_start(
    kafka_settings: KafkaSettings,
    pg_database_url: str,
    pg_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = pg_proxy.url_for(pg_database_url)
    pg_proxy.stop()  # the database is down before the service starts
    events = stream(100)
    await produce_events(kafka_settings, events)
    settings = settings_for(kafka_settings, url)
    consumer = EventConsumer(settings, service=SERVICE.name)

    async def service() -> list[str]:
        async with SERVICE.setup(consumer, settings) as store, running_consumer(consumer):
            assert isinstance(store, Store)
            await wait_until(lambda: count_is(store, 100), what="the 100 events stored")
            return await stored_ids(store)

    caplog.set_level(logging.DEBUG, "agentstream.consumers.persistence")
    task = asyncio.create_task(service())
    try:
        await wait_until(
            lambda: caplog.text.count("opening the store: attempt") >= 3,
            what="the service retrying to open the store",
        )
        said = caplog.text.count("opening the store: store unavailable (attempt 1)")
        assert said == caplog.text.count("store unavailable") == 1  # once a minute
        assert not task.done()  # waiting, not crashed
        pg_proxy.start()
        ids = await asyncio.wait_for(task, timeout=60)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sorted(ids) == sorted(e.event_id for e in events)


async def test_a_missing_table_is_waited_out_not_dead_lettered(
    kafka_settings: KafkaSettings, pg_schema_url: str
) -> None:
    events = stream(50)
    async with persistence(settings_for(kafka_settings, pg_schema_url)) as (consumer, store):
        admin = await asyncpg.connect(pg_schema_url)
        try:
            await admin.execute("ALTER TABLE events RENAME TO events_away")  # an operator mistake
            await produce_events(kafka_settings, events)
            await wait_until(
                lambda: metric(consumer, "agentstream_persistence_store_unavailable_total") >= 3,
                what="the service retrying",
            )
            assert committed_total(consumer) == 0
            await admin.execute("ALTER TABLE events_away RENAME TO events")
        finally:
            await admin.close()
        await wait_until(lambda: count_is(store, 50), what="the 50 events stored")
        await wait_until(lambda: committed_total(consumer) == 50, what="their offsets committed")
