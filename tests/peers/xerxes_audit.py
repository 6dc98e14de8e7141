"""Drive the REAL Xerxes audit module with agentstream's KafkaCollector (run with the Xerxes
peer venv's python; agentstream comes from PYTHONPATH).

    python xerxes_audit.py --bootstrap HOST:PORT --topic-prefix P --calls calls.json \
        --session S --runtime-session R --loop-session L

1. ``xerxes.audit.AuditEmitter(collector=CompositeCollector([memory, kafka]), session_id=S)``
   replays the calls in ``calls.json`` (``[[method, kwargs], ...]``: ``emit_*`` methods of
   Xerxes' emitter), then hands the collector one event with metadata JSON cannot carry.
2. Xerxes' runtime wiring: ``RuntimeFeaturesState(RuntimeFeaturesConfig(audit_collector=...))``
   and its ``FunctionExecutor`` run four tool calls (a success, a skill tool, a hand-off to
   another agent, an I/O failure) inside ``agentstream.producer.event_scope(session_id=R)``:
   the runtime's emitter has no session id, the scope provides it.
3. The same wiring, in session L, runs one search five times in a row: a stuck agent.

Prints one JSON line per event Xerxes emitted (``{"part": 1|2|3, "event": to_dict()}``, as the
``InMemoryCollector`` next to the ``KafkaCollector`` saw it), then
``{"failures": n, "acknowledged": bool}``; exits 0 when every event was acknowledged by the
broker and the collector recorded no failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from xerxes.audit import (
    AuditCollector,
    AuditEmitter,
    CompositeCollector,
    InMemoryCollector,
    SkillFeedbackEvent,
)
from xerxes.executors import AgentOrchestrator, FunctionExecutor
from xerxes.runtime.features import RuntimeFeaturesConfig, RuntimeFeaturesState
from xerxes.types import Agent, RequestFunctionCall, Result

from agentstream.producer import KafkaCollector, event_scope
from agentstream.schemas.settings import KafkaSettings


def web_search(query: str) -> str:
    return f"3 results for {query}"


def skill_view(name: str) -> dict[str, str]:
    return {"skill_name": name}


def read_file(path: str) -> str:
    raise OSError(f"cannot read {path}")


REVIEWER = Agent(id="reviewer", name="reviewer", model="none", instructions="review")


def hand_over() -> Result:
    return Result(value="over to the reviewer", agent=REVIEWER)


def emit_calls(collector: KafkaCollector, memory: InMemoryCollector, args: Any) -> None:
    with open(args.calls, encoding="utf-8") as f:
        calls: list[tuple[str, dict[str, Any]]] = json.load(f)
    emitter = AuditEmitter(
        collector=CompositeCollector([memory, collector]), session_id=args.session
    )
    for method, kwargs in calls:
        getattr(emitter, method)(**kwargs)
    odd = SkillFeedbackEvent(
        agent_id="agent-x",
        turn_id="0123456789ab",
        skill_name="summarise",
        rating="negative",
        metadata={
            "path": PurePosixPath("/skills/summarise"),
            "tags": ("a", "b"),
            "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        },
    )
    emitter._emit(odd)  # the emitter's own path (session stamp, lock) for a hand-built event
    emitter.flush()


def run_runtime(
    collector: KafkaCollector,
    memory: InMemoryCollector,
    session: str,
    calls: list[RequestFunctionCall],
) -> None:
    """Xerxes' runtime wiring: ``audit_collector=`` in its config, its executor running
    ``calls`` for one agent inside ``event_scope(session_id=session)``."""
    state = RuntimeFeaturesState(
        config=RuntimeFeaturesConfig(
            enabled=True,
            audit_collector=CompositeCollector([memory, collector]),
            discover_conventional_extensions=False,
        )
    )
    agent = Agent(
        id="planner",
        name="planner",
        model="none",
        instructions="plan",
        functions=[web_search, skill_view, hand_over, read_file],
    )
    orchestrator = AgentOrchestrator()
    orchestrator.register_agent(agent)
    executor = FunctionExecutor(orchestrator)
    with event_scope(session_id=session, user_id="u-runtime"):
        asyncio.run(
            executor.execute_function_calls(calls, agent=agent, runtime_features_state=state)
        )
    assert state.audit_emitter is not None
    state.audit_emitter.flush()


def tool_sequence() -> list[RequestFunctionCall]:
    return [
        RequestFunctionCall(name="web_search", arguments={"query": "kafka"}),
        RequestFunctionCall(name="skill_view", arguments={"name": "summarise"}),
        RequestFunctionCall(name="hand_over", arguments={}),
        RequestFunctionCall(name="read_file", arguments={"path": "/etc/x"}, max_retries=0),
    ]


def stuck_agent() -> list[RequestFunctionCall]:
    """The same search five times in a row: a same_call loop."""
    return [RequestFunctionCall(name="web_search", arguments={"query": "kafka"}) for _ in range(5)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic-prefix", required=True)
    parser.add_argument("--calls", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--runtime-session", required=True)
    parser.add_argument("--loop-session", required=True)
    args = parser.parse_args()

    settings = KafkaSettings(
        bootstrap_servers=args.bootstrap, topic_prefix=args.topic_prefix, linger_ms=1
    )
    collector = KafkaCollector.from_settings(settings, agent_id="xerxes-pod")
    if not isinstance(collector, AuditCollector):  # Xerxes' own runtime-checkable protocol
        print("KafkaCollector does not satisfy xerxes.audit.AuditCollector", file=sys.stderr)
        return 2
    parts = (InMemoryCollector(), InMemoryCollector(), InMemoryCollector())
    try:
        emit_calls(collector, parts[0], args)
        run_runtime(collector, parts[1], args.runtime_session, tool_sequence())
        run_runtime(collector, parts[2], args.loop_session, stuck_agent())
        acknowledged = collector.publisher.flush(30)
    finally:
        collector.close()  # owns its publisher
    for part, memory in enumerate(parts, 1):
        for event in memory.get_events():
            print(json.dumps({"part": part, "event": event.to_dict()}, default=str))
    print(json.dumps({"failures": collector.failures.count, "acknowledged": acknowledged}))
    return 0 if acknowledged and collector.failures.count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
