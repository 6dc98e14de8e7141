"""KafkaCollector with audit events that are not ours: Calute/Xerxes-shaped objects (a
dataclass with ``event_type`` and an ``asdict`` ``to_dict()``, as in ``xerxes.audit.events``),
and the safety a collector needs when the emitter calling it does not isolate it."""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pytest
from support.samples import ForeignAuditEvent

from agentstream.producer import KafkaCollector
from agentstream.producer.adapters import plain_data, wire_type
from agentstream.schemas import decode_event, encode_event
from agentstream.schemas.payloads import AuditOther, AuditToolCallAttempt


@dataclass
class SkillAuthored(ForeignAuditEvent):
    event_type: str = field(default="skill_authored", init=False)
    skill_name: str = ""
    tool_count: int = 0
    unique_tools: list[str] = field(default_factory=list)
    confirmed_by_user: bool = False


@dataclass
class ToolCallAttempt(ForeignAuditEvent):
    event_type: str = field(default="tool_call_attempt", init=False)
    tool_name: str = ""
    arguments_preview: str = ""


def test_an_unknown_type_arrives_as_audit_type_with_every_field(recording: Any) -> None:
    event = SkillAuthored(
        agent_id="a",
        turn_id="0123456789ab",
        session_id="s",
        skill_name="summarise",
        tool_count=2,
        unique_tools=["fetch", "search"],
        confirmed_by_user=True,
        metadata={"origin": "cli"},
    )
    KafkaCollector(recording).emit(event)
    [env] = recording.events
    assert env.type == "audit.skill_authored"
    assert (env.agent_id, env.turn_id, env.session_id) == ("a", "0123456789ab", "s")
    assert env.timestamp == datetime.fromisoformat(event.timestamp)
    assert env.data == {
        "severity": "info",
        "metadata": {"origin": "cli"},
        "skill_name": "summarise",
        "tool_count": 2,
        "unique_tools": ["fetch", "search"],
        "confirmed_by_user": True,
    }
    wire = decode_event(encode_event(env))
    assert isinstance(wire.payload, AuditOther)
    assert (wire.payload.severity, wire.payload.metadata) == ("info", {"origin": "cli"})
    assert wire.data == env.data


def test_a_known_type_from_another_package_decodes_as_our_payload(recording: Any) -> None:
    KafkaCollector(recording, agent_id="pod").emit(
        ToolCallAttempt(tool_name="search", arguments_preview='{"q": 1}')
    )
    [env] = recording.events
    assert env.agent_id == "pod"  # the event carried none
    payload = decode_event(encode_event(env)).payload
    assert payload == AuditToolCallAttempt(tool_name="search", arguments_preview='{"q": 1}')


def test_a_custom_to_dict_is_honoured(recording: Any) -> None:
    @dataclass
    class Renamed(ForeignAuditEvent):
        event_type: str = field(default="custom_thing", init=False)
        secret_internal: str = "x"

        def to_dict(self) -> dict[str, Any]:
            out = asdict(self)
            out["public"] = out.pop("secret_internal").upper()
            return out

    KafkaCollector(recording).emit(Renamed())
    [env] = recording.events
    assert env.data == {"severity": "info", "metadata": {}, "public": "X"}


def test_metadata_json_cannot_carry_is_kept_as_plain_values(recording: Any) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = ToolCallAttempt(
        tool_name="t",
        metadata={"path": PurePosixPath("/a"), "ids": {7}, "obj": Opaque(), "at": when},
    )
    KafkaCollector(recording).emit(event)
    [env] = recording.events
    assert env.data["metadata"] == {"path": "/a", "ids": [7], "obj": "opaque", "at": when}
    assert decode_event(encode_event(env)).data["metadata"]["obj"] == "opaque"
    assert isinstance(event.metadata["obj"], Opaque)  # the agent's event is untouched


def test_an_event_type_that_is_not_a_type_tag_is_made_one_and_kept(recording: Any) -> None:
    KafkaCollector(recording).emit(ForeignAuditEvent(event_type="Skill Used!"))
    [env] = recording.events
    assert env.type == "audit.skill_used_"
    assert env.data["event_type"] == "Skill Used!"
    decode_event(encode_event(env))  # a valid tag: the consumer side accepts it
    assert wire_type("x.y") == "x.y"
    assert wire_type("Tool Ran", prefix="audit.") == "audit.tool_ran"
    assert wire_type("noDot") == "unknown.nodot"


def test_the_collector_never_raises_into_an_emitter_that_does_not_isolate_it(
    broken_publisher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Calute's and Xerxes' emitters call ``collector.emit`` inside the agent's tool call."""

    class Exploding:
        def flush(self, timeout: float | None = None) -> bool:
            raise RuntimeError("publisher thread is gone")

    collector = KafkaCollector(broken_publisher)
    with caplog.at_level(logging.ERROR):
        for _ in range(12):
            collector.emit(ToolCallAttempt(tool_name="t"))
        collector.emit(object())  # not an audit event at all
        collector.flush()  # broken_publisher.flush answers True
        KafkaCollector(Exploding()).flush()  # type: ignore[arg-type]
    assert collector.failures.count == 13
    logged = [r for r in caplog.records if "KafkaCollector failed" in r.getMessage()]
    assert len(logged) == 3  # the 1st and 10th emit failures, then the other collector's flush


def test_plain_data_edge_cases() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    class BrokenStr:
        def __str__(self) -> str:
            raise ValueError("no")

    assert plain_data(None) == {}
    assert plain_data([1, 2]) == {"value": [1, 2]}
    assert plain_data({"p": Point(1), (1, 2): "tuple key"}) == {
        "p": {"x": 1},
        "(1, 2)": "tuple key",
    }
    assert plain_data({"b": BrokenStr(), "ok": [1, {"n": None}]}) == {
        "b": "<unrepresentable BrokenStr>",
        "ok": [1, {"n": None}],
    }
    deep: dict[str, Any] = {}
    deep["self"] = deep  # a cycle ends as text, not as a RecursionError
    assert isinstance(plain_data({"d": deep, (0,): 0})["d"], dict)


def test_concurrent_emits_from_many_threads_all_arrive(recording: Any) -> None:
    collector = KafkaCollector(recording)

    def work(n: int) -> None:
        for i in range(200):
            collector.emit(ToolCallAttempt(tool_name=f"t{n}", arguments_preview=str(i)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(recording.events) == 800 and collector.failures.count == 0
