"""Loop detection: emit → alert latency at a steady rate, and events/s per service process.

Against an embedded broker this script starts and stops, with the loops service running as a
separate process (``agentstream.consumers.loops`` on the consumer runtime, default settings):

* latency, at each of ``--rates`` (events/s, default 1,000, 2,500 and 5,000), each for
  ``--seconds``, with a fresh service process and topics per load: tool-call traffic; one user
  turn in ten loops (the same call five times: a warning at the 3rd, a block and a pause
  directive at the 5th). For every alert, latency = the alert's arrival at a reader of the
  alerts topic - the moment its triggering event was handed to the producer;
* throughput: ``--backlog`` events are produced first, then a fresh service process drains them;
  events/s = backlog / (time from the service being ready to the group having committed all).

Writes ``benchmarks/results/loops.json`` (``latency_by_rate``; ``latency`` is the 5,000 events/s
load of the issue's target).

    python benchmarks/bench_loops.py [--rates 1000,2500,5000] [--seconds 8] [--backlog 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from _common import like_a_service_process, percentile, produce, write_results
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.consumers.runtime.replay import committed_offsets
from agentstream.schemas import Event, decode_record, encode_event, event_headers, record_key
from agentstream.schemas.admin import TopicSpec, ensure_topics, wait_for_broker
from agentstream.schemas.settings import KafkaSettings

TARGET_P99_MS = 100.0
PARTITIONS = 4
CALLS_PER_TURN = 5
SERVICE_OPTIONS: dict[str, Any] = json.loads(os.environ.get("BENCH_LOOPS_OPTIONS", "{}"))

WORKER = """
import asyncio, json, sys
from agentstream.consumers.loops.service import SERVICE, LoopSettings
from agentstream.consumers.runtime import EventConsumer

async def main() -> None:
    settings = LoopSettings(**json.loads(sys.argv[1]))
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings):
        await consumer.start()
        while not consumer.ready:
            await asyncio.sleep(0.01)
        restored = consumer.registry.get_sample_value("agentstream_loop_restored_records_total")
        took = consumer.registry.get_sample_value("agentstream_loop_restore_seconds_total")
        print("ready", restored, took, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await consumer.stop()

asyncio.run(main())
"""


class Worker:
    """The loops service in its own process; stopped by closing its stdin."""

    def __init__(self, settings: KafkaSettings) -> None:
        options: dict[str, Any] = {
            "bootstrap_servers": settings.bootstrap_servers,
            "topic_prefix": settings.topic_prefix,
            **SERVICE_OPTIONS,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> tuple[int, float]:
        """Wait for the service to hold its partitions; (records restored, seconds taken)."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"expected the loops worker to print 'ready', got {line!r}")
        return int(float(line[1])), float(line[2])

    def stop(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def turn_events(turn: int, looping: bool) -> list[Event]:
    """One user turn of one session: the user's message, five tool calls, the turn's end."""
    session = f"sess-{turn % 997}"
    envelope: dict[str, Any] = {
        "agent_id": f"agent-{turn % 13}",
        "user_id": "u",
        "session_id": session,
    }
    events = [Event(type="message.received", data={"content": "hello"}, **envelope)]
    for i in range(CALLS_PER_TURN):
        args = {"query": "kafka"} if looping else {"query": "kafka", "page": i}
        events.append(Event(type="tool.called", data={"name": "search", "args": args}, **envelope))
    events.append(
        Event(type="turn.ended", data={"round": 1, "stop_reason": "end_turn"}, **envelope)
    )
    return events


def traffic(count: int) -> tuple[list[Event], int]:
    """Whole turns, about ``count`` events; and how many alerts they must raise."""
    events: list[Event] = []
    turn = alerts = 0
    while len(events) < count:
        looping = turn % 10 == 0
        events.extend(turn_events(turn, looping))
        alerts += 2 if looping else 0
        turn += 1
    return events, alerts


async def committed_total(settings: KafkaSettings, group: str) -> int:
    """Offsets the group committed on the events topic (partitions named: asking for all of a
    group's partitions at once fails on the embedded broker before the first commit)."""
    tps = [TopicPartition(settings.routing().events, p) for p in range(PARTITIONS)]
    offsets = await committed_offsets(settings, group, tps)
    return sum(o or 0 for o in offsets.values())


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float
) -> bool:
    """Poll ``predicate`` until true or ``timeout`` s passed; whether it became true."""
    deadline = time.perf_counter() + timeout
    while not await predicate():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def measure_latency(settings: KafkaSettings, rate: int, seconds: float) -> dict[str, Any]:
    routing = settings.routing()
    events, expected = traffic(int(rate * seconds))
    produced_at: dict[str, float] = {}
    arrivals: dict[str, float] = {}
    reader = AIOKafkaConsumer(
        **{**settings.consumer_options(), "fetch_max_wait_ms": 5, "auto_offset_reset": "latest"}
    )
    await reader.start()
    reader.assign([TopicPartition(routing.alerts, p) for p in range(PARTITIONS)])
    await reader.seek_to_end()
    stop_reading = asyncio.Event()

    async def read() -> None:
        while not stop_reading.is_set():
            batches = await reader.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    alert = decode_record(record.value, record.headers)
                    arrivals.setdefault(alert.data["metadata"]["trigger_event_id"], now)

    producer = AIOKafkaProducer(**settings.producer_options())
    await producer.start()
    reading = asyncio.create_task(read())
    worker = Worker(settings)
    try:
        await asyncio.to_thread(worker.wait_ready)
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        started = time.perf_counter()
        futures = []
        for i in range(0, len(events), per_tick):
            due = started + (i // per_tick) * tick
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for event in events[i : i + per_tick]:
                produced_at[event.event_id] = time.perf_counter()
                futures.append(
                    await producer.send(
                        routing.topic_for(event.type),
                        encode_event(event),
                        key=record_key(event),
                        headers=event_headers(event),
                    )
                )
        sent_in = time.perf_counter() - started
        await asyncio.gather(*futures)

        async def all_arrived() -> bool:
            return len(arrivals) >= expected

        await wait_for(all_arrived, timeout=30, interval=0.05)
    finally:
        await asyncio.to_thread(worker.stop)
        stop_reading.set()
        await reading
        await reader.stop()
        await producer.stop()
    latencies = sorted((arrivals[i] - produced_at[i]) * 1000 for i in arrivals if i in produced_at)
    return {
        "events": len(events),
        "offered_rate_per_s": rate,
        "achieved_rate_per_s": round(len(events) / sent_in),
        "alerts_expected": expected,
        "alerts_received": len(arrivals),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
    }


async def measure_throughput(settings: KafkaSettings, backlog: int) -> dict[str, Any]:
    backlog_events, _ = traffic(backlog)
    backlog = len(backlog_events)
    await produce(settings, backlog_events)
    worker = Worker(settings)
    try:
        await asyncio.to_thread(worker.wait_ready)
        started = time.perf_counter()
        group = f"{settings.topic_prefix}.loops"

        async def drained() -> bool:
            return await committed_total(settings, group) >= backlog

        if not await wait_for(drained, timeout=300, interval=0.1):
            raise RuntimeError(f"the loops service did not drain {backlog} events in 300 s")
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.to_thread(worker.stop)
    # A restart: the next process rebuilds its state from the window before the commits.
    restarted = Worker(settings)
    try:
        restored, restore_s = await asyncio.to_thread(restarted.wait_ready)
    finally:
        await asyncio.to_thread(restarted.stop)
    return {
        "events": backlog,
        "seconds": round(elapsed, 3),
        "events_per_s": round(backlog / elapsed),
        "restart_restored_records": restored,
        "restart_restore_seconds": round(restore_s, 3),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    broker = EmbeddedBroker()
    broker.start()
    try:
        await broker.wait_ready()
        base = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, linger_ms=1)
        await wait_for_broker(base.admin_options())
        results: dict[str, Any] = {"latency_by_rate": []}
        for rate in sorted(int(r) for r in args.rates.split(",")):
            settings = base.model_copy(update={"topic_prefix": f"bench-loops-latency-{rate}"})
            await ensure_topics(
                settings.admin_options(), settings.routing(), TopicSpec(partitions=PARTITIONS)
            )
            measured = await measure_latency(settings, rate, args.seconds)
            print(f"  {rate} events/s: p50 {measured['p50_ms']} ms, p99 {measured['p99_ms']} ms")
            results["latency_by_rate"].append(measured)
        at_target = [m for m in results["latency_by_rate"] if m["offered_rate_per_s"] == 5_000]
        results["latency"] = (at_target or results["latency_by_rate"])[-1]
        settings = base.model_copy(update={"topic_prefix": "bench-loops-throughput"})
        await ensure_topics(
            settings.admin_options(), settings.routing(), TopicSpec(partitions=PARTITIONS)
        )
        results["throughput"] = await measure_throughput(settings, args.backlog)
        return results
    finally:
        broker.stop()


def report(results: dict[str, Any]) -> None:
    lat, tput = results["latency"], results["throughput"]
    rows = [
        (
            "offered / achieved rate",
            f"{lat['offered_rate_per_s']} / {lat['achieved_rate_per_s']} ev/s",
        ),
        ("alerts received / expected", f"{lat['alerts_received']} / {lat['alerts_expected']}"),
        ("emit → alert p50", f"{lat['p50_ms']} ms"),
        ("emit → alert p99", f"{lat['p99_ms']} ms (target ≤ {TARGET_P99_MS:.0f} ms)"),
        ("emit → alert max", f"{lat['max_ms']} ms"),
        (
            "events/s per process",
            f"{tput['events_per_s']} ({tput['events']} in {tput['seconds']} s)",
        ),
        (
            "state rebuilt at restart",
            f"{tput['restart_restored_records']} records in {tput['restart_restore_seconds']} s",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print("loops service (embedded broker, one service process)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rates", default="1000,2500,5000", help="events/s offered, one latency run each"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each latency run")
    parser.add_argument(
        "--backlog", type=int, default=100_000, help="events for the throughput run"
    )
    arguments = parser.parse_args()
    like_a_service_process()
    measured = asyncio.run(main(arguments))
    measured["target_p99_ms"] = TARGET_P99_MS
    measured["measured_at"] = datetime.now(UTC).isoformat()
    measured["cpus"] = os.cpu_count()
    report(measured)
    write_results("loops", measured)
