"""The persistence service in-process on a real broker: every event stored once, in order,
redelivery deduplicated, old events swept, offsets committed only after the store commit."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import string
from datetime import timedelta

import msgspec
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
from support.produce import produce_events, produce_raw
from support.runtime import read_records, wait_until

from agentstream.consumers.persistence import StoreError, open_store
from agentstream.consumers.persistence.service import SERVICE
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event, decode_record, event_headers, utc_now
from agentstream.schemas.codec import Encoding
from agentstream.schemas.settings import KafkaSettings


async def test_every_event_is_stored_once_and_in_session_order(
    kafka_settings: KafkaSettings, store_url: str
) -> None:
    events = stream(600)
    settings = settings_for(kafka_settings, store_url)
    async with persistence(settings) as (consumer, store):
        await produce_events(kafka_settings, events)
        await wait_until(lambda: count_is(store, 600), timeout=30, what="600 events stored")
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
        await wait_until(lambda: count_is(store, 40), what="40 events stored")
    with contextlib.closing(sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))) as db:
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


async def test_a_refused_event_does_not_take_its_batch_down(
    kafka_settings: KafkaSettings, sqlite_url: str
) -> None:
    async with open_store(sqlite_url) as store:
        await store.migrate()
    path = sqlite_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:  # a database rule
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.type = 'poison.refused' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
    events = stream(300)
    events[150] = Event(type="poison.refused", session_id="s10", data={})
    settings = settings_for(
        kafka_settings, sqlite_url, handler_retries=1, handler_retry_backoff_ms=1
    )
    async with persistence(settings) as (consumer, store):
        await produce_events(kafka_settings, events)
        await wait_until(lambda: committed_total(consumer) == 300, what="every record finished")
        assert await store.count() == 299  # the poison's batch-mates are stored
        dead = dead_lettered(consumer)
        retries = consumer.registry.get_sample_value(
            "agentstream_consumer_handler_retries_total",
            {"service": consumer.service, "handler": "persistence"},
        )
    assert dead == 1, "only the refused record is dead-lettered, not its batch"
    assert not retries, "a refusal is not retried"
    [letter] = await read_records(kafka_settings, kafka_settings.routing().dlq, 1)
    assert decode_record(letter.value, letter.headers).event_id == events[150].event_id
    headers = dict(letter.headers)
    assert headers["agentstream.errors.reason"].startswith(b"store refused the event: ")
    assert b"refused by a trigger" in headers["agentstream.errors.reason"]
    assert headers["agentstream.errors.exception.class.name"].endswith(b"BatchDeadLetter")


@pytest.mark.postgres
async def test_an_id_too_long_for_its_postgres_index_is_dead_lettered_alone(
    kafka_settings: KafkaSettings, pg_schema_url: str
) -> None:
    """PostgreSQL refuses an index entry over about 8 KB: a session id of 10,000 random
    letters (TOAST cannot shrink it) is refused by the database, not by the service."""
    events = stream(200)
    long_id = "".join(random.Random(7).choices(string.ascii_letters, k=10_000))
    events[120] = Event(type="tool.called", session_id=long_id, data={"name": "t", "args": {}})
    settings = settings_for(
        kafka_settings, pg_schema_url, handler_retries=1, handler_retry_backoff_ms=1
    )
    async with persistence(settings) as (consumer, store):
        await produce_events(kafka_settings, events)
        await wait_until(lambda: committed_total(consumer) == 200, what="every record finished")
        assert await store.count() == 199
    [letter] = await read_records(kafka_settings, kafka_settings.routing().dlq, 1)
    assert decode_record(letter.value, letter.headers).event_id == events[120].event_id
    reason = dict(letter.headers)["agentstream.errors.reason"]
    assert reason.startswith(b"store refused the event: ") and b"index row" in reason


async def test_envelope_fields_unknown_to_this_version_are_kept(
    kafka_settings: KafkaSettings, store_url: str
) -> None:
    """A newer producer's envelope (an extra top-level field) is stored as it came, for JSON
    and MessagePack records, and read back whole through ``timeline(raw=True)``."""
    topic = kafka_settings.routing().events
    newer = {"trace_flags": {"sampled": True, "vendor": ["a", 1]}, "priority": 7}
    sent = []
    encodings: tuple[Encoding, ...] = ("json", "msgpack")
    for i, encoding in enumerate(encodings):
        event = Event(type="tool.called", session_id="s-newer", seq=i, data={"name": "t"})
        document = {**msgspec.to_builtins(event), **newer, "data": {"name": "t", "later": i}}
        encode = msgspec.json.encode if encoding == "json" else msgspec.msgpack.encode
        headers = event_headers(event, encoding)
        await produce_raw(kafka_settings, topic, encode(document), key=b"s-newer", headers=headers)
        sent.append((event, document))
    settings = settings_for(kafka_settings, store_url)
    async with persistence(settings) as (_, store):
        await wait_until(lambda: count_is(store, 2), what="both events stored")
        raw = await store.timeline("s-newer", raw=True)
        events = await store.timeline("s-newer")
    assert raw == [document for _, document in sent]
    assert [e.event_id for e in events] == [event.event_id for event, _ in sent]
    assert events[1].data == {"name": "t", "later": 1}


async def test_a_store_migrated_by_a_newer_agentstream_stops_the_service_at_start(
    kafka_settings: KafkaSettings, sqlite_url: str
) -> None:
    async with open_store(sqlite_url) as store:
        await store.migrate()
    path = sqlite_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:  # autocommit
        db.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    settings = settings_for(kafka_settings, sqlite_url)
    consumer = EventConsumer(settings, service="persistence")
    with pytest.raises(StoreError, match=r"found version 99 \(written by a newer agentstream\)"):
        async with SERVICE.setup(consumer, settings):
            pass
