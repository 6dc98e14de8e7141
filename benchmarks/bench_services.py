"""Each service as its own process against a raw aiokafka consumer: drain throughput of the same
backlog, measured in one run, and the resident memory (RSS) of each process under that load.

A backlog of realistic agent turns is produced once to the events topic of an embedded broker.
Then, one at a time, each consumer drains it from the beginning in a group of its own:

* raw: an ``AIOKafkaConsumer`` in a subprocess (``getmany``, no decoding, one commit at the
  end), timed from its partition assignment to its last record;
* ``agentstream consume <service>`` for persistence (SQLite in a temporary folder), loops,
  budget, metrics and tracing (exporting to a local OTLP endpoint answering 200), timed from
  ``/readyz`` answering to the group having committed the whole backlog (commit interval
  200 ms).

RSS is read from ``/proc/<pid>/status`` every 100 ms: at ready, and the peak while draining.

    python benchmarks/bench_services.py [--events 50000] [--partitions 4]

Writes ``benchmarks/results/services.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import (
    OtlpSink,
    RssSampler,
    ServiceProcess,
    agent_turns,
    committed_total,
    embedded_broker,
    produce,
    rss_bytes,
    write_results,
)

from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.settings import KafkaSettings

SERVICES = ("persistence", "loops", "budget", "metrics", "tracing")
# Commits every 200 ms: the drain ends when the last commit lands, and a long
# interval would add up to that much to every figure.
SERVICE_ENV = {"AGENTSTREAM_COMMIT_INTERVAL_MS": "200"}

RAW = """
import asyncio, json, os, sys, time
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

async def main(servers, topic, partitions, count):
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=topic + ".raw",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=int(os.environ["AGENTSTREAM_FETCH_MAX_WAIT_MS"]))
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        started = time.perf_counter()
        seen = 0
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=100, max_records=10_000)).values():
                seen += len(records)
        await consumer.commit()
        print(json.dumps({"events": seen, "seconds": time.perf_counter() - started}))
    finally:
        await consumer.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def raw_drain(settings: KafkaSettings, partitions: int, count: int) -> dict[str, Any]:
    command = [sys.executable, "-c", RAW, settings.bootstrap_servers, settings.routing().events,
               str(partitions), str(count)]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
    sampler = RssSampler({"raw": process.pid}).start()
    out, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    await sampler.stop()
    figures = json.loads(out)
    return {
        "events_per_s": figures["events"] / figures["seconds"],
        "seconds": figures["seconds"],
        "rss_peak_bytes": sampler.peak.get("raw"),
    }


async def service_drain(
    settings: KafkaSettings, service: str, partitions: int, count: int, options: list[str]
) -> dict[str, Any]:
    process = ServiceProcess(service, settings, *options, env=SERVICE_ENV).start()
    try:
        await process.wait_ready(60)
        started = time.perf_counter()
        ready_rss = rss_bytes(process.pid)
        sampler = RssSampler({service: process.pid}).start()
        group = f"{settings.topic_prefix}.{service}"
        topic = settings.routing().events
        while await committed_total(settings, group, topic, partitions) < count:
            if (code := process.poll()) is not None:
                raise RuntimeError(f"{service} exited with {code}:\n{process.log()}")
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"{service} did not drain {count} events in 600 s")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        await sampler.stop()
        return {
            "events_per_s": count / elapsed,
            "seconds": elapsed,
            "rss_idle_bytes": ready_rss,
            "rss_peak_bytes": sampler.peak.get(service),
        }
    finally:
        await asyncio.to_thread(process.close)


async def main(count: int, partitions: int) -> dict[str, Any]:
    events = agent_turns(count)
    results: dict[str, Any] = {"events": len(events), "partitions": partitions, "services": {}}
    sink = OtlpSink()
    try:
        async with embedded_broker() as broker:
            settings = KafkaSettings(
                bootstrap_servers=broker.bootstrap_servers, topic_prefix="bench-services"
            )
            await ensure_topics(
                settings.admin_options(), settings.routing(), TopicSpec(partitions=partitions)
            )
            await produce(settings, events)
            results["raw"] = await raw_drain(settings, partitions, len(events))
            print(f"raw aiokafka: {results['raw']['events_per_s']:,.0f} events/s", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                for service in SERVICES:
                    options = {
                        "persistence": ["--store", f"sqlite:///{tmp}/bench.db"],
                        "tracing": ["--otlp-endpoint", sink.url],
                    }.get(service, [])
                    figures = await service_drain(
                        settings, service, partitions, len(events), options
                    )
                    results["services"][service] = figures
                    print(f"{service}: {figures['events_per_s']:,.0f} events/s", flush=True)
    finally:
        sink.close()
    return results


def report(results: dict[str, Any]) -> None:
    raw = results["raw"]["events_per_s"]
    print(f"\n{results['events']:,} events, {results['partitions']} partitions, one process each")
    print(f"{'consumer':<28} {'events/s':>10} {'vs raw':>7} {'RSS ready':>10} {'RSS peak':>9}")
    print(f"{'raw aiokafka':<28} {raw:>10,.0f} {'1.00':>7}")
    for name, f in results["services"].items():
        idle, peak = (f.get(k) or 0 for k in ("rss_idle_bytes", "rss_peak_bytes"))
        print(
            f"{'agentstream consume ' + name:<28} {f['events_per_s']:>10,.0f} "
            f"{f['events_per_s'] / raw:>7.2f} {idle / 2**20:>8.1f} M {peak / 2**20:>7.1f} M"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=4)
    options = parser.parse_args()
    outcome = asyncio.run(main(options.events, options.partitions))
    report(outcome)
    print(f"wrote {write_results('services', outcome)}")
