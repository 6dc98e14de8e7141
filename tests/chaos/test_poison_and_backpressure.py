"""A poison flood (hypothesis-generated garbage and near-valid events among valid ones): every
record is stored or dead-lettered, none is lost, the service never dies. A slow store:
fetching pauses, memory stays bounded, every event is stored in the end."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.chaos import Figures, Row, read_all, size, sqlite_rows
from support.chaos import traffic as make_traffic
from support.persistence import settings_for
from support.runtime import ServiceProcess, rss_bytes, running_consumer, wait_until

from agentstream.consumers.persistence.service import SERVICE
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import encode_event, event_headers, record_key
from agentstream.schemas.ids import new_event_id
from agentstream.schemas.settings import KafkaSettings

POISON = size(150, 2_000)

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # key, value, headers


def near_valid() -> st.SearchStrategy[Record]:
    """A valid event, then one thing broken: a field removed or retyped, the type tag wrong,
    the value truncated, or the headers disagreeing with the value."""
    base = make_traffic(1).events[:10]

    @st.composite
    def build(draw: st.DrawFn) -> Record:
        event = draw(st.sampled_from(base))
        doc: dict[str, Any] = json.loads(encode_event(event))
        doc["event_id"] = new_event_id()  # each record its own event, so none is a duplicate
        headers = event_headers(event)
        how = draw(st.sampled_from(["drop", "retype", "type", "truncate", "header", "data"]))
        if how == "drop":
            doc.pop(draw(st.sampled_from(sorted(doc))))
        elif how == "retype":
            doc[draw(st.sampled_from(sorted(doc)))] = draw(
                st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers()))
            )
        elif how == "type":
            doc["type"] = draw(st.text(max_size=30))
            headers = [(k, doc["type"].encode() if k == "ce_type" else v) for k, v in headers]
        elif how == "data":
            doc["data"] = draw(
                st.dictionaries(st.text(max_size=10), st.recursive(
                    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8,
                ), max_size=4)
            )  # fmt: skip
        value = json.dumps(doc).encode()
        if how == "truncate":
            value = value[: draw(st.integers(0, max(0, len(value) - 1)))]
        if how == "header":
            headers = [
                (k, draw(st.binary(max_size=12)) if k == "ce_type" else v) for k, v in headers
            ]
        return record_key(event), value, headers

    return build()


garbage: st.SearchStrategy[Record] = st.tuples(
    st.one_of(st.none(), st.binary(max_size=16)),
    st.binary(max_size=300),
    st.lists(st.tuples(st.text(max_size=12), st.binary(max_size=12)), max_size=4),
)


def poison_records(count: int) -> list[Record]:
    """``count`` records drawn by hypothesis (explored, not random: edge cases first)."""
    found: list[Record] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(garbage, near_valid()))
    def collect(record: Record) -> None:
        found.append(record)

    collect()
    return found


async def test_poison_flood_every_record_stored_or_dead_lettered(
    kafka_settings: KafkaSettings, tmp_path: Path, group_env: dict[str, str]
) -> None:
    from aiokafka import AIOKafkaProducer

    figures = Figures(
        "poison-flood",
        f"Poison flood: {POISON} hypothesis-generated garbage and near-valid records "
        "among valid events",
        "every record is stored or in the DLQ with error headers; no service process dies",
    )
    poison = poison_records(POISON)
    valid = make_traffic(2).events[: len(poison)]
    topic = kafka_settings.routing().events
    producer = AIOKafkaProducer(**kafka_settings.producer_options())
    await producer.start()
    placed: list[tuple[int, int]] = []  # (partition, offset) of every record sent
    try:
        futures = []
        for i, (key, value, headers) in enumerate(poison):
            futures.append(await producer.send(topic, value, key=key, headers=headers))
            if i < len(valid):
                e = valid[i]
                futures.append(
                    await producer.send(
                        topic, encode_event(e), key=record_key(e), headers=event_headers(e)
                    )
                )
        for future in futures:
            meta = await future
            placed.append((meta.partition, meta.offset))
    finally:
        await producer.stop()
    db = tmp_path / "store.db"
    alive = {}
    with (
        ServiceProcess(
            "persistence", kafka_settings, "--store", f"sqlite:///{db}", env=group_env
        ) as persistence,
        ServiceProcess("loops", kafka_settings, env=group_env) as loops,
    ):
        await persistence.wait_ready()
        await loops.wait_ready()

        async def accounted() -> bool:
            return len(await _accounted(kafka_settings, db, topic)) >= len(placed)

        await wait_until(accounted, timeout=60, what="every record stored or dead-lettered")
        alive = {"persistence": persistence.poll() is None, "loops": loops.poll() is None}
        await persistence.stop()
        await loops.stop()
    seen = await _accounted(kafka_settings, db, topic)
    stored = {(p, o) for p, o, where in seen if where == "store"}
    dead = [(p, o) for p, o, where in seen if where == "dlq"]
    lost = set(placed) - stored - set(dead)
    figures.rows.append(
        Row("persistence", len(placed), stored=len(stored), lost=len(lost),
            duplicated=len(dead) - len(set(dead)) + len(stored & set(dead)),
            note=f"{len(set(dead))} dead-lettered with error headers; "
                 f"{len(valid)} valid events sent, {len(poison)} poison records")
    )  # fmt: skip
    figures.details = {"alive_at_end": alive, "valid": len(valid), "poison": len(poison)}
    figures.write()
    assert not lost
    assert all(alive.values()), alive
    assert {e.event_id for e in valid} <= {r[0] for r in sqlite_rows(db)}


async def _accounted(settings: KafkaSettings, db: Path, topic: str) -> list[tuple[int, int, str]]:
    """(partition, offset, "store"|"dlq") of each record of ``topic`` the persistence service
    stored or dead-lettered."""
    rows = sqlite_rows(db) if await asyncio.to_thread(db.exists) else []
    out = [(r[2], r[3], "store") for r in rows if r[1] == topic]
    for record in await read_all(settings, settings.routing().dlq):
        h = dict(record.headers)
        if (
            h.get("agentstream.errors.service") == b"persistence"
            and h.get("agentstream.errors.topic") == topic.encode()
        ):
            out.append(
                (int(h["agentstream.errors.partition"]), int(h["agentstream.errors.offset"]), "dlq")
            )
    return out


async def test_slow_store_pauses_fetching_and_bounds_memory(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    from support.produce import produce_events

    figures = Figures(
        "slow-store",
        "Slow store: every SQLite batch write delayed 50 ms, a backlog far above the buffer",
        "backpressure: fetching pauses at max_buffered_records, memory bounded, nothing lost",
    )
    events = make_traffic(size(25, 150)).events
    await produce_events(kafka_settings, events)
    limit = 500
    service_settings = settings_for(
        kafka_settings,
        f"sqlite:///{tmp_path / 'store.db'}",
        max_buffered_records=limit,
        batch_max_records=100,
    )
    consumer = EventConsumer(service_settings, service=SERVICE.name)
    peak_buffered = 0.0
    rss_start = rss_bytes(os.getpid()) or 0
    rss_peak = rss_start
    async with SERVICE.setup(consumer, service_settings) as store:
        slow_write = store.write_batch  # type: ignore[attr-defined]

        async def write_batch(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.05)
            return await slow_write(*args, **kwargs)

        store.write_batch = write_batch  # type: ignore[attr-defined]
        async with running_consumer(consumer):

            async def stored_all() -> bool:
                nonlocal peak_buffered, rss_peak
                buffered = consumer.registry.get_sample_value(
                    "agentstream_consumer_buffered_records", {"service": "persistence"}
                )
                peak_buffered = max(peak_buffered, buffered or 0)
                rss_peak = max(rss_peak, rss_bytes(os.getpid()) or 0)
                return await store.count() >= len(events)  # type: ignore[attr-defined,no-any-return]

            await wait_until(stored_all, timeout=90, what="every event stored")
        count = await store.count()  # type: ignore[attr-defined]
    figures.rows.append(
        Row("persistence (in-process, slowed)", len(events), stored=count, lost=len(events) - count,
            duplicated=0 if count == len(events) else None,
            note=f"peak buffered records {peak_buffered:.0f} (limit {limit}); "
                 f"RSS grew {(rss_peak - rss_start) / 2**20:.1f} MiB")
    )  # fmt: skip
    figures.details = {
        "peak_buffered": peak_buffered,
        "limit": limit,
        "rss_growth_bytes": rss_peak - rss_start,
    }
    figures.write()
    assert count == len(events)
    # pausing happens after the fetch that crossed the limit: some overshoot, never the backlog
    assert 0 < peak_buffered <= 3 * limit < len(events), "fetching should pause near the limit"
