"""Events/s of a wildcard no-op EventConsumer subscriber against a raw aiokafka consumer
(``getmany`` loop, no decoding) on the same topic and data. Target ratio >= 0.5.

Run: ``python benchmarks/bench_consumer.py [--events N]``. Starts its own embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.consumers.runtime import EventConsumer, Record, ServiceSettings
from agentstream.schemas import Event, encode_event, event_headers, record_key
from agentstream.schemas.admin import TopicSpec, ensure_topics

RESULTS = Path(__file__).parent / "results" / "consumer.json"


async def produce(settings: ServiceSettings, count: int) -> None:
    producer = AIOKafkaProducer(**{**settings.producer_options(), "linger_ms": 20})
    await producer.start()
    try:
        topic = settings.routing().events
        futures = []
        for i in range(count):
            event = Event(
                type="tool.called",
                session_id=f"session-{i % 64}",
                seq=i,
                agent_id="bench",
                data={"name": "search", "args": {"q": "weather in paris"}},
            )
            futures.append(
                await producer.send(
                    topic, encode_event(event), key=record_key(event), headers=event_headers(event)
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_rate(settings: ServiceSettings, count: int) -> float:
    consumer = AIOKafkaConsumer(
        settings.routing().events,
        **{**settings.consumer_options(), "group_id": f"raw-{uuid.uuid4().hex[:6]}"},
    )
    await consumer.start()
    try:
        seen, started = 0, None
        while seen < count:
            batches = await consumer.getmany(timeout_ms=200, max_records=2_000)
            for records in batches.values():
                if started is None:
                    started = time.perf_counter()
                seen += len(records)
        assert started is not None
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def runtime_rate(settings: ServiceSettings, count: int, *, batch: bool = False) -> float:
    consumer = EventConsumer(settings, service=f"bench-{uuid.uuid4().hex[:6]}")
    done = asyncio.Event()
    seen = 0
    started: float | None = None

    def count_up(n: int) -> None:
        nonlocal seen, started
        if started is None:
            started = time.perf_counter()
        seen += n
        if seen >= count:
            done.set()

    if batch:

        @consumer.subscribe_batch("*", max_records=500, max_wait_ms=20)
        async def sink(records: list[Record]) -> None:
            count_up(len(records))

    else:

        @consumer.subscribe("*")
        async def noop(event: Event) -> None:
            count_up(1)

    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - (started or 0)
    stop.set()
    await task
    return count / elapsed


async def main(count: int) -> dict[str, float]:
    with EmbeddedBroker() as broker:
        await broker.wait_ready()
        settings = ServiceSettings(
            bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"bench{uuid.uuid4().hex[:6]}"
        )
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
        await produce(settings, count)
        raw = await raw_rate(settings, count)
        runtime = await runtime_rate(settings, count)
        batched = await runtime_rate(settings, count, batch=True)
    return {"events": count, "raw_events_per_s": raw, "runtime_events_per_s": runtime,
            "ratio": runtime / raw, "batch_events_per_s": batched,
            "batch_ratio": batched / raw}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    result = asyncio.run(main(parser.parse_args().events))
    print(f"{'consumer':<34}{'events/s':>12}")
    print(f"{'raw aiokafka getmany':<34}{result['raw_events_per_s']:>12,.0f}")
    print(f"{'EventConsumer, * no-op handler':<34}{result['runtime_events_per_s']:>12,.0f}")
    print(f"{'ratio (target >= 0.5)':<34}{result['ratio']:>12.2f}")
    print(f"{'EventConsumer, * batch no-op':<34}{result['batch_events_per_s']:>12,.0f}")
    print(f"{'batch ratio':<34}{result['batch_ratio']:>12.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
