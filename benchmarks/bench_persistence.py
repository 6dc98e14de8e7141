"""Stored events/s into SQLite and PostgreSQL (target >= 50,000/s each).

Measured:

* the store write path alone: ``write_batch`` of realistic events (all envelope fields, the
  payloads the seed runtimes put in ``data``, Kafka origin), 1,000 per transaction, from one
  writer and from four concurrent writers (four partitions);
* on PostgreSQL, the three ways to insert a batch idempotently: one ``INSERT ... SELECT FROM
  jsonb_array_elements(documents) JOIN unnest(arrays) ON CONFLICT DO NOTHING`` (what the
  store does), COPY into a temporary table then ``INSERT ... SELECT ... ON CONFLICT DO
  NOTHING``, and ``executemany`` of a one-row insert;
* end to end: the events produced to an embedded broker first, then the persistence service
  (in-process, the real ``EventConsumer``) from partition assignment until every event is
  stored; three runs per store, interleaved, the median reported;
* emit → stored latency at several loads (``--rates``, events/s, each for ``--seconds``):
  ``agentstream consume persistence`` as its own process on SQLite with its default batching
  (``batch_max_wait_ms`` 200), events produced at a steady rate, each stamped when handed to
  the Kafka client; latency = the row's ``ingested_at`` - the event's timestamp.

Run: ``python benchmarks/bench_persistence.py [--events N] [--postgres URL]``. Starts its own
embedded broker; PostgreSQL parts run when the server answers (default
``postgresql://postgres@127.0.0.1:5432/test``, in a schema of their own, dropped afterwards).
Writes ``benchmarks/results/persistence.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from _common import (
    ServiceProcess,
    like_a_service_process,
    percentile,
    produce,
    produce_at_rate,
    write_results,
)

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.consumers.persistence import Store, open_store
from agentstream.consumers.persistence.postgres_store import stored_id
from agentstream.consumers.persistence.rows import event_json
from agentstream.consumers.persistence.service import SERVICE, PersistenceSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event, RecordLocation
from agentstream.schemas.admin import TopicSpec, ensure_topics, wait_for_broker

BATCH = 1_000
PARTITIONS = 4

_DATA: list[tuple[str, dict[str, Any]]] = [
    ("message.received", {"content": "What is the weather in Paris tomorrow, and should I pack?"}),
    ("turn.started", {"round": 0}),
    ("llm.call.started", {"round": 0, "model": "claude-sonnet"}),
    ("llm.token", {"token": "Paris"}),
    ("llm.token", {"token": " will"}),
    ("llm.call.completed", {"round": 0, "stop_reason": "tool_use", "model": "claude-sonnet",
                            "input_tokens": 812, "output_tokens": 64}),
    ("tool.called", {"name": "weather", "args": {"city": "Paris", "units": "metric"}}),
    ("tool.result", {"name": "weather", "output": "18 °C, sunny, wind 12 km/h", "sources": None}),
    ("audit.tool_call_complete", {"severity": "info", "metadata": {}, "tool_name": "weather",
                                  "status": "success", "duration_ms": 123.5,
                                  "result_preview": "18 °C, sunny"}),
    ("turn.ended", {"round": 1, "stop_reason": "end_turn"}),
]  # fmt: skip


def make_events(count: int, *, interleave: int = len(_DATA)) -> list[Event]:
    """Turns of 10 events (``_DATA``) over 1,000 sessions. By default a session's turn comes
    as one burst, as agents emit it; ``interleave=1`` gives every event the next session
    (the worst case for the session index: each batch touches every session)."""
    return [
        Event(
            type=_DATA[i % len(_DATA)][0],
            agent_id=f"agent-{i // interleave % 10}",
            user_id=f"user-{i // interleave % 97}",
            session_id=f"{i // interleave % 1_000:032x}",
            turn_id=f"{i // 10:012x}",
            seq=i,
            source="pod-7-1234-abcdef",
            data=dict(_DATA[i % len(_DATA)][1]),
        )
        for i in range(count)
    ]


def locations(count: int) -> list[RecordLocation]:
    """Where each event came from, as the service's batches have it: each run of ``BATCH``
    events from one partition (round-robin over ``PARTITIONS``), offsets consecutive."""
    return [
        RecordLocation(
            "bench.events",
            i // BATCH % PARTITIONS,
            i // (BATCH * PARTITIONS) * BATCH + i % BATCH,
        )
        for i in range(count)
    ]


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


# --- the write path alone -------------------------------------------------------------------


async def store_rates(url: str, events: list[Event]) -> dict[str, float]:
    where = locations(len(events))
    chunks = [(events[i : i + BATCH], where[i : i + BATCH]) for i in range(0, len(events), BATCH)]
    out: dict[str, float] = {}
    async with open_store(url) as store:
        await store.migrate()

        async def one_writer() -> None:
            for batch, locs in chunks:
                await store.write_batch(batch, locs)

        out["one_writer_events_per_s"] = len(events) / await timed(one_writer)
        fresh = make_events(len(events))  # new ids: the same events again would be skipped

        async def four_writers() -> None:
            async def writer(k: int) -> None:
                for i in range(k * BATCH, len(fresh), PARTITIONS * BATCH):
                    await store.write_batch(fresh[i : i + BATCH], where[i : i + BATCH])

            await asyncio.gather(*(writer(k) for k in range(PARTITIONS)))

        out["four_writers_events_per_s"] = len(fresh) / await timed(four_writers)

        async def redelivered() -> None:
            for batch, locs in chunks:
                await store.write_batch(batch, locs)

        out["redelivered_duplicates_per_s"] = len(events) / await timed(redelivered)
        worst = make_events(len(events), interleave=1)

        async def interleaved() -> None:
            for i in range(0, len(worst), BATCH):
                await store.write_batch(worst[i : i + BATCH], where[i : i + BATCH])

        out["one_writer_1000_sessions_interleaved_events_per_s"] = len(worst) / await timed(
            interleaved
        )
        assert await store.count() == 3 * len(events)
    return out


# --- PostgreSQL insert strategies -----------------------------------------------------------

_COLUMNS = (
    "event_id, type, timestamp, agent_id, user_id, session_id, turn_id, seq, source, "
    "schema_version, event, kafka_topic, kafka_partition, kafka_offset"
)


def pg_rows(batch: list[Event], locs: list[RecordLocation]) -> list[tuple[Any, ...]]:
    return [
        (uuid.UUID(stored_id(e.event_id)), e.type, e.timestamp, e.agent_id, e.user_id,
         e.session_id, e.turn_id, e.seq, e.source, e.schema_version, event_json(e),
         loc.topic, loc.partition, loc.offset)
        for e, loc in zip(batch, locs, strict=True)
    ]  # fmt: skip


async def postgres_strategies(url: str, count: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with open_store(url) as store:
        await store.migrate()
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TEMP TABLE staging AS SELECT " + _COLUMNS + " FROM events WITH NO DATA"
            )

            async def copy() -> None:
                events = make_events(count)
                where = locations(count)
                for i in range(0, count, BATCH):
                    rows = pg_rows(events[i : i + BATCH], where[i : i + BATCH])
                    async with conn.transaction():
                        await conn.copy_records_to_table("staging", records=rows)
                        await conn.execute(
                            f"INSERT INTO events ({_COLUMNS}) SELECT * FROM staging "
                            "ON CONFLICT (event_id) DO NOTHING"
                        )
                        await conn.execute("TRUNCATE staging")

            async def executemany() -> None:
                events = make_events(count)
                where = locations(count)
                marks = ", ".join(f"${n}" for n in range(1, 15))
                sql = (
                    f"INSERT INTO events ({_COLUMNS}) VALUES ({marks}) "
                    "ON CONFLICT (event_id) DO NOTHING"
                )
                for i in range(0, count, BATCH):
                    rows = pg_rows(events[i : i + BATCH], where[i : i + BATCH])
                    await conn.executemany(sql, rows)

            async def unnest() -> None:
                events = make_events(count)
                where = locations(count)
                for i in range(0, count, BATCH):
                    await store.write_batch(events[i : i + BATCH], where[i : i + BATCH])

            for name, fn in (
                ("unnest", unnest),
                ("copy_staging", copy),
                ("executemany", executemany),
            ):
                out[f"{name}_events_per_s"] = count / await timed(fn)
        finally:
            await conn.close()
    return out


# --- end to end -----------------------------------------------------------------------------


async def poll(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.005)


async def end_to_end(bootstrap: str, url: str, events: list[Event]) -> dict[str, float]:
    settings = PersistenceSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
        store=url,
        batch_max_wait_ms=100,
        max_buffered_records=20_000,
        http_port=0,
    )
    await ensure_topics(
        settings.admin_options(), settings.routing(), TopicSpec(partitions=PARTITIONS)
    )
    await produce(settings, events)
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings) as store:
        assert isinstance(store, Store)
        await consumer.start()
        try:
            await poll(lambda: consumer.ready)
            started = time.perf_counter()
            stored = "agentstream_persistence_events_stored_total"
            await poll(lambda: (consumer.registry.get_sample_value(stored) or 0) >= len(events))
            elapsed = time.perf_counter() - started
            registry = consumer.registry
            batches = registry.get_sample_value("agentstream_persistence_batch_events_count") or 1
            written = registry.get_sample_value("agentstream_persistence_batch_events_sum") or 0
            write_s = registry.get_sample_value("agentstream_persistence_write_seconds_sum") or 0
        finally:
            await consumer.stop()
    return {
        "events_per_s": len(events) / elapsed,
        "seconds": elapsed,
        "mean_batch_events": written / batches,
        "store_busy_share": write_s / elapsed,
    }


E2E_RUNS = 3


def median_run(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The run with the median ``events_per_s``, and every run's rate (single runs of one
    process move by about 10% here)."""
    ordered = sorted(runs, key=lambda r: r["events_per_s"])
    return {**ordered[len(ordered) // 2], "events_per_s_runs": [r["events_per_s"] for r in runs]}


# --- emit -> stored latency -------------------------------------------------------------------


async def stored_latency(bootstrap: str, folder: str, rate: int, seconds: float) -> dict[str, Any]:
    settings = PersistenceSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench-lat-{rate}")
    await ensure_topics(
        settings.admin_options(), settings.routing(), TopicSpec(partitions=PARTITIONS)
    )
    db = f"{folder}/latency-{rate}.db"
    events = make_events(int(rate * seconds))
    service = ServiceProcess("persistence", settings, "--store", f"sqlite:///{db}").start()
    try:
        await service.wait_ready(60)
        achieved = await produce_at_rate(settings, events, rate)
        stored = "agentstream_persistence_events_stored_total"
        deadline = time.monotonic() + 120
        while await service.metric(stored) < len(events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every event stored within 120 s at {rate} events/s")
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(service.close)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        latencies = [
            (ingested - stamped) / 1000
            for stamped, ingested in conn.execute("SELECT timestamp_us, ingested_at_us FROM events")
        ]
    return {
        "offered_rate_per_s": rate,
        "achieved_rate_per_s": round(achieved),
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
    }


# --- main -----------------------------------------------------------------------------------


async def postgres_schema(base: str) -> tuple[str, Callable[[], Awaitable[None]]] | None:
    try:
        admin = await asyncpg.connect(base, timeout=3)
    except Exception as exc:
        print(f"PostgreSQL parts skipped: no server at {base} ({exc!r})")
        return None
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE SCHEMA {schema}")

    async def drop() -> None:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()

    sep = "&" if "?" in base else "?"
    return f"{base}{sep}search_path={schema}", drop


async def fresh_schema(
    base: str, run: Callable[[str], Awaitable[dict[str, float]]]
) -> dict[str, float] | None:
    found = await postgres_schema(base)
    if found is None:
        return None
    url, drop = found
    try:
        return await run(url)
    finally:
        await drop()


async def main(count: int, postgres: str, rates: list[int], seconds: float) -> dict[str, Any]:
    events = make_events(count)
    results: dict[str, Any] = {"events": count, "batch": BATCH, "partitions": PARTITIONS}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite_write_path"] = await store_rates(f"sqlite:///{tmp}/w.db", events)
        results["postgres_write_path"] = await fresh_schema(
            postgres, lambda url: store_rates(url, events)
        )
        results["postgres_insert_strategies"] = await fresh_schema(
            postgres, lambda url: postgres_strategies(url, min(count, 50_000))
        )
        broker = EmbeddedBroker()
        broker.start()
        try:
            await wait_for_broker({"bootstrap_servers": broker.bootstrap_servers})
            runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgres": []}
            for run in range(E2E_RUNS):  # interleaved: a busy moment weighs on both stores
                runs["sqlite"].append(
                    await end_to_end(
                        broker.bootstrap_servers, f"sqlite:///{tmp}/e2e{run}.db", make_events(count)
                    )
                )
                on_postgres = await fresh_schema(
                    postgres,
                    lambda url: end_to_end(broker.bootstrap_servers, url, make_events(count)),
                )
                if on_postgres is not None:
                    runs["postgres"].append(on_postgres)
            for store, measured_runs in runs.items():
                if measured_runs:
                    results[f"{store}_end_to_end"] = median_run(measured_runs)
            results["stored_latency"] = []
            for rate in rates:
                measured = await stored_latency(broker.bootstrap_servers, tmp, rate, seconds)
                results["stored_latency"].append(measured)
                print(f"emit → stored at {rate} events/s: p50 {measured['p50_ms']} ms, "
                      f"p99 {measured['p99_ms']} ms")  # fmt: skip
        finally:
            broker.stop()
    return results


def report(results: dict[str, Any]) -> None:
    print(f"{results['events']:,} events, {results['batch']:,} per transaction")
    print(f"{'measure':<52} {'events/s':>12}")
    for section, values in results.items():
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            if name.endswith("per_s"):
                print(f"{section + ' / ' + name.removesuffix('_events_per_s'):<52} {value:>12,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rates", default="1000,2500,5000,10000", help="latency loads, events/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each latency run")
    options = parser.parse_args()
    rates = sorted(int(r) for r in options.rates.split(","))
    like_a_service_process()
    outcome = asyncio.run(main(options.events, options.postgres, rates, options.seconds))
    report(outcome)
    print(f"wrote {write_results('persistence', outcome)}")
