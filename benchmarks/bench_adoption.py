"""Cost per event of the adoption paths: a Corail bus with ``CorailForwarder`` subscribed to
``"*"``, and a Calute/Xerxes ``AuditEmitter`` with ``KafkaCollector`` as its collector.

Measured in one run, against an embedded broker this script starts and stops, next to the
frameworks' own in-process cost (no handler, a no-op ``"*"`` handler / an
``InMemoryCollector``). The frameworks are faithful minimal copies: Corail's bus and Event
from the seed document, Xerxes' event dataclass whose ``to_dict()`` is ``asdict(self)`` and
its emitter (stamp session, lock, forward); the ``InMemoryCollector`` is agentstream's, which
is Calute's (a locked list). Every shipped event is flushed and counted.
Writes ``benchmarks/results/adoption.json``.

A handler makes Corail's ``emit`` gather a task and yield to the event loop; the publisher's
sender thread can take the GIL there, so the forwarder's figures include some of the
publisher's background work and vary more than the synchronous emitter's.

    python benchmarks/bench_adoption.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import sys
import time
from dataclasses import asdict, dataclass, field
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
    write_results,
)

from agentstream.producer import InMemoryCollector, KafkaCollector, KafkaPublisher
from agentstream.producer.adapters import CorailForwarder
from agentstream.schemas.admin import TopicSpec, ensure_topics, wait_for_broker
from agentstream.schemas.settings import KafkaSettings


class CorailEventType(enum.Enum):
    TOOL_CALLED = "tool.called"


@dataclass
class XerxesSkillUsed(ForeignAuditEvent):
    event_type: str = field(default="skill_used", init=False)
    skill_name: str = ""
    version: str = ""
    outcome: str = "unknown"
    duration_ms: float = 0.0
    triggered_automatically: bool = True


class XerxesEmitter(AuditEmitterBase):
    def emit_skill_used(self, skill_name: str, duration_ms: float, agent_id: str) -> None:
        event = XerxesSkillUsed(
            skill_name=skill_name, duration_ms=duration_ms, agent_id=agent_id, outcome="success"
        )
        event.session_id = self._session_id
        with self._lock:
            self._collector.emit(event)


async def time_bus(bus: CorailBus, n: int) -> list[int]:
    clock = time.perf_counter_ns
    events = [
        CorailEvent(
            type=CorailEventType.TOOL_CALLED,
            data={"name": "search", "args": dict(TOOL_ARGS), "conversation_id": f"c{i % 100}"},
        )
        for i in range(n)
    ]
    out = []
    for event in events:
        t0 = clock()
        await bus.emit(event)
        out.append(clock() - t0)
    return out


def time_emitter(emitter: XerxesEmitter, n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for i in range(n):
        t0 = clock()
        emitter.emit_skill_used("summarise", float(i), "agent-x")
        out.append(clock() - t0)
    return out


async def bench(bootstrap: str, n: int) -> tuple[list[Row], dict[str, Any]]:
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix="bench-adopt", linger_ms=5)
    await wait_for_broker(settings.admin_options(), timeout=30)
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))

    async def noop(event: CorailEvent) -> None:
        pass

    with_noop = CorailBus()
    with_noop.subscribe("*", noop)
    rows = [
        summarise("corail bus: await emit", "no handler", await time_bus(CorailBus(), n)),
        summarise("corail bus: await emit", "no-op '*' handler", await time_bus(with_noop, n)),
        summarise(
            "xerxes emitter: emit_skill_used",
            "InMemoryCollector",
            time_emitter(XerxesEmitter(InMemoryCollector(), "s-1"), n),
        ),
    ]
    publisher = KafkaPublisher(settings, max_queue_events=4 * n)
    try:
        bus = CorailBus()
        forwarder = CorailForwarder(publisher, agent_id="pod", session_key="conversation_id")
        bus.subscribe("*", forwarder)
        rows.append(summarise("corail bus: await emit", "CorailForwarder", await time_bus(bus, n)))
        collector = KafkaCollector(publisher, agent_id="pod")
        rows.append(
            summarise(
                "xerxes emitter: emit_skill_used",
                "KafkaCollector",
                time_emitter(XerxesEmitter(collector, "s-1"), n),
            )
        )
        flushed = await asyncio.to_thread(publisher.flush, 60)
        extra = {
            "events_shipped": 2 * n,
            "flushed": flushed,
            "failures": forwarder.failures.count + collector.failures.count,
        }
    finally:
        publisher.close(10)
    return rows, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="calls per case")
    args = parser.parse_args()
    rows, extra = run_on_broker(lambda bootstrap: bench(bootstrap, args.events))
    print(f"\nadoption paths, cost per event ({args.events} calls each)")
    print_rows(rows, case="case", kind="", widths=(34, 18))
    print(
        f"\nshipped {extra['events_shipped']} events, all acknowledged: {extra['flushed']}, "
        f"adapter failures: {extra['failures']}"
    )
    path = write_results(
        "adoption",
        {
            "benchmark": "adoption",
            "python": sys.version.split()[0],
            "events_per_case": args.events,
            "rows": [asdict(r) for r in rows],
            **extra,
        },
    )
    print(f"wrote {path}")
    return 0 if extra["flushed"] and extra["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
