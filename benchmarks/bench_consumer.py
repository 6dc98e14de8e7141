"""Events/s of a wildcard no-op EventConsumer subscriber against a raw aiokafka consumer
(``getmany`` loop, no decoding) on the same topic and data. Target ratio >= 0.5.

Run: ``python benchmarks/bench_consumer.py [--events N]``. Starts its own embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from _common import embedded_broker, produce, raw_getmany_rate, write_results

from agentstream.consumers.runtime import EventConsumer, Record, ServiceSettings
from agentstream.schemas import Event
from agentstream.schemas.admin import TopicSpec, ensure_topics


def tool_calls(count: int) -> list[Event]:
    return [
        Event(
            type="tool.called",
            session_id=f"session-{i % 64}",
            seq=i,
            agent_id="bench",
            data={"name": "search", "args": {"q": "weather in paris"}},
        )
        for i in range(count)
    ]


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
    async with embedded_broker() as broker:
        settings = ServiceSettings(
            bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"bench{uuid.uuid4().hex[:6]}"
        )
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
        await produce(settings, tool_calls(count), topic=settings.routing().events)
        raw = await raw_getmany_rate(settings, [settings.routing().events], count)
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
    print(f"wrote {write_results('consumer', result)}")
