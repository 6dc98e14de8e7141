"""The persistence service in-process on a real broker: every event stored once, in order,
redelivery deduplicated, old events swept, offsets committed only after the store commit."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from support.produce import produce_events
from support.runtime import running_consumer, wait_until
from support.samples import SAMPLE_DATA

from agentstream.consumers.persistence import Store, open_store
from agentstream.consumers.persistence.service import SERVICE, PersistenceSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event, utc_now
from agentstream.schemas.settings import KafkaSettings

TYPES = sorted(SAMPLE_DATA)


def settings_for(kafka: KafkaSettings, store: str, **overrides: Any) -> PersistenceSettings:
    return PersistenceSettings(
        bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=kafka.topic_prefix,
        store=store,
        linger_ms=1,
        commit_interval_ms=100,
        batch_max_records=200,
        batch_max_wait_ms=20,
        store_retry_backoff_ms=20,
        store_retry_max_backoff_ms=200,
        **overrides,
    )


def stream(count: int, *, sessions: int = 20, prefix: str = "s") -> list[Event]:
    """``count`` events of every type, spread over ``sessions`` sessions, per-session seq."""
    return [
        Event(
            type=TYPES[i % len(TYPES)],
            session_id=f"{prefix}{i % sessions}",
            agent_id=f"agent-{i % 3}",
            seq=i,
            source="pod-1",
            data=dict(SAMPLE_DATA[TYPES[i % len(TYPES)]]),
        )
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def persistence(settings: PersistenceSettings) -> AsyncIterator[tuple[EventConsumer, Store]]:
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings) as store, running_consumer(consumer):
        assert isinstance(store, Store)
        yield consumer, store


def metric(consumer: EventConsumer, name: str) -> float:
    return consumer.registry.get_sample_value(name) or 0.0


async def test_every_event_is_stored_once_and_in_session_order(
    kafka_settings: KafkaSettings, store_url: str
) -> None:
    events = stream(600)
    settings = settings_for(kafka_settings, store_url)
    async with persistence(settings) as (consumer, store):
        await produce_events(kafka_settings, events)
        await wait_until(lambda: _count_is(store, 600), timeout=30, what="600 events stored")
        for session in ("s0", "s7"):
            assert await store.timeline(session) == [e for e in events if e.session_id == session]

        await produce_events(kafka_settings, events[:250])  # redelivery, as after a crash
        await wait_until(
            lambda: metric(consumer, "agentstream_persistence_duplicate_events_total") == 250,
            what="250 duplicates seen",
        )
        assert await store.count() == 600
        assert metric(consumer, "agentstream_persistence_events_stored_total") == 600
        assert metric(consumer, "agentstream_persistence_store_up") == 1
    async with open_store(store_url) as reopened:
        assert await reopened.count() == 600


async def test_kafka_origin_is_recorded(kafka_settings: KafkaSettings, sqlite_url: str) -> None:
    events = stream(40)
    async with persistence(settings_for(kafka_settings, sqlite_url)) as (_, store):
        await produce_events(kafka_settings, events)
        await wait_until(lambda: _count_is(store, 40), what="40 events stored")
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
        rows = db.execute(
            "SELECT kafka_topic, kafka_partition, kafka_offset FROM events"
        ).fetchall()
    routing = kafka_settings.routing()
    assert {topic for topic, _, _ in rows} == {routing.events, routing.tokens}
    assert len(set(rows)) == 40  # one distinct (topic, partition, offset) per event
    assert all(p is not None and 0 <= p < 4 and o is not None and o >= 0 for _, p, o in rows)


async def test_retention_sweeps_old_events_while_ingesting(
    kafka_settings: KafkaSettings, store_url: str
) -> None:
    now = utc_now()
    old = stream(2_500, prefix="old")
    for i, event in enumerate(old):
        event.timestamp = now - timedelta(days=40, minutes=i)
    fresh = stream(500, prefix="new")
    settings = settings_for(
        kafka_settings,
        store_url,
        retention_days=30,
        retention_batch_size=300,
        retention_interval_s=0.1,
    )
    async with persistence(settings) as (consumer, store):
        await produce_events(kafka_settings, old + fresh)
        await wait_until(
            lambda: metric(consumer, "agentstream_persistence_events_stored_total") == 3_000,
            what="3,000 events stored",
        )
        await wait_until(
            lambda: metric(consumer, "agentstream_persistence_retention_deleted_total") == 2_500,
            what="2,500 old events swept",
        )
        assert await store.count() == 500
        assert {s.session_id[:3] for s in await store.sessions(limit=100)} == {"new"}


async def _count_is(store: Store, n: int) -> bool:
    return await store.count() == n
