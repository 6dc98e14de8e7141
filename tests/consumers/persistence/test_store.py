"""The store contract, on real SQLite and real PostgreSQL (each test runs on both)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from support.samples import FIXED_TIME, all_sample_events, sample_event

from agentstream.consumers.persistence import Store, StoreError, open_store
from agentstream.consumers.persistence.service import PersistenceSettings
from agentstream.consumers.persistence.store import redact_url
from agentstream.schemas import Event, RecordLocation, decode_event, encode_event
from agentstream.schemas.settings import settings_error

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
_US = timedelta(microseconds=1)


def ev(
    session: str,
    minute: float,
    *,
    type: str = "tool.called",
    seq: int = 0,
    agent: str = "agent-a",
    data: dict[str, object] | None = None,
) -> Event:
    return Event(
        type=type,
        timestamp=T0 + timedelta(minutes=minute),
        session_id=session,
        agent_id=agent,
        seq=seq,
        source="pod-1",
        data=dict(data) if data is not None else {"name": "weather", "args": {"city": "Paris"}},
    )


async def test_migrate_is_versioned_and_idempotent(store_url: str) -> None:
    async with open_store(store_url) as a, open_store(store_url) as b:
        assert await a.schema_version() == 0
        with pytest.raises(StoreError, match="agentstream db migrate"):
            await a.require_schema()
        first, second = await asyncio.gather(a.migrate(), b.migrate())
        assert sorted(first + second) == [1]  # applied once although both ran it
        assert await a.migrate() == []
        assert await b.schema_version() == a.latest_version() == 1
        await a.require_schema()


async def test_writes_are_idempotent_by_event_id(store: Store) -> None:
    events = all_sample_events()
    assert await store.write_batch(events) == len(events)
    assert await store.write_batch(events) == 0
    assert (
        await store.write_batch(events[:3] + events[:3] + [sample_event("tool.called", 999)]) == 1
    )
    assert await store.count() == len(events) + 1


async def test_batches_of_any_size_count_only_new_events(store: Store) -> None:
    events = [ev(f"s{i % 7}", i / 1000, seq=i) for i in range(4_321)]  # several statements
    assert await store.write_batch(events) == 4_321
    new = [ev("s-new", 0, seq=i) for i in range(7)]
    assert await store.write_batch(events[:1_000] + new + events[3_000:3_050]) == 7
    assert await store.write_batch(new[:1]) == 0
    assert await store.count() == 4_328
    assert [e.seq for e in await store.timeline("s-new")] == list(range(7))


async def test_timeline_round_trips_events_in_timestamp_seq_id_order(store: Store) -> None:
    events = [
        *(ev("s1", m, seq=s) for m, s in [(3, 0), (1, 5), (2, 1), (1, 2)]),
        ev("s2", 0),
        *all_sample_events(),
    ]
    same_instant = [sample_event("llm.token", 100 + i) for i in range(5)]  # equal timestamp and seq
    for e in same_instant:
        e.seq = 7
    events += same_instant
    shuffled = events[:]
    random.Random(1).shuffle(shuffled)
    locations = [RecordLocation("t.events", i % 4, i) for i in range(len(shuffled))]
    await store.write_batch(shuffled, locations)

    s1 = await store.timeline("s1")
    assert [(e.timestamp.minute, e.seq) for e in s1] == [(1, 2), (1, 5), (2, 1), (3, 0)]
    sample_session = all_sample_events()[0].session_id
    timeline = await store.timeline(sample_session)
    expected = sorted(
        [e for e in events if e.session_id == sample_session],
        key=lambda e: (e.timestamp, e.seq, e.event_id),
    )
    assert timeline == expected  # every field, data included, comes back as it went in
    assert await store.timeline("nope") == []


async def test_both_backends_break_ties_by_the_producers_id_alike(store: Store) -> None:
    """PostgreSQL broke ties by its ``uuid`` column (a UUIDv5 for an id that is no UUID): its
    timelines came in another order than SQLite's."""
    ids = [
        "evt-2",
        "evt-1",
        "evt-3",
        "C0FFEE00-0000-4000-8000-0000000000AB",
        "b0000000-0000-4000-8000-000000000000",
        "A0000000-0000-4000-8000-000000000000",
    ]
    events = [
        Event(event_id=i, type="tool.called", timestamp=T0, session_id="ties", data={}) for i in ids
    ]
    assert await store.write_batch(events) == len(ids)
    assert await store.write_batch(events) == 0
    assert [e.event_id for e in await store.timeline("ties")] == sorted(ids)
    assert [e.event_id for e in await store.events(session="ties")] == sorted(ids)


async def test_lookups_by_the_ids_a_producer_used_find_its_events(store: Store) -> None:
    """PostgreSQL stores NUL characters as U+FFFD; looking a session up by the id the
    producer used raised "invalid byte sequence" there."""
    event = Event(
        type="turn.ended",
        timestamp=T0,
        session_id="s\x00x",
        agent_id="a\x00b",
        data={"round": 0, "stop_reason": "end_turn"},
    )
    assert await store.write_batch([event]) == 1
    assert len(await store.timeline("s\x00x")) == 1
    assert len(await store.events(session="s\x00x", agent="a\x00b", type="turn.*")) == 1
    (summary,) = await store.sessions(agent="a\x00b")
    assert summary.stop_reason == "end_turn"


@pytest.mark.parametrize("reason", [True, 2**70, {"why": "x", "n": 1}, None])
async def test_a_stop_reason_that_is_no_string_is_shown_as_none(
    store: Store, reason: object
) -> None:
    """SQLite showed ``true`` as 1 and 2**70 as a rounded float, PostgreSQL as JSON text."""
    ended = ev("s1", 1, type="turn.ended", data={"round": 0, "stop_reason": reason})
    assert await store.write_batch([ev("s1", 0), ended]) == 2
    (summary,) = await store.sessions()
    assert summary.stop_reason is None


async def test_sessions_summarise_whole_sessions(store: Store) -> None:
    await store.write_batch(
        [
            ev("s1", 0, type="turn.started", data={"round": 0}),
            ev("s1", 1, type="turn.ended", data={"round": 0, "stop_reason": "max_rounds"}),
            ev("s1", 5, type="turn.ended", data={"round": 1, "stop_reason": "end_turn"}),
            ev("s1", 6),
            ev("s2", 10, agent="agent-b"),
            ev("s2", 70, agent="agent-b"),
            ev("", 80),  # no session: not a session
        ]
    )
    s2, s1 = await store.sessions()
    assert (s1.session_id, s1.agent_id, s1.events) == ("s1", "agent-a", 4)
    assert (s1.first, s1.last, s1.duration) == (T0, T0 + timedelta(minutes=6), timedelta(minutes=6))
    assert s1.stop_reason == "end_turn"  # the last turn.ended, not the first
    assert (s2.session_id, s2.events, s2.stop_reason) == ("s2", 2, None)
    assert s2.duration == timedelta(hours=1)

    assert [s.session_id for s in await store.sessions(agent="agent-b")] == ["s2"]
    recent = await store.sessions(since=T0 + timedelta(minutes=60))
    assert [(s.session_id, s.events) for s in recent] == [("s2", 2)]  # whole session counted
    assert [s.session_id for s in await store.sessions(limit=1)] == ["s2"]
    assert await store.sessions(agent="agent-c") == []


async def test_sessions_of_an_agent_since_a_time_need_not_be_one_event(store: Store) -> None:
    """ "An event of the agent and an event since then": a session whose agent acted an hour
    before another agent of it was left out (one event had to be both), and its line showed
    the other agent."""
    await store.write_batch([ev("x", 0, agent="agent-a"), ev("x", 120, agent="agent-b")])
    await store.write_batch([ev("y", 0, agent="agent-a")])  # nothing since: out
    found = await store.sessions(agent="agent-a", since=T0 + timedelta(minutes=60))
    assert [(s.session_id, s.agent_id, s.events) for s in found] == [("x", "agent-a", 2)]


async def test_events_filter_by_type_agent_session_and_time(store: Store) -> None:
    await store.write_batch(all_sample_events())
    await store.write_batch([ev("s9", m, agent="agent-z") for m in range(10)])
    assert {e.type for e in await store.events(type="tool.*")} == {
        "tool.called",
        "tool.result",
        "tool.error",
    }
    assert {e.type for e in await store.events(type="audit.*")} == {
        t for t in (e.type for e in all_sample_events()) if t.startswith("audit.")
    }
    assert len(await store.events(type="audit.tool_call_attempt")) == 1
    assert len(await store.events(type="*")) == len(all_sample_events()) + 10
    window = await store.events(
        agent="agent-z", since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5)
    )
    assert [e.timestamp.minute for e in window] == [2, 3, 4]
    assert len(await store.events(session="s9", limit=4)) == 4
    assert len(await store.events(since=FIXED_TIME, until=FIXED_TIME + timedelta(seconds=1))) == 50
    with pytest.raises(StoreError, match="prefix pattern"):
        await store.events(type="tool.c*")


async def test_delete_before_removes_at_most_limit_old_events(store: Store) -> None:
    old = [ev("old", -60 * 24 * d) for d in range(10, 35)]
    new = [ev("new", 0)]
    await store.write_batch(old + new)
    assert await store.delete_before(T0 - timedelta(days=1), limit=10) == 10
    assert await store.delete_before(T0 - timedelta(days=1), limit=10) == 10
    assert await store.delete_before(T0 - timedelta(days=1), limit=10) == 5
    assert await store.delete_before(T0 - timedelta(days=1), limit=10) == 0
    assert [e.session_id for e in await store.events()] == ["new"]


async def test_awkward_values_are_stored_and_deduplicated(store: Store) -> None:
    odd = Event(
        event_id="not-a-uuid",
        type="tool.called",
        session_id="s\x00x",
        seq=2**64 - 1,  # a uint64 sequence from some producer
        data={"name": "a\x00b", "args": {"raw": "\\u0000 stays text", "n": 2**60}},
    )
    assert await store.write_batch([odd]) == 1
    assert await store.write_batch([odd]) == 0
    (back,) = await store.events()
    assert back.event_id == "not-a-uuid"
    assert back.seq == 2**64 - 1
    assert back.data["args"] == {"raw": "\\u0000 stays text", "n": 2**60}
    # SQLite keeps NUL characters; PostgreSQL cannot and stores U+FFFD instead
    assert back.data["name"] in ("a\x00b", "a\ufffdb")


async def test_columns_hold_the_decoded_envelope_of_a_foreign_document(store: Store) -> None:
    # A newer producer's envelope: an unknown field, escapes, and fields left to their defaults.
    text = (
        '{"event_id":"0192f3a0-0000-7000-8000-000000000001","type":"tool.called",'
        '"timestamp":"2026-11-01T13:00:00.000001+01:00","session_id":"s\\u00e9-1",'
        '"source":"pod\\"9\\"","seq":7,"x_added_later":{"a":1},"data":{"name":"w"}}'
    )
    event = decode_event(text.encode())
    bare = Event(event_id="0192f3a0-0000-7000-8000-000000000002", type="turn.ended", timestamp=T0)
    where = [RecordLocation("events", 3, 41), RecordLocation("events", 3, 42)]
    assert await store.write_batch([event, bare], where, [text, encode_event(bare).decode()]) == 2

    (summary,) = await store.sessions(since=T0)
    assert (summary.session_id, summary.agent_id, summary.events) == ("s\u00e9-1", "", 1)
    assert summary.first == summary.last == T0 + _US
    (found,) = await store.events(session="s\u00e9-1", agent="", type="tool.*", since=T0)
    assert found == event
    assert (await store.events(session="", agent="", type="turn.ended", until=T0 + _US)) == [bare]
    assert [e.source for e in await store.events()] == ["", 'pod"9"']


def test_a_store_url_of_no_known_kind_is_a_settings_error() -> None:
    """Refused when the settings are read, at start: the service waited for the broker first
    and only then said the URL was wrong."""
    with pytest.raises(ValidationError) as caught:
        PersistenceSettings(store="mysql://localhost/x")
    error = settings_error(caught.value)
    assert str(error) == (
        "invalid settings: store (AGENTSTREAM_STORE): expected a store URL sqlite:///path or "
        "postgresql://user@host/db, got 'mysql://localhost/x'"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://agent:s3cret@db:5432/events", "postgresql://agent:***@db:5432/events"),
        # libpq and asyncpg take the password as a query parameter too
        ("postgresql://db/events?password=s3cret&sslmode=require",
         "postgresql://db/events?password=***&sslmode=require"),
        ("postgres://db/events?sslmode=require&SSLPASSWORD=s3cret",
         "postgres://db/events?sslmode=require&SSLPASSWORD=***"),
        ("postgresql://agent@db/events", "postgresql://agent@db/events"),
        ("postgresql://agent:s3cret@[::1/events", "postgresql://*** (a URL that does not parse)"),
        # unencoded, a '#', '/' or '?' ends the host part, and the password is not looked for
        ("postgresql://agent:ab#s3cret@db/events", "postgresql://*** (a URL that does not parse)"),
        ("postgresql://agent:ab/s3cret@db/events", "postgresql://*** (a URL that does not parse)"),
        ("postgresql://agent:ab?s3cret@db/events", "postgresql://*** (a URL that does not parse)"),
    ],
)  # fmt: skip
def test_messages_never_show_a_store_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in repr(PersistenceSettings(store="postgresql://agent:s3cret@db/events"))
    with pytest.raises(ValidationError) as caught:
        PersistenceSettings(store=url.replace("postgres", "mysql", 1))
    assert "s3cret" not in str(settings_error(caught.value))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://agent:ab#s3cret@db/events", "percent-encode the characters #, /, ? and @"),
        ("postgresql://agent:ab?s3cret@db/events", "percent-encode the characters #, /, ? and @"),
        ("postgresql://agent:s3cret@[::1/events", "Invalid IPv6 URL"),
        ("postgresql://agent:s3cret@db:54x2/events", "Port could not be cast to integer"),
    ],
)  # fmt: skip
def test_a_postgresql_url_that_does_not_parse_is_refused_with_the_settings(
    url: str, problem: str
) -> None:
    # it reached asyncpg (whose ValueError quoted the password) or a ValueError traceback
    with pytest.raises(ValidationError) as caught:
        PersistenceSettings(store=url)
    message = str(settings_error(caught.value))
    assert "expected a postgresql:// URL, got postgresql://" in message and problem in message
    assert "s3cret" not in message


async def test_readers_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"sqlite:///path or postgresql://"):
        open_store("mysql://localhost/x")
    with pytest.raises(StoreError, match="absolute"):
        open_store("sqlite://relative.db")
    with pytest.raises(StoreError, match="%3F"):
        open_store(f"sqlite:///{tmp_path}/odd?name.db")
    odd = open_store(f"sqlite:///{tmp_path}/odd%3Fname%20x.db")
    async with odd:
        await odd.migrate()
    assert (tmp_path / "odd?name x.db").exists()
    async with open_store(odd.url, readonly=True) as reader:
        assert await reader.schema_version() == 1
    missing = open_store(f"sqlite:///{tmp_path}/missing.db", readonly=True)
    with pytest.raises(StoreError, match="found no such file"):
        await missing.open()
    unopened = open_store(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(StoreError, match="not open"):
        await unopened.count()


async def test_a_negative_limit_is_refused_on_both_stores(store: Store) -> None:
    """SQLite reads LIMIT -1 as no limit and PostgreSQL refuses it: both refuse it here."""
    for query in (store.events(limit=-1), store.sessions(limit=-3)):
        with pytest.raises(ValueError, match="expected limit >= 0, got -"):
            await query
    with pytest.raises(ValueError, match="expected limit >= 1, got 0"):
        await store.delete_before(T0, limit=0)
    assert await store.events(limit=0) == []


async def test_a_time_without_a_zone_is_utc_on_both_backends(store: Store) -> None:
    """SQLite raised TypeError (naive against aware) where PostgreSQL answered."""
    await store.write_batch([ev("n", 0), ev("n", 30)])
    naive = (T0 + timedelta(minutes=10)).replace(tzinfo=None)
    assert [e.timestamp for e in await store.events(since=naive)] == [T0 + timedelta(minutes=30)]
    assert [e.timestamp for e in await store.events(until=naive)] == [T0]
    assert [s.session_id for s in await store.sessions(since=naive)] == ["n"]
    assert await store.delete_before(naive) == 1
