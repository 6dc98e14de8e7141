"""Bus and emitter through the real KafkaPublisher into the real broker: redaction on both
APIs, and per-session order from many threads."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from agentstream.producer import (
    AuditEmitter,
    CompositeCollector,
    Event,
    EventBus,
    EventType,
    InMemoryCollector,
    KafkaCollector,
    KafkaPublisher,
)
from agentstream.schemas import RecordLocation, decode_record
from agentstream.schemas.settings import KafkaSettings


@pytest.fixture
async def publisher(kafka_settings: KafkaSettings) -> AsyncIterator[KafkaPublisher]:
    pub = KafkaPublisher(kafka_settings)
    try:
        yield pub
    finally:
        pub.close(10)


async def consume(
    settings: KafkaSettings, topic: str, count: int, timeout: float = 20.0, linger: float = 0.0
) -> list[tuple[int, int, bytes, Event]]:
    """(partition, offset, raw value, event) of the records of ``topic``: at least ``count``
    (unless ``timeout`` passes), plus whatever else arrives within ``linger`` seconds after.
    (Not end offsets: the embedded broker's ListOffsets answer lagged the records it served.)"""
    consumer = AIOKafkaConsumer(
        **{**settings.consumer_options(), "group_id": None, "auto_offset_reset": "earliest"}
    )
    await consumer.start()
    out: list[tuple[int, int, bytes, Event]] = []
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        def take(batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
            for tp, records in batches.items():
                for r in records:
                    where = RecordLocation(tp.topic, tp.partition, r.offset)
                    event = decode_record(r.value, r.headers, where=where)
                    out.append((tp.partition, r.offset, r.value or b"", event))

        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            take(await consumer.getmany(timeout_ms=500))
        if linger > 0:
            take(await consumer.getmany(timeout_ms=int(linger * 1000)))
    finally:
        await consumer.stop()
    return out


SECRETS = (
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "hunter2-db-password",
    "eyJhbGciOiJIUzI1NiJ9.payload.sig",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "Zx9" * 12,
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
)


async def test_secrets_never_leave_the_pod_on_either_api(
    kafka_settings: KafkaSettings, publisher: KafkaPublisher
) -> None:
    bus = EventBus(publisher, agent_id="agent-r")
    data: dict[str, Any] = {
        "name": "http",
        "args": {
            "url": f"postgres://app:{SECRETS[1]}@db:5432/main",
            "headers": {"Authorization": f"Bearer {SECRETS[2]}"},
            "api_key": SECRETS[0],
        },
    }
    with bus.scope(session_id="s-redact"):
        await bus.emit(Event(type=EventType.TOOL_CALLED, data=data))
    memory = InMemoryCollector()
    emitter = AuditEmitter(
        CompositeCollector([memory, KafkaCollector(publisher)]), session_id="s-redact"
    )
    pem = f"-----BEGIN PRIVATE KEY-----\n{SECRETS[5]}\n-----END PRIVATE KEY-----"
    emitter.emit_tool_call_attempt("deploy", args=f'{{"aws": "{SECRETS[3]}"}}')
    emitter.emit_tool_call_complete("deploy", result=f"token {SECRETS[4]} and key {pem}"[:200])
    # Calute passes arguments as a JSON string: its preview is text, not a dict to walk
    emitter.emit_tool_call_attempt("login", args='{"user": "bob", "password": "pw-in-json-9"}')
    emitter.flush()

    records = await consume(kafka_settings, kafka_settings.routing().events, 4)
    assert [e.type for _, _, _, e in records] == [
        "tool.called",
        "audit.tool_call_attempt",
        "audit.tool_call_complete",
        "audit.tool_call_attempt",
    ]
    for _, _, raw, _ in records:
        for secret in (*SECRETS, "pw-in-json-9"):
            assert secret.encode() not in raw
        assert b"[REDACTED]" in raw
    shipped = records[0][3].data
    assert shipped["args"]["url"] == "postgres://app:[REDACTED]@db:5432/main"
    assert shipped["args"]["api_key"] == "[REDACTED]"
    # what the agent emitted stays whole inside the pod
    assert bus.history[0].data["args"]["api_key"] == SECRETS[0]
    assert data["args"]["headers"] == {"Authorization": f"Bearer {SECRETS[2]}"}
    assert SECRETS[3] in memory.get_events()[0].arguments_preview


async def test_10k_events_from_bus_and_emitters_in_4_threads_keep_per_session_order(
    kafka_settings: KafkaSettings, publisher: KafkaPublisher
) -> None:
    sessions, per_session, threads = 100, 100, 4
    bus = EventBus(publisher, agent_id="agent-o")

    def work(worker: int) -> None:
        mine = [f"sess-{s:03d}" for s in range(worker, sessions, threads)]
        emitters = {
            sid: AuditEmitter(KafkaCollector(publisher, agent_id="agent-o"), session_id=sid)
            for sid in mine
        }
        for n in range(per_session):
            for sid in mine:
                if n % 2 == 0:  # the bus, from sync code without a loop in this thread
                    bus.emit_sync(
                        Event(
                            type=EventType.TOOL_CALLED, session_id=sid, data={"name": "t", "n": n}
                        )
                    )
                else:
                    emitters[sid].emit_tool_call_attempt("t", args=str(n))

    workers = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert publisher.flush(20)

    total = sessions * per_session
    topic = kafka_settings.routing().events
    records = await consume(kafka_settings, topic, total, 20, linger=1.0)
    assert len(records) == total  # and nothing more came within a second: no duplicates
    by_session: dict[str, list[tuple[int, int, Event]]] = defaultdict(list)
    for partition, offset, _, event in records:
        by_session[event.session_id].append((partition, offset, event))
    assert len(by_session) == sessions
    for sid, items in by_session.items():
        assert len({p for p, _, _ in items}) == 1, f"{sid} spread over partitions"
        items.sort(key=lambda item: item[1])
        order = [
            e.data["n"] if e.type == "tool.called" else int(e.data["arguments_preview"])
            for _, _, e in items
        ]
        assert order == list(range(per_session)), sid
        seqs = [e.seq for _, _, e in items]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_kafka_collector_from_settings_owns_its_publisher(
    kafka_settings: KafkaSettings,
) -> None:
    collector = KafkaCollector.from_settings(kafka_settings, agent_id="agent-s")
    try:
        emitter = AuditEmitter(collector, session_id="s-own")
        tid = emitter.emit_turn_start(prompt="hello")
        emitter.emit_turn_end(turn_id=tid, content="bye", fc_count=0)
        emitter.flush()
    finally:
        collector.close()
    records = await consume(kafka_settings, kafka_settings.routing().events, 2)
    events = [e for _, _, _, e in records]
    assert [(e.type, e.agent_id, e.session_id, e.turn_id) for e in events] == [
        ("audit.turn_start", "agent-s", "s-own", tid),
        ("audit.turn_end", "agent-s", "s-own", tid),
    ]
    assert events[0].payload.prompt_preview == "hello"  # type: ignore[attr-defined]
    assert events[0].seq < events[1].seq


async def test_calls_that_differ_only_in_a_secret_stay_different_calls_for_loop_detection(
    kafka_settings: KafkaSettings, publisher: KafkaPublisher
) -> None:
    """Redaction made five logins with five passwords identical on the wire: the loops
    service blocked them as one call made five times (and paused the agent)."""
    from agentstream.consumers.loops import LoopDetector
    from agentstream.schemas.payloads import ARGS_DIGEST

    bus = EventBus(publisher, agent_id="agent-r")
    emitter = AuditEmitter(KafkaCollector(publisher), session_id="s-tries")
    with bus.scope(session_id="s-tries"):
        for i in range(5):
            args = {"user": "bob", "password": f"guess-{i}"}
            await bus.emit(Event(type=EventType.TOOL_CALLED, data={"name": "login", "args": args}))
            emitter.emit_tool_call_attempt("login", args=f'{{"api_key": "sk-proj-{i:024d}"}}')
        for _ in range(5):  # the same secret five times is the same call
            same = {"user": "bob", "password": "same-guess"}
            await bus.emit(Event(type=EventType.TOOL_CALLED, data={"name": "retry", "args": same}))
    emitter.flush()
    publisher.flush(10)

    records = await consume(kafka_settings, kafka_settings.routing().events, 15)
    events = [e for _, _, _, e in records]
    assert all(b"guess-" not in raw and b"sk-proj-" not in raw for _, _, raw, _ in records)
    digests = {e.data[ARGS_DIGEST] for e in events}
    assert len(digests) == 5 + 5 + 1
    detector = LoopDetector()
    findings = [f for f in map(detector.handle, events) if f is not None]
    assert [(f.pattern.value, f.level.label) for f in findings] == [
        ("same_call", "warning"),
        ("same_call", "critical"),
    ]
    assert {f.tool_name for f in findings} == {"retry"}
