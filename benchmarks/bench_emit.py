"""Emit cost per event on the agent's hot path, next to the seeds' own in-process cost.

Measured in one run, against an embedded broker this script starts and stops:

* baseline (seed): a minimal, faithful re-implementation of Corail's ``EventBus.emit`` (history
  list trimmed to 1000, exact + wildcard handler lists, gather) and of Calute's
  ``AuditEmitter.emit_tool_call_attempt`` with agentstream's ``InMemoryCollector`` (Calute's
  locked list; dataclass event, ISO
  timestamp, 200-character preview, one lock, list append) -- in-process only, nothing shipped;
* agentstream: ``await bus.emit`` and ``bus.emit_sync`` with a ``KafkaPublisher`` attached (stamp,
  redact, encode, enqueue), ``AuditEmitter.emit_tool_call_attempt`` with a ``KafkaCollector``;
* the redaction step alone on the same payload, and the control-channel latency (directive
  produced -> handler running in the pod's bus).

Each call is timed on its own (``perf_counter_ns``), so p99 includes GC pauses and lock waits.
The cases run in three rounds, one after another, and each case's samples are pooled: a slow
moment of a shared machine weighs on the baselines and on agentstream alike.
Every shipped event is then flushed and counted as delivered. Writes
``benchmarks/results/emit.json``.

    python benchmarks/bench_emit.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from _common import (
    TOOL_ARGS,
    AuditEmitterBase,
    CorailBus,
    CorailEvent,
    ForeignAuditEvent,
    Row,
    print_rows,
    run_on_broker,
    summarise,
    time_sync,
    write_results,
)
from aiokafka import AIOKafkaProducer

from agentstream.producer import (
    AuditEmitter,
    ControlListener,
    Event,
    EventBus,
    EventType,
    InMemoryCollector,
    KafkaCollector,
    KafkaPublisher,
)
from agentstream.producer.redact import DEFAULT_REDACTOR
from agentstream.schemas import encode_event, event_headers, record_key
from agentstream.schemas.admin import TopicSpec, ensure_topics, wait_for_broker
from agentstream.schemas.settings import KafkaSettings

TARGET_MEDIAN_US = 5.0
ARGS_TEXT = json.dumps(TOOL_ARGS)


# --- baseline: the seeds' in-process cost (Corail's bus and the collector: ``_common``) -----


@dataclass
class CaluteToolCallAttempt(ForeignAuditEvent):
    event_type: str = "tool_call_attempt"
    tool_name: str = ""
    arguments_preview: str = ""


class CaluteEmitter(AuditEmitterBase):
    def emit_tool_call_attempt(
        self,
        tool_name: str,
        args: str = "",
        agent_id: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        event = CaluteToolCallAttempt(
            agent_id=agent_id,
            turn_id=turn_id,
            tool_name=tool_name,
            arguments_preview=args[:200] if args else "",
        )
        event.session_id = self._session_id
        with self._lock:
            self._collector.emit(event)


# --- measurement ----------------------------------------------------------------------------


def sessions(n: int) -> list[str]:
    return [f"session-{i % 100:03d}" for i in range(n)]


ROUNDS = 3  # see the module docstring

CASES = (
    ("bus: await emit (no handlers)", "baseline"),
    ("emitter: emit_tool_call_attempt", "baseline"),
    ("redaction of the payload (inside publish)", "agentstream"),
    ("bus: await emit (no handlers)", "agentstream"),
    ("bus: emit_sync (no handlers)", "agentstream"),
    ("emitter: emit_tool_call_attempt", "agentstream"),
)


async def bench(bootstrap: str, n: int) -> tuple[list[Row], dict[str, Any]]:
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix="bench-emit", linger_ms=5)
    await wait_for_broker(settings.admin_options(), timeout=30)
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
    sids = sessions(n)
    samples: dict[tuple[str, str], list[int]] = {case: [] for case in CASES}
    publisher = KafkaPublisher(settings, max_queue_events=4 * n)  # a round's events: never full
    try:
        flushed, flush_s = True, 0.0
        for _ in range(ROUNDS):
            await one_round(publisher, sids, n, samples)
            flush_start = time.perf_counter()  # each round starts with nothing in flight
            flushed = await asyncio.to_thread(publisher.flush, 60) and flushed
            flush_s += time.perf_counter() - flush_start
        stats = publisher.stats()
        control = [await control_latency(settings, wait) for wait in (100, 10)]
    finally:
        publisher.close(10)
    extra = {
        "rounds": ROUNDS,
        "events_shipped": 3 * n * ROUNDS,
        "flushed": flushed,
        "flush_seconds": round(flush_s, 3),
        "publisher_stats": _jsonable(stats),
        "control_latency_ms": control,
    }
    return [summarise(case, kind, samples[case, kind]) for case, kind in CASES], extra


async def one_round(
    publisher: KafkaPublisher,
    sids: list[str],
    n: int,
    samples: dict[tuple[str, str], list[int]],
) -> None:
    """Each case of :data:`CASES` once, ``n`` calls, its samples added to ``samples``."""
    clock = time.perf_counter_ns

    # baseline: Corail bus
    corail = CorailBus()
    events_c = [
        CorailEvent(type="tool.called", data={"name": "search", "args": TOOL_ARGS})
        for _ in range(n)
    ]
    out = samples["bus: await emit (no handlers)", "baseline"]
    for event in events_c:
        t0 = clock()
        await corail.emit(event)
        out.append(clock() - t0)

    # baseline: Calute emitter + InMemoryCollector
    calute = CaluteEmitter(InMemoryCollector(), session_id="s")
    samples["emitter: emit_tool_call_attempt", "baseline"] += time_sync(
        lambda i: calute.emit_tool_call_attempt("search", ARGS_TEXT, "a1"), n
    )

    # redaction alone, on the bus payload
    payload = {"name": "search", "args": TOOL_ARGS}
    samples["redaction of the payload (inside publish)", "agentstream"] += time_sync(
        lambda i: DEFAULT_REDACTOR(payload), n
    )

    bus = EventBus(publisher, agent_id="bench-agent")
    events = [
        Event(type=EventType.TOOL_CALLED, session_id=sids[i], data=dict(payload)) for i in range(n)
    ]
    out = samples["bus: await emit (no handlers)", "agentstream"]
    for ev in events:
        t0 = clock()
        await bus.emit(ev)
        out.append(clock() - t0)

    events = [
        Event(type=EventType.TOOL_CALLED, session_id=sids[i], data=dict(payload)) for i in range(n)
    ]
    samples["bus: emit_sync (no handlers)", "agentstream"] += time_sync(
        lambda i: bus.emit_sync(events[i]), n
    )

    emitters = {
        sid: AuditEmitter(KafkaCollector(publisher, agent_id="bench-agent"), session_id=sid)
        for sid in set(sids)
    }
    samples["emitter: emit_tool_call_attempt", "agentstream"] += time_sync(
        lambda i: emitters[sids[i]].emit_tool_call_attempt("search", ARGS_TEXT, "a1"), n
    )


def _jsonable(value: Any) -> Any:
    try:
        return asdict(value)
    except TypeError:
        return repr(value)


async def control_latency(
    settings: KafkaSettings, fetch_max_wait_ms: int, n: int = 50
) -> dict[str, float | int]:
    """Directive produced (send start) -> the pod bus's handler runs, ``n`` times."""
    listener = ControlListener(settings, fetch_max_wait_ms=fetch_max_wait_ms)
    bus = EventBus(agent_id="bench-agent", control=listener)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    bus.subscribe(EventType.CONTROL_AGENT_PAUSED, lambda e: arrived.put_nowait(time.perf_counter()))
    producer = AIOKafkaProducer(**settings.producer_options())
    await producer.start()
    latencies = []
    try:
        async with bus:
            for i in range(n):
                event = Event(
                    type=EventType.CONTROL_AGENT_PAUSED,
                    agent_id="bench-agent",
                    session_id=f"s{i}",
                    data={"reason": "bench", "service": "loops"},
                )
                t0 = time.perf_counter()
                await producer.send(
                    settings.routing().control,
                    encode_event(event, settings.encoding),
                    key=record_key(event),
                    headers=event_headers(event, settings.encoding),
                )
                latencies.append((await asyncio.wait_for(arrived.get(), 10) - t0) * 1000)
    finally:
        await producer.stop()
    latencies.sort()
    return {
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "n": n,
        "median": round(statistics.median(latencies), 2),
        "p99": round(latencies[min(n - 1, int(n * 0.99))], 2),
        "max": round(latencies[-1], 2),
    }


def print_table(rows: list[Row], extra: dict[str, Any]) -> None:
    print(
        f"\nemit cost per event ({rows[0].n} calls each, {extra['rounds']} rounds; "
        "target: agentstream median <= 5 us)"
    )
    print_rows(rows, case="case", kind="implementation", widths=(44, 14))
    print(
        f"\nshipped {extra['events_shipped']} events, all acknowledged: {extra['flushed']} "
        f"(flush took {extra['flush_seconds']} s)"
    )
    for c in extra["control_latency_ms"]:
        print(
            f"control directive -> pod handler (fetch_max_wait_ms={c['fetch_max_wait_ms']}): "
            f"median {c['median']} ms, p99 {c['p99']} ms, max {c['max']} ms (n={c['n']})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="calls per case and round")
    args = parser.parse_args()
    rows, extra = run_on_broker(lambda bootstrap: bench(bootstrap, args.events))
    print_table(rows, extra)
    ours = [r for r in rows if r.kind == "agentstream" and not r.case.startswith("redaction")]
    met = all(r.median_us <= TARGET_MEDIAN_US for r in ours)
    print(f"target median <= {TARGET_MEDIAN_US} us: {'met' if met else 'NOT met'}")
    path = write_results(
        "emit",
        {
            "benchmark": "emit",
            "python": sys.version.split()[0],
            "events_per_case": args.events,
            "target_median_us": TARGET_MEDIAN_US,
            "target_met": met,
            "rows": [asdict(r) for r in rows],
            **extra,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
