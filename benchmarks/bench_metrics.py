"""Events/s of the metrics service in one process (target >= 150,000/s).

Three figures on the same realistic mix of events (Corail turns with LLM and tool calls,
guards, Calute audit events, loop and budget signals, tokens):

* ``fleet metrics only``: :meth:`FleetMetrics.observe_batch` on decoded records, the work
  the service adds per event (batches of 250, the default ``batch_max_records``);
* ``decode + fleet metrics``: the same plus decoding each record value (with payload
  validation, as the runtime does today, and without);
* ``service end to end``: ``agentstream consume metrics``' setup on an :class:`EventConsumer`
  reading the records from the embedded broker (first record handled to last), next to a raw
  aiokafka ``getmany`` loop on the same topics (no decoding) as the ceiling of the client;
  three interleaved rounds of each, medians reported.

Run: ``python benchmarks/bench_metrics.py [--events N]``. Starts its own embedded broker.
Writes ``benchmarks/results/metrics.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import (
    embedded_broker,
    like_a_service_process,
    produce,
    raw_getmany_rate,
    write_results,
)
from prometheus_client import CollectorRegistry

from agentstream.consumers.metrics import FleetMetrics
from agentstream.consumers.metrics.service import SERVICE
from agentstream.consumers.metrics.settings import MetricsSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event, decode_record, encode_event, event_headers
from agentstream.schemas.admin import TopicSpec, ensure_topics

BATCH = 250
E2E_ROUNDS = 3
"""End-to-end rounds (raw aiokafka, then the service, each from the first record); medians."""

TURN: list[tuple[str, dict[str, Any]]] = [
    ("message.received", {"content": "What is the weather in Paris?"}),
    ("guard.input.checked", {"guard": "pii", "direction": "input", "allowed": True}),
    ("turn.started", {"round": 0}),
    ("llm.call.started", {"round": 0, "model": "claude-sonnet"}),
    (
        "llm.call.completed",
        {
            "round": 0,
            "stop_reason": "tool_use",
            "model": "claude-sonnet",
            "input_tokens": 812,
            "output_tokens": 64,
        },
    ),
    ("tool.called", {"name": "weather", "args": {"city": "Paris"}, "call_id": "c1"}),
    ("tool.result", {"name": "weather", "output": "18 C, sunny", "call_id": "c1"}),
    ("llm.token", {"token": "It"}),
    ("llm.token", {"token": " is"}),
    ("guard.output.checked", {"guard": "tox", "direction": "output", "allowed": True}),
    ("turn.ended", {"round": 0, "stop_reason": "end_turn"}),
    ("message.response", {"content": "It is 18 C and sunny in Paris."}),
    ("audit.turn_start", {"prompt_preview": "Hello"}),
    ("audit.tool_call_attempt", {"tool_name": "web_search", "arguments_preview": "{}"}),
    ("audit.tool_call_complete", {"tool_name": "web_search", "duration_ms": 123.5}),
    (
        "audit.tool_loop_warning",
        {"tool_name": "web_search", "pattern": "same_call", "severity_level": "warning"},
    ),
    ("budget.warning", {"scope": "session", "dimension": "tokens", "used": 8, "limit": 10}),
    ("audit.turn_end", {"function_calls_count": 1}),
]


def fleet_events(count: int) -> list[Event]:
    """``count`` events: turns of many sessions, agents and tools, stamped about now."""
    events: list[Event] = []
    now = datetime.now(UTC)
    session = 0
    while len(events) < count:
        for i, (event_type, data) in enumerate(TURN):
            events.append(
                Event(
                    type=event_type,
                    timestamp=now + timedelta(milliseconds=i),
                    agent_id=f"agent-{session % 40}",
                    user_id=f"user-{session % 500}",
                    session_id=f"session-{session}",
                    seq=i,
                    source="bench",
                    data=data,
                )
            )
        session += 1
    return events[:count]


@dataclass(frozen=True)
class _Rec:
    event: Event
    topic: str
    partition: int


def _rate(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def in_memory(events: Sequence[Event]) -> dict[str, float]:
    values = [(encode_event(e), event_headers(e)) for e in events]
    records = [_Rec(e, "bench.events", 0) for e in events]

    def fleet() -> FleetMetrics:
        return FleetMetrics(CollectorRegistry(), events_topic="bench.events", alerts_topic="x")

    def observe(metrics: FleetMetrics, batch: Sequence[_Rec]) -> None:
        metrics.observe_batch(batch)

    def only() -> None:
        metrics = fleet()
        for start in range(0, len(records), BATCH):
            observe(metrics, records[start : start + BATCH])

    def with_decode(validate: bool) -> Callable[[], None]:
        def run() -> None:
            metrics = fleet()
            for start in range(0, len(values), BATCH):
                batch = [
                    _Rec(decode_record(v, h, validate=validate), "bench.events", 0)
                    for v, h in values[start : start + BATCH]
                ]
                observe(metrics, batch)

        return run

    return {
        "fleet_metrics_only": _rate(len(records), only),
        "decode_validated_and_fleet_metrics": _rate(len(values), with_decode(True)),
        "decode_unvalidated_and_fleet_metrics": _rate(len(values), with_decode(False)),
    }


def _counted(fleet: FleetMetrics) -> float:
    """Events the fleet metrics have seen (the pipeline delay histogram counts each once)."""
    for family in fleet.pipeline_delay.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


async def service_rate(settings: MetricsSettings, count: int) -> float:
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings) as fleet:
        assert isinstance(fleet, FleetMetrics)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        started: float | None = None
        deadline = time.monotonic() + 600
        while (seen := _counted(fleet)) < count:  # polled: no extra handler on the records
            if started is None and seen:
                started = time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service counted {seen} of {count} events")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - (started or 0)
        stop.set()
        await task
    return count / elapsed


async def main(count: int) -> dict[str, Any]:
    events = fleet_events(count)
    result: dict[str, Any] = {"events": count, "batch_records": BATCH, **in_memory(events)}
    async with embedded_broker() as broker:
        settings = MetricsSettings(
            bootstrap_servers=broker.bootstrap_servers,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
        )
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
        await produce(settings, events)
        routing = settings.routing()
        topics = [routing.events, routing.tokens]
        raw, service = [], []
        for run in range(E2E_ROUNDS):  # interleaved: a slow moment of the machine hits both
            raw.append(await raw_getmany_rate(settings, topics, count))
            fresh = settings.model_copy(update={"group_id": f"{settings.topic_prefix}.m{run}"})
            service.append(await service_rate(fresh, count))
        result["raw_aiokafka_getmany"] = statistics.median(raw)
        result["service_end_to_end"] = statistics.median(service)
        result["rounds"] = {"raw_aiokafka_getmany": raw, "service_end_to_end": service}
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    like_a_service_process()
    result = asyncio.run(main(parser.parse_args().events))
    rows = [
        ("fleet metrics only", "fleet_metrics_only"),
        ("decode (validated) + fleet metrics", "decode_validated_and_fleet_metrics"),
        ("decode (no validation) + metrics", "decode_unvalidated_and_fleet_metrics"),
        ("raw aiokafka getmany (ceiling)", "raw_aiokafka_getmany"),
        ("service end to end (runtime)", "service_end_to_end"),
    ]
    print(f"{'metrics service, ' + format(result['events'], ',') + ' events':<38}{'events/s':>12}")
    for title, key in rows:
        print(f"{title:<38}{result[key]:>12,.0f}")
    rounds = result["rounds"]
    for title, key in (
        ("service rounds", "service_end_to_end"),
        ("raw rounds", "raw_aiokafka_getmany"),
    ):
        print(f"{title:<38}{', '.join(f'{r:,.0f}' for r in rounds[key]):>12}")
    print("target: >= 150,000 events/s per process")
    print(f"wrote {write_results('metrics', result)}")
