"""The REAL Xerxes (``xerxes-agent`` 0.2.5 from PyPI, in its own venv) ships its audit events
through our KafkaCollector into the real broker; the persistence service stores them and the
loop service finds a stuck Xerxes agent.

Its ``AuditEmitter`` replays every ``emit_*`` method (the four types agentstream does not know
yet included); its runtime (``RuntimeFeaturesConfig(audit_collector=...)`` and
``FunctionExecutor``) emits what a real tool-call sequence emits. The same Calute-era calls
made on our own ``AuditEmitter`` decode into equal typed payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from support.persistence import persistence, settings_for
from support.runtime import read_records, running_consumer, wait_until

from agentstream.consumers.loops.service import SERVICE as LOOPS
from agentstream.consumers.loops.service import LoopSettings
from agentstream.consumers.persistence import Store
from agentstream.consumers.runtime import EventConsumer
from agentstream.producer import AuditEmitter, KafkaCollector, KafkaPublisher
from agentstream.schemas import Event, RecordLocation, decode_record
from agentstream.schemas.catalogue import AUDIT_PREFIX
from agentstream.schemas.envelope import payload_class
from agentstream.schemas.payloads import PAYLOADS, AuditOther
from agentstream.schemas.settings import KafkaSettings

SCRIPT = Path(__file__).resolve().parents[2] / "peers" / "xerxes_audit.py"
TID = "a1b2c3d4e5f6"
AGENT = {"agent_id": "agent-x", "turn_id": TID}
ENVELOPE = ("event_type", "timestamp", "agent_id", "turn_id", "session_id")

CALUTE_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("emit_turn_start", {**AGENT, "prompt": "Summarise the Kafka docs. " * 20}),
    (
        "emit_tool_policy_decision",
        {"tool_name": "web_search", "action": "allow", "source": "agent", **AGENT},
    ),
    (
        "emit_hook_mutation",
        {"hook_name": "redact_args", "tool_name": "web_search", "field": "arguments", **AGENT},
    ),
    ("emit_tool_call_attempt", {"tool_name": "web_search", "args": '{"q": "kafka"}', **AGENT}),
    (
        "emit_sandbox_decision",
        {
            "tool_name": "web_search",
            "context": "shell",
            "reason": "network access",
            "backend_type": "docker",
            **AGENT,
        },
    ),
    (
        "emit_tool_call_complete",
        {"tool_name": "web_search", "duration_ms": 12.5, "result": "3 hits", **AGENT},
    ),
    (
        "emit_tool_call_failure",
        {"tool_name": "fetch", "error_type": "TimeoutError", "error_msg": "timed out", **AGENT},
    ),
    (
        "emit_tool_loop_warning",
        {"tool_name": "web_search", "pattern": "same_call", "severity": "warning", "count": 3}
        | AGENT,
    ),
    (
        "emit_tool_loop_block",
        {"tool_name": "web_search", "pattern": "same_call", "count": 5, **AGENT},
    ),
    (
        "emit_error",
        {"error_type": "ValueError", "error_msg": "bad plan", "context": "plan", **AGENT},
    ),
]
XERXES_CALLS: list[tuple[str, dict[str, Any]]] = [
    (
        "emit_skill_used",
        {
            "skill_name": "summarise",
            "version": "1.2.0",
            "outcome": "success",
            "duration_ms": 40.5,
            "triggered_automatically": False,
            **AGENT,
        },
    ),
    (
        "emit_skill_authored",
        {
            "skill_name": "summarise",
            "version": "1.2.0",
            "source_path": "/skills/summarise",
            "tool_count": 3,
            "unique_tools": ["fetch", "web_search"],
            "confirmed_by_user": True,
            **AGENT,
        },
    ),
    (
        "emit_skill_feedback",
        {"skill_name": "summarise", "rating": "positive", "reason": "useful", **AGENT},
    ),
    ("emit_agent_switch", {"from_agent": "agent-x", "to_agent": "reviewer", "reason": "handoff"}),
]
TURN_END = ("emit_turn_end", {**AGENT, "content": "done", "fc_count": 2})
CALLS = [*CALUTE_CALLS, *XERXES_CALLS, TURN_END]
NEW_TYPES = {"skill_used", "skill_authored", "skill_feedback", "agent_switch"}


async def run_xerxes(
    python: Path, env: dict[str, str], settings: KafkaSettings, tmp_path: Path, **sessions: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the peer script; (what Xerxes emitted, the summary line)."""
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps(CALLS))
    proc = await asyncio.create_subprocess_exec(
        str(python),
        str(SCRIPT),
        "--bootstrap",
        settings.bootstrap_servers,
        "--topic-prefix",
        settings.topic_prefix,
        "--calls",
        str(calls),
        "--session",
        sessions["session"],
        "--runtime-session",
        sessions["runtime_session"],
        "--loop-session",
        sessions["loop_session"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"xerxes script failed:\n{err.decode()[-4000:]}"
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return [line for line in lines if "part" in line], lines[-1]


def by_session(events: list[tuple[int, int, Event]], session: str) -> list[Event]:
    """One session's events in partition order (a session is one partition)."""
    mine = sorted((p, o, e) for p, o, e in events if e.session_id == session)
    assert len({p for p, _, _ in mine}) <= 1, "a session must stay on one partition"
    return [e for _, _, e in mine]


def expected_data(emitted: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in emitted.items() if k not in ENVELOPE}


@contextlib.asynccontextmanager
async def loops_service(kafka: KafkaSettings) -> AsyncIterator[EventConsumer]:
    settings = LoopSettings(
        bootstrap_servers=kafka.bootstrap_servers,
        topic_prefix=kafka.topic_prefix,
        linger_ms=1,
        commit_interval_ms=100,
        fetch_max_wait_ms=50,
    )
    consumer = EventConsumer(settings, service=LOOPS.name)
    async with LOOPS.setup(consumer, settings), running_consumer(consumer):
        yield consumer


async def test_real_xerxes_ships_every_event_and_the_services_handle_them(
    kafka_settings: KafkaSettings,
    xerxes_python: Path,
    peer_env: dict[str, str],
    tmp_path: Path,
    unique_name: str,
) -> None:
    ours_sid, theirs_sid, runtime_sid, loop_sid = (
        f"{unique_name}-{n}" for n in ("ours", "xx", "rt", "loop")
    )
    settings = settings_for(kafka_settings, f"sqlite:///{tmp_path}/events.db")
    async with persistence(settings) as (_, store), loops_service(kafka_settings):
        publisher = KafkaPublisher(kafka_settings)
        try:  # the same Calute-era calls on our own emitter, for the payload comparison
            ours = AuditEmitter(KafkaCollector(publisher, agent_id="our-pod"), session_id=ours_sid)
            for method, kwargs in [*CALUTE_CALLS, TURN_END]:
                getattr(ours, method)(**kwargs)
            assert publisher.flush(30)
        finally:
            publisher.close(10)

        emitted, summary = await run_xerxes(
            xerxes_python,
            peer_env,
            kafka_settings,
            tmp_path,
            session=theirs_sid,
            runtime_session=runtime_sid,
            loop_session=loop_sid,
        )
        assert summary == {"failures": 0, "acknowledged": True}
        part1, part2, part3 = (
            [ln["event"] for ln in emitted if ln["part"] == n] for n in (1, 2, 3)
        )
        assert [e["event_type"] for e in part1] == [
            *(m.removeprefix("emit_") for m, _ in CALLS),
            "skill_feedback",  # the hand-built event with odd metadata
        ]
        # the runtime's tool sequence, as Xerxes 0.2.5 emits it
        assert {e["event_type"] for e in part2} >= {
            "tool_policy_decision",
            "tool_call_attempt",
            "tool_call_complete",
            "skill_used",
            "agent_switch",
            "tool_call_failure",
        }
        assert [e["event_type"] for e in part3].count("tool_call_attempt") == 5

        total = len(CALUTE_CALLS) + 1 + len(part1) + len(part2) + len(part3)
        records = await read_records(kafka_settings, kafka_settings.routing().events, total)
        arrived = [
            (r.partition, r.offset, decode_record(r.value, r.headers, where=where(r)))
            for r in records
        ]
        assert len(arrived) == total

        theirs = by_session(arrived, theirs_sid)
        runtime = by_session(arrived, runtime_sid)
        stuck = by_session(arrived, loop_sid)
        assert (len(theirs), len(runtime), len(stuck)) == (len(part1), len(part2), len(part3))
        for sent, got, user in [
            *((s, g, "") for s, g in zip(part1, theirs, strict=True)),
            *((s, g, "u-runtime") for s, g in zip(part2 + part3, runtime + stuck, strict=True)),
        ]:
            assert got.type == AUDIT_PREFIX + sent["event_type"]
            assert got.timestamp == datetime.fromisoformat(sent["timestamp"])
            assert got.agent_id == (sent["agent_id"] or "xerxes-pod")
            assert got.turn_id == (sent["turn_id"] or "")
            assert got.user_id == user  # the runtime ran inside event_scope(user_id=...)
            assert isinstance(got.payload, payload_class(got.type))
            if sent["event_type"] in NEW_TYPES:
                assert isinstance(got.payload, AuditOther)  # unknown yet: audit.*, fields kept
            else:
                assert type(got.payload) is PAYLOADS[got.type]
            if sent["metadata"]:  # the hand-built event: what JSON cannot carry became plain
                meta = got.data["metadata"]
                assert meta["path"] == "/skills/summarise" and meta["tags"] == ["a", "b"]
                at = datetime.fromisoformat(meta["at"])
                assert at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
                assert {**got.data, "metadata": sent["metadata"]} == expected_data(sent)
            else:
                assert got.data == expected_data(sent)  # every field kept, nothing added

        # both ways: the same calls through our emitter decode to equal payloads
        ours_events = by_session(arrived, ours_sid)
        calute_theirs = [e for e in theirs if e.type.removeprefix(AUDIT_PREFIX) not in NEW_TYPES]
        assert [e.type for e in ours_events] == [e.type for e in calute_theirs]
        for mine, their in zip(ours_events, calute_theirs, strict=True):
            assert mine.payload == their.payload, mine.type
            assert (mine.agent_id, mine.turn_id) == (their.agent_id, their.turn_id)

        # the loop service saw the stuck Xerxes agent: a warning at 3 calls, a block at 5
        alerts = [
            e
            for r in await read_records(kafka_settings, kafka_settings.routing().alerts, 2)
            if (e := decode_record(r.value, r.headers, where=where(r))).session_id == loop_sid
        ]
        assert [(a.type, a.data["pattern"], a.data["call_count"]) for a in alerts] == [
            ("audit.tool_loop_warning", "same_call", 3),
            ("audit.tool_loop_block", "same_call", 5),
        ]
        assert {(a.agent_id, a.data["tool_name"]) for a in alerts} == {("planner", "web_search")}
        [pause] = await read_records(kafka_settings, kafka_settings.routing().control, 1)
        directive = decode_record(pause.value, pause.headers, where=where(pause))
        assert (directive.type, directive.agent_id, directive.session_id) == (
            "control.agent.paused",
            "planner",
            loop_sid,
        )

        # persistence stored every event with valid typed payloads
        for session, sent_events in ((theirs_sid, theirs), (runtime_sid, runtime)):
            await check_stored(store, session, sent_events)
        wanted = {e.event_id for e in stuck + alerts} | {directive.event_id}

        async def loop_session_stored() -> bool:
            return {e.event_id for e in await store.timeline(loop_sid)} >= wanted

        await wait_until(loop_session_stored, what="the stuck session and its findings stored")


def where(record: Any) -> RecordLocation:
    return RecordLocation(record.topic, record.partition, record.offset)


async def check_stored(store: Store, session: str, sent: list[Event]) -> None:
    async def complete() -> bool:
        return len(await store.timeline(session)) >= len(sent)

    await wait_until(complete, what=f"session {session} stored")
    timeline = await store.timeline(session)
    assert [e.event_id for e in timeline] == [e.event_id for e in sent]
    for got, want in zip(timeline, sent, strict=True):
        assert got.payload == want.payload  # typed payloads valid after the round trip
        assert got.data == want.data
