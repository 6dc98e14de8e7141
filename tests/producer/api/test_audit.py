"""AuditEmitter and collectors: Calute's API exactly, without its collector bugs."""

from __future__ import annotations

import inspect
import io
import json
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from agentstream.producer import (
    AuditEmitter,
    CompositeCollector,
    InMemoryCollector,
    JSONLSinkCollector,
    KafkaCollector,
    ToolCallAttemptEvent,
    TurnStartEvent,
    audit_envelope,
    event_scope,
)
from agentstream.producer.audit_events import AUDIT_EVENT_CLASSES
from agentstream.schemas import PAYLOADS

if TYPE_CHECKING:
    from conftest import RecordingPublisher

_ = inspect.Parameter.empty
# Calute's signatures, from the seed documentation: (name, default) in order.
SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "emit_turn_start": [("agent_id", None), ("turn_id", None), ("prompt", "")],
    "emit_turn_end": [("agent_id", None), ("turn_id", None), ("content", ""), ("fc_count", 0)],
    "emit_tool_call_attempt": [
        ("tool_name", _),
        ("args", ""),
        ("agent_id", None),
        ("turn_id", None),
    ],
    "emit_tool_call_complete": [
        ("tool_name", _),
        ("status", "success"),
        ("duration_ms", 0.0),
        ("result", ""),
        ("agent_id", None),
        ("turn_id", None),
    ],
    "emit_tool_call_failure": [
        ("tool_name", _),
        ("error_type", ""),
        ("error_msg", ""),
        ("agent_id", None),
        ("turn_id", None),
    ],
    "emit_tool_policy_decision": [
        ("tool_name", _),
        ("agent_id", None),
        ("action", ""),
        ("source", ""),
        ("turn_id", None),
    ],
    "emit_sandbox_decision": [
        ("tool_name", _),
        ("context", ""),
        ("reason", ""),
        ("backend_type", ""),
        ("agent_id", None),
        ("turn_id", None),
    ],
    "emit_tool_loop_warning": [
        ("tool_name", _),
        ("pattern", ""),
        ("severity", "warning"),
        ("count", 0),
        ("agent_id", None),
        ("turn_id", None),
    ],
    "emit_tool_loop_block": [
        ("tool_name", _),
        ("pattern", ""),
        ("count", 0),
        ("agent_id", None),
        ("turn_id", None),
    ],
    "emit_hook_mutation": [
        ("hook_name", _),
        ("tool_name", ""),
        ("agent_id", None),
        ("field", ""),
        ("turn_id", None),
    ],
    "emit_error": [
        ("error_type", ""),
        ("error_msg", ""),
        ("context", ""),
        ("agent_id", None),
        ("turn_id", None),
    ],
}


def test_every_emit_method_has_calutes_parameters_order_and_defaults() -> None:
    methods = {n for n in dir(AuditEmitter) if n.startswith("emit_")}
    assert methods == set(SIGNATURES)
    for name, expected in SIGNATURES.items():
        params = list(inspect.signature(getattr(AuditEmitter, name)).parameters.values())[1:]
        assert [(p.name, p.default) for p in params] == expected, name
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params), name


def test_seed_example() -> None:
    collector = InMemoryCollector()
    emitter = AuditEmitter(collector=collector, session_id="sess-01")
    tid = emitter.emit_turn_start(agent_id="agent-1", prompt="Hello")
    emitter.emit_tool_call_attempt("web_search", args='{"q":"hi"}', turn_id=tid)
    emitter.emit_turn_end(agent_id="agent-1", turn_id=tid, fc_count=1)
    emitter.flush()
    events = collector.get_events()
    assert [e.event_type for e in events] == ["turn_start", "tool_call_attempt", "turn_end"]
    assert re.fullmatch(r"[0-9a-f]{12}", tid)
    assert {e.turn_id for e in events} == {tid}
    assert {e.session_id for e in events} == {"sess-01"}
    assert events[0].prompt_preview == "Hello"
    assert events[1].arguments_preview == '{"q":"hi"}'
    assert events[2].function_calls_count == 1
    assert emitter.collector is collector and emitter.session_id == "sess-01"


def test_default_collector_and_given_turn_id() -> None:
    emitter = AuditEmitter()
    assert isinstance(emitter.collector, InMemoryCollector)
    assert emitter.session_id is None
    assert emitter.emit_turn_start(turn_id="mine") == "mine"
    assert emitter.emit_turn_start() != emitter.emit_turn_start()
    # Calute: ``turn_id or _generate_turn_id()``: an empty one gets a new id too
    assert re.fullmatch(r"[0-9a-f]{12}", emitter.emit_turn_start(turn_id=""))
    assert emitter.collector.get_events()[0].session_id is None


def test_parameter_to_field_renames_and_severities() -> None:
    emitter = AuditEmitter(session_id="s")
    emitter.emit_tool_call_complete("t", "partial", 12.5, "out", "a", "tid")
    emitter.emit_tool_call_failure("t", "ValueError", "bad", "a", "tid")
    emitter.emit_tool_policy_decision("t", "a", "deny", "policy.yaml#r3", "tid")
    emitter.emit_sandbox_decision("t", "ctx", "why", "docker", "a", "tid")
    emitter.emit_tool_loop_warning("t", "same_call", "critical", 4, "a", "tid")
    emitter.emit_tool_loop_block("t", "pingpong", 6, "a", "tid")
    emitter.emit_hook_mutation("sanitize", "t", "a", "arguments", "tid")
    emitter.emit_error("RuntimeError", "oops", "parsing", "a", "tid")
    got = [e.to_dict() for e in emitter.collector.get_events()]
    for d in got:
        assert (d["agent_id"], d["turn_id"], d["session_id"]) == ("a", "tid", "s")
    complete, failure, policy, sandbox, warning, block, hook, error = got
    assert (
        complete.items()
        >= {"status": "partial", "duration_ms": 12.5, "result_preview": "out"}.items()
    )
    assert failure["error_message"] == "bad" and failure["severity"] == "error"
    assert policy["action"] == "deny" and policy["policy_source"] == "policy.yaml#r3"
    assert sandbox["backend_type"] == "docker" and sandbox["context"] == "ctx"
    assert warning["severity"] == "warning" and warning["severity_level"] == "critical"
    assert warning["call_count"] == 4 and warning["pattern"] == "same_call"
    assert block["severity"] == "error" and block["call_count"] == 6
    assert hook["mutated_field"] == "arguments" and hook["hook_name"] == "sanitize"
    assert error["error_context"] == "parsing" and error["severity"] == "error"


def test_previews_keep_200_characters_and_empty_stays_empty() -> None:
    emitter = AuditEmitter()
    long = "x" * 500
    emitter.emit_turn_start(prompt=long)
    emitter.emit_turn_end(content=long)
    emitter.emit_tool_call_attempt("t", args=long)
    emitter.emit_tool_call_complete("t", result=long)
    emitter.emit_tool_call_attempt("t")
    previews = [
        e.to_dict().get(k)
        for e in emitter.collector.get_events()
        for k in ("prompt_preview", "content_preview", "arguments_preview", "result_preview")
        if k in e.to_dict()
    ]
    assert previews == ["x" * 200] * 4 + [""]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_a_preview_of_something_else_than_text_is_its_str_not_a_type_error() -> None:
    """Agent code passes a dict of arguments or a result object where Calute expects text;
    Calute's slice raised a TypeError into the agent, the preview is now their str()."""
    emitter = AuditEmitter()
    emitter.emit_tool_call_attempt("t", args={"q": "hi"})  # type: ignore[arg-type]
    emitter.emit_tool_call_complete("t", result=list(range(100)))  # type: ignore[arg-type]
    emitter.emit_turn_start(prompt=None)  # type: ignore[arg-type]
    emitter.emit_turn_end(content=_Unprintable())  # type: ignore[arg-type]
    attempt, complete, start, end = emitter.collector.get_events()
    assert attempt.to_dict()["arguments_preview"] == "{'q': 'hi'}"
    assert complete.to_dict()["result_preview"] == str(list(range(100)))[:200]
    assert start.to_dict()["prompt_preview"] == ""
    assert end.to_dict()["content_preview"] == "<unrepresentable _Unprintable>"


def test_event_to_dict_order_and_json() -> None:
    event = TurnStartEvent(agent_id="a", prompt_preview="p", metadata={"k": 1})
    d = event.to_dict()
    assert list(d) == [
        "event_type",
        "timestamp",
        "agent_id",
        "turn_id",
        "session_id",
        "severity",
        "metadata",
        "prompt_preview",
    ]
    assert d["event_type"] == "turn_start" and d["severity"] == "info"
    assert datetime.fromisoformat(d["timestamp"]).utcoffset() is not None
    assert json.loads(event.to_json()) == d
    d["metadata"]["k"] = 2
    assert event.metadata == {"k": 1}
    with pytest.raises(TypeError):
        TurnStartEvent(event_type="other")  # type: ignore[call-arg]


def test_emits_from_many_threads_are_all_collected() -> None:
    collector = InMemoryCollector()
    emitter = AuditEmitter(collector, session_id="s")

    def work(n: int) -> None:
        for i in range(500):
            emitter.emit_tool_call_attempt(f"tool-{n}", args=str(i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(collector) == 4000
    for n in range(8):
        mine = [e.arguments_preview for e in collector.get_events() if e.tool_name == f"tool-{n}"]
        assert mine == [str(i) for i in range(500)]


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def emit(self, event: Any) -> None:
        self.calls += 1
        raise OSError("disk full")

    def flush(self) -> None:
        raise OSError("disk full")


def test_a_failing_collector_never_reaches_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    emitter = AuditEmitter(Broken())
    emitter.emit_turn_start()
    emitter.emit_error("E")
    emitter.flush()
    assert emitter.collector_failures == 3
    assert "disk full" in caplog.text  # the first failure is logged


def test_composite_forwards_in_order_and_isolates_a_failing_child() -> None:
    first, last = InMemoryCollector(), InMemoryCollector()
    broken = Broken()
    composite = CompositeCollector([first])
    composite.add(broken)
    composite.add(last)
    emitter = AuditEmitter(composite)
    emitter.emit_turn_start()
    emitter.emit_turn_end()
    emitter.flush()
    assert len(first) == 2 and len(last) == 2 and broken.calls == 2
    assert composite.failures.count == 3
    assert emitter.collector_failures == 0
    assert CompositeCollector().collectors == []


def test_in_memory_collector_queries() -> None:
    collector = InMemoryCollector()
    emitter = AuditEmitter(collector)
    emitter.emit_turn_start()
    emitter.emit_tool_call_attempt("a")
    emitter.emit_tool_call_attempt("b")
    events = collector.get_events()
    events.clear()  # a copy
    assert len(collector) == 3
    assert [e.tool_name for e in collector.get_events_by_type("tool_call_attempt")] == ["a", "b"]
    collector.clear()
    assert len(collector) == 0


def test_jsonl_sink_to_a_path_is_owned(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": true}\n')
    sink = JSONLSinkCollector(str(path))
    emitter = AuditEmitter(sink, session_id="s")
    emitter.emit_tool_call_attempt("t", args="a")
    emitter.flush()
    sink.close()
    sink.close()  # idempotent
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"earlier": True}
    assert lines[1]["event_type"] == "tool_call_attempt" and lines[1]["session_id"] == "s"
    with pytest.raises(ValueError, match="closed"):
        sink.emit(ToolCallAttemptEvent())


def test_jsonl_sink_to_a_stream_is_not_owned() -> None:
    stream = io.StringIO()
    sink = JSONLSinkCollector(stream)
    sink.emit(TurnStartEvent(prompt_preview="hi"))
    sink.close()
    assert not stream.closed
    assert json.loads(stream.getvalue())["prompt_preview"] == "hi"


def test_every_audit_event_maps_to_its_payload_struct() -> None:
    for event_type, cls in AUDIT_EVENT_CLASSES.items():
        event = cls(agent_id="a", turn_id="t", session_id="s", metadata={"m": 1})
        envelope = audit_envelope(event)
        assert envelope.type == f"audit.{event_type}"
        assert type(envelope.payload) is PAYLOADS[envelope.type]
        assert (envelope.agent_id, envelope.turn_id, envelope.session_id) == ("a", "t", "s")
        assert envelope.timestamp == datetime.fromisoformat(event.timestamp)
        expected = {
            k: v
            for k, v in event.to_dict().items()
            if k not in ("event_type", "timestamp", "agent_id", "turn_id", "session_id")
        }
        assert envelope.data == expected
        assert envelope.payload.severity == event.severity  # type: ignore[attr-defined]


def test_foreign_audit_events_keep_every_field() -> None:
    class SkillUsed:  # a Xerxes-style event the catalogue does not know
        event_type = "skill_used"

        def to_dict(self) -> dict[str, Any]:
            return {
                "event_type": "skill_used",
                "timestamp": "2025-06-15T14:30:00.123456+00:00",
                "agent_id": None,
                "session_id": None,
                "skill": "summarise",
                "version": 3,
            }

    with event_scope(session_id="from-scope", user_id="u"):
        envelope = audit_envelope(SkillUsed(), agent_id="fallback")
    assert envelope.type == "audit.skill_used"
    assert envelope.data == {"skill": "summarise", "version": 3}
    assert (envelope.agent_id, envelope.session_id, envelope.user_id) == (
        "fallback",
        "from-scope",
        "u",
    )
    assert envelope.timestamp.isoformat() == "2025-06-15T14:30:00.123456+00:00"


def test_kafka_collector_publishes_and_flushes(recording: type[RecordingPublisher]) -> None:
    publisher = recording()
    collector = KafkaCollector(publisher, agent_id="agent-9")
    emitter = AuditEmitter(collector, session_id="s1")
    tid = emitter.emit_turn_start(prompt="hello")
    emitter.emit_tool_call_attempt("search", args='{"q": 1}', turn_id=tid)
    emitter.flush()
    assert publisher.flushes == 1
    types = [(e.type, e.session_id, e.agent_id, e.turn_id) for e in publisher.events]
    assert types == [
        ("audit.turn_start", "s1", "agent-9", tid),
        ("audit.tool_call_attempt", "s1", "agent-9", tid),
    ]
    collector.close()
    assert not publisher.closed  # shared publisher: not ours to close


def _call_every_emit_method(emitter: AuditEmitter) -> None:
    """Each emit_* once, every parameter given a value of its own."""
    for name, params in SIGNATURES.items():
        values: dict[str, Any] = {}
        for param, default in params:
            if isinstance(default, bool) or not isinstance(default, int | float):
                values[param] = f"{name}:{param}"
            else:
                values[param] = type(default)(len(param))
        getattr(emitter, name)(**values)


def test_kafka_collector_envelopes_equal_those_of_calutes_event_objects(
    recording: type[RecordingPublisher],
) -> None:
    # The emitter hands a KafkaCollector the fields instead of the event object: the same
    # envelopes must come out as from the objects another collector receives.
    objects, publisher = InMemoryCollector(), recording()
    with event_scope(user_id="u-1"):
        _call_every_emit_method(AuditEmitter(objects, session_id="s-1"))
        _call_every_emit_method(
            AuditEmitter(KafkaCollector(publisher, agent_id="fallback"), session_id="s-1")
        )
        expected = [audit_envelope(e, agent_id="fallback") for e in objects.get_events()]
    assert len(publisher.events) == len(expected) == len(SIGNATURES)
    for got, want in zip(publisher.events, expected, strict=True):
        assert abs(got.timestamp - want.timestamp) < timedelta(seconds=5)
        assert got.timestamp.tzinfo is UTC
        assert got.event_id != want.event_id
        skip = ("event_id", "seq")  # the publisher stamps seq
        got_fields = {k: v for k, v in msgspec.structs.asdict(got).items() if k not in skip}
        want_fields = {k: v for k, v in msgspec.structs.asdict(want).items() if k not in skip}
        got_fields["timestamp"] = want_fields["timestamp"]
        assert got_fields == want_fields
        assert list(got.data) == list(want.data), got.type  # same keys, same order
        assert got.user_id == "u-1"


def test_kafka_collector_ids_from_scope_and_non_string_ids(
    recording: type[RecordingPublisher],
) -> None:
    publisher = recording()
    turn = uuid.uuid4()
    emitter = AuditEmitter(KafkaCollector(publisher, agent_id="fallback"), session_id=None)
    with event_scope(session_id="scoped-s", turn_id="scoped-t", agent_id="scoped-a"):
        emitter.emit_turn_start()
    emitter.emit_error("E", turn_id=turn)  # type: ignore[arg-type]
    first, second = publisher.events
    assert (first.agent_id, first.session_id) == ("scoped-a", "scoped-s")
    assert re.fullmatch(r"[0-9a-f]{12}", first.turn_id)  # the new turn id, not the scope's
    assert (second.agent_id, second.session_id, second.turn_id) == ("fallback", "", str(turn))


def test_a_kafka_collector_subclass_that_overrides_emit_gets_event_objects(
    recording: type[RecordingPublisher],
) -> None:
    class Tee(KafkaCollector):
        def __init__(self, publisher: RecordingPublisher) -> None:
            super().__init__(publisher)
            self.seen: list[Any] = []

        def emit(self, event: Any) -> None:
            self.seen.append(event)
            super().emit(event)

    publisher = recording()
    collector = Tee(publisher)
    AuditEmitter(collector, session_id="s").emit_tool_call_attempt("search")
    assert [type(e) for e in collector.seen] == [ToolCallAttemptEvent]
    assert collector.seen[0].session_id == "s"
    assert [e.type for e in publisher.events] == ["audit.tool_call_attempt"]


def test_a_failing_publisher_never_reaches_the_emitters_caller(
    recording: type[RecordingPublisher],
) -> None:
    collector = KafkaCollector(recording(fail=True))
    emitter = AuditEmitter(collector)
    emitter.emit_turn_start()
    emitter.emit_tool_call_failure("t")
    assert collector.failures.count == 2


def test_emits_to_a_kafka_collector_do_not_wait_for_another_threads_flush(
    recording: type[RecordingPublisher],
) -> None:
    """Calute's flush holds the emitter's lock until the collector returns; with Kafka that is
    until the broker acknowledged everything. An agent thread's emit must not wait for it."""
    entered, release = threading.Event(), threading.Event()
    publisher = recording()

    def slow_flush(timeout: float | None = None) -> bool:
        entered.set()
        return release.wait()  # until the test releases it

    publisher.flush = slow_flush  # type: ignore[method-assign]
    emitter = AuditEmitter(KafkaCollector(publisher, flush_timeout=None), session_id="s")
    flusher = threading.Thread(target=emitter.flush)
    flusher.start()
    try:
        assert entered.wait(10), "the flush did not start"
        emitting = threading.Thread(target=emitter.emit_turn_start, kwargs={"turn_id": "t-1"})
        emitting.start()
        emitting.join(10)  # a bound for a deadlock, not a speed check
        assert not emitting.is_alive(), "emit waited for the flush in progress"
        assert [(e.type, e.turn_id) for e in publisher.events] == [("audit.turn_start", "t-1")]
    finally:
        release.set()
        flusher.join(10)


def test_timestamps_are_utc_iso_with_microseconds_and_current() -> None:
    before = datetime.now(UTC)
    stamps = [TurnStartEvent().timestamp for _ in range(1000)]
    after = datetime.now(UTC)
    parsed = [datetime.fromisoformat(s) for s in stamps]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", s) for s in stamps)
    assert all(
        before - timedelta(milliseconds=1) <= p <= after + timedelta(milliseconds=1) for p in parsed
    )
