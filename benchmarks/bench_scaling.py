"""Scaling of one service: throughput against partitions (one instance) and against instances
(six partitions). The subject is the metrics service (``agentstream consume metrics``).

For each configuration: fresh topics with P partitions; N service processes start and the run
waits until every instance holds partitions and the assignment has settled; then a backlog is
produced as fast as librdkafka (confluent-kafka, when installed; aiokafka otherwise) can, and
the clock runs from the first record produced to the group having committed the last one.
Producing takes a fraction of that time (recorded as ``produce_seconds``).

On this 2-core machine the instances compete for the same two CPUs (and with the producer and
the broker), so more instances cannot add much: the figures show the partitioning works and
costs little, not how a fleet of machines scales.

    python benchmarks/bench_scaling.py [--events 100000]

Writes ``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from _common import ServiceProcess, agent_turns, committed_total, embedded_broker, produce

from agentstream.schemas import Event, encode_event, event_headers, record_key
from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.settings import KafkaSettings

SUBJECT = "metrics"
RUNS = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 6), (3, 6), (1, 6)]  # (instances, partitions)
SERVICE_ENV = {"AGENTSTREAM_COMMIT_INTERVAL_MS": "200"}


def produce_librdkafka(settings: KafkaSettings, events: list[Event]) -> bool:
    """Send with confluent-kafka (False when it is not installed)."""
    try:
        from confluent_kafka import Producer
    except ImportError:
        return False
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5, "acks": "all",
         "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000}
    )  # fmt: skip
    routing = settings.routing()
    for event in events:
        producer.produce(
            routing.topic_for(event.type),
            encode_event(event),
            key=record_key(event),
            headers=list[tuple[str, str | bytes | None]](event_headers(event)),
        )
        producer.poll(0)
    producer.flush(120)
    return True


async def settled(instances: list[ServiceProcess]) -> None:
    """Every instance holds partitions and the total held stays the same for a second."""
    last, since = -1.0, time.monotonic()
    while True:
        held = [await p.metric("agentstream_consumer_assigned_partitions") for p in instances]
        total = sum(held)
        if total != last or min(held) == 0:
            last, since = total, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return
        await asyncio.sleep(0.1)


async def one_run(bootstrap: str, instances: int, partitions: int, count: int) -> dict[str, Any]:
    settings = KafkaSettings(
        bootstrap_servers=bootstrap, topic_prefix=f"bench-scale-{instances}x{partitions}"
    )
    await ensure_topics(
        settings.admin_options(), settings.routing(), TopicSpec(partitions=partitions)
    )
    events = agent_turns(count)
    processes = [
        ServiceProcess(SUBJECT, settings, env=SERVICE_ENV).start() for _ in range(instances)
    ]
    try:
        for process in processes:
            await process.wait_ready(60)
        await settled(processes)
        started = time.perf_counter()
        if not await asyncio.to_thread(produce_librdkafka, settings, events):
            await produce(settings, events)
        produced = time.perf_counter() - started
        group, topic = f"{settings.topic_prefix}.{SUBJECT}", settings.routing().events
        while await committed_total(settings, group, topic, partitions) < len(events):
            if time.perf_counter() - started > 600:
                raise TimeoutError("the run did not drain within 600 s")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            await asyncio.to_thread(process.close)
    return {
        "instances": instances,
        "partitions": partitions,
        "vary": "partitions" if instances == 1 and partitions != 6 else "instances",
        "events": len(events),
        "seconds": elapsed,
        "produce_seconds": produced,
        "events_per_s": len(events) / elapsed,
    }


async def main(count: int) -> dict[str, Any]:
    runs = []
    async with embedded_broker() as broker:
        for instances, partitions in RUNS:
            run = await one_run(broker.bootstrap_servers, instances, partitions, count)
            runs.append(run)
            print(
                f"{instances} instance(s), {partitions} partitions: "
                f"{run['events_per_s']:,.0f} events/s (produced in {run['produce_seconds']:.2f} s)",
                flush=True,
            )
    # the one-instance, six-partition run is the first point of the instances series
    for run in runs:
        if (run["instances"], run["partitions"]) == (1, 6):
            run["vary"] = "instances"
    return {
        "subject": SUBJECT,
        "events": count,
        "runs": sorted(runs, key=lambda r: (r["vary"], r["instances"], r["partitions"])),
        "note": "Two cores: the instances, the producer and the broker share them, so added "
        "instances compete for CPU instead of adding capacity.",
    }


if __name__ == "__main__":
    from _common import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    options = parser.parse_args()
    outcome = asyncio.run(main(options.events))
    print(f"wrote {write_results('scaling', outcome)}")
