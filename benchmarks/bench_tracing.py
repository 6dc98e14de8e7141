"""Events/s of the tracing service in one process, in three stages:

* ``assembly``: events through :class:`TraceAssembler` alone (pairing, spans, no I/O);
* ``assembly+encode``: the same plus OTLP protobuf encoding of every finished trace;
* ``end-to-end``: events produced to an embedded broker, consumed by the service on the
  runtime (``SERVICE.setup`` + ``EventConsumer``), exported over OTLP/HTTP to a null receiver
  running in a separate process; timed from the assignment of the partitions (the group join
  is left out) until every trace is acknowledged by the receiver.

Turns are realistic Corail turns: message, two rounds, two concurrent calls of the same tool,
stop, response (12 events, 5 spans each). Writes ``benchmarks/results/tracing.json``.

    python benchmarks/bench_tracing.py [--turns 4000] [--sessions 200]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import like_a_service_process, produce, write_results

from agentstream.consumers.broker import EmbeddedBroker, free_port
from agentstream.consumers.runtime import EventConsumer
from agentstream.consumers.tracing import TraceAssembler
from agentstream.consumers.tracing.otlp import encode
from agentstream.consumers.tracing.service import SERVICE
from agentstream.consumers.tracing.settings import TracingSettings
from agentstream.schemas import Event
from agentstream.schemas.admin import TopicSpec, ensure_topics

T0 = datetime.now(UTC) - timedelta(hours=1)

NULL_RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def turn_events(turn: int, session: str) -> list[Event]:
    steps: list[tuple[str, dict[str, Any]]] = [
        ("message.received", {"content": "What is the weather in Paris and Rome?"}),
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
        ("tool.called", {"name": "weather", "args": {"city": "Paris"}}),
        ("tool.called", {"name": "weather", "args": {"city": "Rome"}}),
        ("tool.result", {"name": "weather", "output": "18 C, sunny"}),
        ("tool.result", {"name": "weather", "output": "21 C, cloudy"}),
        ("turn.started", {"round": 1}),
        ("llm.call.started", {"round": 1, "model": "claude-sonnet"}),
        ("llm.call.completed", {"round": 1, "stop_reason": "end_turn", "output_tokens": 40}),
        ("turn.ended", {"round": 1, "stop_reason": "end_turn"}),
    ]
    return [
        Event(
            type=type_,
            timestamp=T0 + timedelta(milliseconds=turn * 10 + i),
            agent_id="agent-bench",
            user_id="user-1",
            session_id=session,
            seq=i,
            source="bench",
            data=data,
        )
        for i, (type_, data) in enumerate(steps)
    ]


def workload(turns: int, sessions: int) -> list[Event]:
    names = [uuid.uuid4().hex for _ in range(sessions)]
    return [e for t in range(turns) for e in turn_events(t, names[t % sessions])]


def bench_assembly(events: list[Event], *, with_encode: bool) -> dict[str, float]:
    assembler = TraceAssembler()
    traces = 0
    start = time.perf_counter()
    for event in events:
        finished = assembler.add(event)
        if finished:
            traces += len(finished)
            if with_encode:
                encode(finished)
    elapsed = time.perf_counter() - start
    return {
        "events": len(events),
        "traces": traces,
        "seconds": elapsed,
        "events_per_s": len(events) / elapsed,
    }


async def bench_end_to_end(events: list[Event], turns: int, wait_ms: int) -> dict[str, float]:
    broker = EmbeddedBroker()
    broker.start()
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", NULL_RECEIVER, str(port)])
    try:
        await broker.wait_ready()
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        settings = TracingSettings(
            bootstrap_servers=broker.bootstrap_servers,
            topic_prefix=prefix,
            otlp_endpoint=f"http://127.0.0.1:{port}/v1/traces",
            export_batch_spans=2_000,
            export_queue_spans=200_000,
            http_port=0,
            export_wait_ms=wait_ms,
        )
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
        await produce(settings, events, topic=settings.routing().events)
        consumer = EventConsumer(settings, service=SERVICE.name)
        stop = asyncio.Event()
        async with SERVICE.setup(consumer, settings):
            task = asyncio.create_task(consumer.run(stop))
            start: float | None = None  # the group join is not part of the throughput
            done = 0.0
            while True:
                now = time.perf_counter()
                if start is None:
                    start = now if consumer.ready else None
                else:
                    done = (
                        consumer.registry.get_sample_value(
                            "agentstream_tracing_traces_exported_total", {"outcome": "complete"}
                        )
                        or 0.0
                    )
                    if done >= turns or now - start > 300:
                        break
                await asyncio.sleep(0.001)
            assert start is not None
            elapsed = time.perf_counter() - start
            stop.set()
            await task
        spans = consumer.registry.get_sample_value("agentstream_tracing_spans_exported_total")
        return {
            "events": len(events),
            "traces": done,
            "spans": spans or 0,
            "seconds": elapsed,
            "events_per_s": len(events) / elapsed,
        }
    finally:
        receiver.terminate()
        receiver.wait(10)
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=4_000)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument(
        "--export-wait-ms", type=int, default=10_000, help="the service's export_wait_ms"
    )
    args = parser.parse_args()
    like_a_service_process()
    events = workload(args.turns, args.sessions)
    results = {
        "assembly": bench_assembly(events, with_encode=False),
        "assembly+encode": bench_assembly(events, with_encode=True),
        "end-to-end": asyncio.run(bench_end_to_end(events, args.turns, args.export_wait_ms)),
    }
    print(f"tracing: {args.turns} turns, {len(events)} events, {args.sessions} sessions")
    print(f"{'stage':<18}{'events':>10}{'traces':>10}{'seconds':>10}{'events/s':>12}")
    for stage, r in results.items():
        print(
            f"{stage:<18}{r['events']:>10.0f}{r['traces']:>10.0f}{r['seconds']:>10.2f}"
            f"{r['events_per_s']:>12,.0f}"
        )
    write_results("tracing", {"turns": args.turns, "sessions": args.sessions, "stages": results})


if __name__ == "__main__":
    main()
