"""The indexed columns a store fills from each event, read back with SQL, on both backends."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from agentstream.consumers.persistence import Store, StoreError, open_store, postgres_store
from agentstream.schemas import Event, RecordLocation, decode_event, encode_event

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
_COLUMNS = (
    "type, agent_id, session_id, seq, schema_version, kafka_topic, kafka_partition, kafka_offset"
)


async def columns(store: Store, store_url: str) -> dict[str, tuple[object, ...]]:
    """Every row's columns by session id."""
    sql = f"SELECT {_COLUMNS} FROM events"
    if store.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as db:
            rows = [tuple(r) for r in db.execute(sql)]
    else:
        conn = await asyncpg.connect(store_url)
        try:
            rows = [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
    return {str(row[2]): row for row in rows}


def event(session: str, *, seq: int = 0, schema_version: int = 1, agent_id: str = "") -> Event:
    return Event(
        type="tool.called",
        timestamp=T0,
        session_id=session,
        agent_id=agent_id,
        seq=seq,
        schema_version=schema_version,
        source="pod",
    )


async def test_columns_come_from_the_document_with_defaults_and_clamps(
    store: Store, store_url: str
) -> None:
    # A foreign envelope without seq, schema_version or agent_id: the Event defaults.
    bare = (
        '{"event_id":"e-bare","type":"turn.ended","timestamp":"2026-11-01T12:00:00Z",'
        '"session_id":"bare"}'
    )
    huge = event("huge", seq=2**64 - 1, schema_version=2**40, agent_id="a")
    low = event("low", seq=-(2**63), schema_version=-(2**40))
    plain = event("plain", seq=7, schema_version=2, agent_id="b")
    batch = [decode_event(bare.encode(), validate=False), huge, low, plain]
    documents = [bare, *(encode_event(e).decode() for e in batch[1:])]
    where = [RecordLocation("agentstream.events", 3, 40 + i) for i in range(4)]
    assert await store.write_batch(batch, where, documents) == 4

    found = await columns(store, store_url)
    int32 = store.backend == "postgresql"  # schema_version is an integer column there
    assert found == {
        "bare": ("turn.ended", "", "bare", 0, 1, "agentstream.events", 3, 40),
        "huge": ("tool.called", "a", "huge", 2**63 - 1, 2**31 - 1 if int32 else 2**40,
                 "agentstream.events", 3, 41),
        "low": ("tool.called", "", "low", -(2**63), -(2**31) if int32 else -(2**40),
                "agentstream.events", 3, 42),
        "plain": ("tool.called", "b", "plain", 7, 2, "agentstream.events", 3, 43),
    }  # fmt: skip
    assert [e.seq for e in await store.timeline("huge")] == [2**64 - 1]  # exact in the document


async def test_each_event_keeps_its_own_kafka_location_or_none(
    store: Store, store_url: str
) -> None:
    mixed = [event("m1"), event("m2"), event("m3")]
    where = [
        RecordLocation("agentstream.events", 0, 5),
        RecordLocation("agentstream.events", 1, 5),
        RecordLocation("agentstream.tokens", 0, 9),
    ]
    assert await store.write_batch(mixed, where) == 3
    assert await store.write_batch([event("none")]) == 1

    found = await columns(store, store_url)
    assert [found[s][5:] for s in ("m1", "m2", "m3", "none")] == [
        ("agentstream.events", 0, 5),
        ("agentstream.events", 1, 5),
        ("agentstream.tokens", 0, 9),
        (None, None, None),
    ]


@pytest.mark.postgres
async def test_a_batch_past_the_statement_size_is_split_in_one_transaction(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [event(f"s{i}", seq=i) for i in range(7)]
    size = len(encode_event(events[0]))
    monkeypatch.setattr(postgres_store, "_CHUNK_CHARS", 2 * size + 10)  # two documents each
    async with open_store(pg_schema_url) as store:
        await store.migrate()
        assert await store.write_batch(events[:2]) == 2
        assert await store.write_batch(events) == 5  # four statements, the first all duplicates
        assert await store.count() == 7

        # A document the server refuses in the last statement: nothing of the batch is stored.
        late = [event(f"t{i}") for i in range(5)]
        documents = [encode_event(e).decode() for e in late[:4]] + ['{"type": oops}']
        with pytest.raises(StoreError):
            await store.write_batch(late, None, documents)
        assert await store.count() == 7


async def test_the_first_and_last_instants_are_stored_as_such_not_as_infinities(
    store: Store,
) -> None:
    """A Go producer's zero time is 0001-01-01T00:00:00Z. asyncpg wrote it (and the last
    microsecond of 9999) as -infinity / infinity and read those back naive: the session's
    summary raised TypeError, and retention never deleted the one nor always the other."""
    first = datetime.min.replace(tzinfo=UTC)
    last = datetime.max.replace(tzinfo=UTC)
    batch = [event("edge", seq=0), event("edge", seq=1), event("edge", seq=2)]
    batch[0].timestamp, batch[2].timestamp = first, last
    assert await store.write_batch(batch) == 3
    [summary] = await store.sessions()
    assert summary.first.tzinfo is not None and summary.last.tzinfo is not None
    assert summary.first - first < timedelta(milliseconds=1)
    assert last - summary.last < timedelta(milliseconds=1)
    assert summary.duration > timedelta(days=3_000_000)
    timeline = await store.timeline("edge")
    assert [e.timestamp for e in timeline] == [first, T0, last]  # exact in the document
    assert await store.delete_before(T0, limit=10) == 1  # the zero time is old, not -infinity
    assert [e.seq for e in await store.timeline("edge")] == [1, 2]


async def test_a_messagepack_extension_type_is_stored_not_a_failed_batch(store: Store) -> None:
    """A MessagePack record holding an extension type (JSON has none) made the document
    raise TypeError for the whole batch: retried, then every record of the batch, those of
    other sessions included, went to the dead-letter topic as "retries exhausted"."""
    import msgspec

    from agentstream.consumers.persistence.rows import original_json
    from agentstream.schemas import decode_record

    event = Event(
        type="tool.called",
        timestamp=T0,
        session_id="s-ext",
        data={"name": "t", "args": {"blob": msgspec.msgpack.Ext(5, b"xyz")}},
    )
    value = encode_event(event, "msgpack")
    decoded = decode_record(value, [("content-type", b"application/msgpack")])
    document = original_json(decoded, value, "msgpack")
    assert msgspec.json.decode(document)["data"]["args"] == {
        "blob": {"msgpack_ext": 5, "data": "eHl6"}
    }
    assert await store.write_batch([decoded], None, [document]) == 1
    (back,) = await store.timeline("s-ext")
    assert back.data["args"]["blob"] == {"msgpack_ext": 5, "data": "eHl6"}
