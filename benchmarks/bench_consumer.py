"""Events/s of a wildcard no-op EventConsumer subscriber against a raw aiokafka consumer
(``getmany`` loop, no decoding) on the same topic and data. Target ratio >= 0.5.

The three consumers run in turn, ``--rounds`` times (each time a fresh consumer group reading
the whole backlog); each figure is the median of its rounds, so a noisy moment on a shared
machine moves one sample, not the ratio.

Run: ``python benchmarks/bench_consumer.py [--events N]``. Starts its own embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from _common import (
    embedded_broker,
    like_a_service_process,
    produce,
    raw_getmany_rate,
    write_results,
)

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


async def main(count: int, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"raw": [], "runtime": [], "batch": []}
    async with embedded_broker() as broker:
        settings = ServiceSettings(
            bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"bench{uuid.uuid4().hex[:6]}"
        )
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
        await produce(settings, tool_calls(count), topic=settings.routing().events)
        for _ in range(rounds):
            topics = [settings.routing().events]
            samples["raw"].append(await raw_getmany_rate(settings, topics, count))
            samples["runtime"].append(await runtime_rate(settings, count))
            samples["batch"].append(await runtime_rate(settings, count, batch=True))
    raw, runtime, batched = (statistics.median(samples[k]) for k in ("raw", "runtime", "batch"))
    return {"events": count, "rounds": rounds, "raw_events_per_s": raw,
            "runtime_events_per_s": runtime, "ratio": runtime / raw,
            "batch_events_per_s": batched, "batch_ratio": batched / raw,
            "samples": samples}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    like_a_service_process()
    result = asyncio.run(main(args.events, args.rounds))
    print(f"{'consumer (median of ' + str(args.rounds) + ' rounds)':<34}{'events/s':>12}")
    print(f"{'raw aiokafka getmany':<34}{result['raw_events_per_s']:>12,.0f}")
    print(f"{'EventConsumer, * no-op handler':<34}{result['runtime_events_per_s']:>12,.0f}")
    print(f"{'ratio (target >= 0.5)':<34}{result['ratio']:>12.2f}")
    print(f"{'EventConsumer, * batch no-op':<34}{result['batch_events_per_s']:>12,.0f}")
    print(f"{'batch ratio':<34}{result['batch_ratio']:>12.2f}")
    print(f"wrote {write_results('consumer', result)}")
