"""A Corail bus ships its events with one line: ``bus.subscribe("*", CorailForwarder(...))``.

Unit tests use the in-memory publisher; the last test goes through the real publisher and
broker into the persistence service, next to our own EventBus emitting the same events.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import types
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydantic
import pytest
from support.persistence import persistence, settings_for
from support.runtime import read_records, wait_until
from support.samples import SAMPLE_DATA

from agentstream.producer import EventBus, KafkaPublisher, event_scope
from agentstream.producer.adapters import CorailForwarder, corail_envelope
from agentstream.schemas import Event, RecordLocation, decode_event, decode_record, encode_event
from agentstream.schemas.payloads import PAYLOADS
from agentstream.schemas.settings import KafkaSettings


async def test_every_corail_event_type_arrives_typed_and_intact(
    corail: types.SimpleNamespace, recording: Any
) -> None:
    bus = corail.EventBus()
    bus.subscribe("*", CorailForwarder(recording, agent_id="pod-1"))
    sent = [
        corail.Event(type=t, data=copy.deepcopy(SAMPLE_DATA[t.value])) for t in corail.EventType
    ]
    for event in sent:
        await bus.emit(event)
    assert len(recording.events) == len(sent) == 39
    for theirs, ours in zip(sent, recording.events, strict=True):
        assert ours.type == theirs.type.value
        assert ours.timestamp == theirs.timestamp
        assert ours.data == theirs.data
        assert (ours.agent_id, ours.session_id, ours.user_id, ours.turn_id) == ("pod-1", "", "", "")
        wire = decode_event(encode_event(ours))  # validates the typed payload
        assert type(wire.payload) is PAYLOADS[theirs.type.value]


def test_empty_ids_are_filled_from_data_keys_then_the_scope_then_the_default(
    corail: types.SimpleNamespace,
) -> None:
    data = {"name": "calc", "args": {}, "conversation_id": "conv-9", "user": "u-9", "round": 2}
    keys = {"session_key": "conversation_id", "user_key": "user", "turn_key": "round"}
    event = corail.Event(type=corail.EventType.TOOL_CALLED, data=data)

    env = corail_envelope(event, agent_id="default", **keys)
    assert (env.session_id, env.user_id, env.turn_id, env.agent_id) == (
        "conv-9",
        "u-9",
        "2",
        "default",
    )
    assert env.data == data  # the keys stay in data

    with event_scope(session_id="s-scope", user_id="u-scope", agent_id="a-scope", turn_id="t"):
        env = corail_envelope(event, agent_id="default", **keys)
        assert (env.session_id, env.user_id, env.turn_id, env.agent_id) == (
            "conv-9",
            "u-9",
            "2",
            "a-scope",
        )
        env = corail_envelope(event, agent_id="default")  # no data keys configured
        assert (env.session_id, env.user_id, env.turn_id) == ("s-scope", "u-scope", "t")

    own = corail.Event(
        type=corail.EventType.TOOL_CALLED,
        agent_id="a-own",
        user_id="u-own",
        session_id="s-own",
        data=data,
    )
    with event_scope(session_id="s-scope", agent_id="a-scope"):
        env = corail_envelope(own, agent_id="default", **keys)
    assert (env.session_id, env.user_id, env.agent_id) == ("s-own", "u-own", "a-own")


async def test_the_scope_of_the_emitting_task_reaches_the_forwarder(
    corail: types.SimpleNamespace, recording: Any
) -> None:
    bus = corail.EventBus()
    bus.subscribe("*", CorailForwarder(recording))
    with event_scope(session_id="req-1", user_id="u-1"):
        await bus.emit(corail.Event(type=corail.EventType.MESSAGE_RECEIVED, data={"content": "hi"}))
        bus.emit_sync(corail.Event(type=corail.EventType.MESSAGE_RESPONSE, data={"content": "yo"}))
    await wait_until(lambda: len(recording.events) == 2, what="emit_sync forwarded")
    assert [(e.type, e.session_id, e.user_id) for e in recording.events] == [
        ("message.received", "req-1", "u-1"),
        ("message.response", "req-1", "u-1"),  # the task copied the context at emit_sync
    ]


async def test_a_failure_never_reaches_the_bus_and_is_counted(
    corail: types.SimpleNamespace, broken_publisher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bus = corail.EventBus()
    forwarder = CorailForwarder(broken_publisher)
    seen: list[Any] = []

    async def other(event: Any) -> None:
        seen.append(event)

    bus.subscribe("*", forwarder)
    bus.subscribe("*", other)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            await bus.emit(corail.Event(type=corail.EventType.AGENT_STARTED))
    assert len(seen) == 3
    assert (forwarder.failures.count, forwarder.forwarded) == (3, 0)
    assert not [r for r in caplog.records if r.name == "corail.events.bus"]  # never raised
    logged = [r for r in caplog.records if "CorailForwarder failed" in r.getMessage()]
    assert len(logged) == 1  # the 1st failure logged; the 10th, 100th... would be too


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Source:
    url: str
    score: float


class Doc(pydantic.BaseModel):
    title: str


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


def test_data_the_wire_cannot_carry_becomes_plain_values_nothing_dropped(
    corail: types.SimpleNamespace,
) -> None:
    when = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    data = {
        "name": "search",
        "output": Opaque(),
        "sources": [Source("https://a", 0.5), Doc(title="t")],
        "colour": Colour.RED,
        "stop_reason": corail.StopReason.MAX_ROUNDS,
        "tags": frozenset({"x"}),
        "path": Path("/tmp/x"),
        1: "non-string key",
        "when": when,
        "raw": b"\x00\x01",
    }
    env = corail_envelope(corail.Event(type=corail.EventType.TOOL_RESULT, data=data))
    assert env.data == {
        "name": "search",
        "output": "opaque!",
        "sources": [{"url": "https://a", "score": 0.5}, {"title": "t"}],
        "colour": 1,
        "stop_reason": "max_rounds",
        "tags": ["x"],
        "path": "/tmp/x",
        "1": "non-string key",
        "when": when,  # left to the encoder
        "raw": b"\x00\x01",
    }
    wire = decode_event(encode_event(env))
    assert wire.payload == PAYLOADS["tool.result"](
        name="search", output="opaque!", sources=env.data["sources"]
    )
    assert "non-string key" in data.values()  # the caller's dict is untouched


def test_odd_types_timestamps_and_shapes(corail: types.SimpleNamespace) -> None:
    class Custom(enum.Enum):
        THING = "Custom Thing"

    naive = datetime(2026, 1, 1, 12, 0, 0)
    env = corail_envelope(corail.Event(type=Custom.THING, timestamp=naive, data={"a": 1}))
    assert env.type == "unknown.custom_thing"
    assert env.data == {"a": 1, "corail_type": "Custom Thing"}
    assert env.timestamp == naive.replace(tzinfo=UTC)

    paris = timezone(timedelta(hours=2))
    env = corail_envelope(
        corail.Event(
            type=corail.EventType.AGENT_ERROR,
            timestamp=datetime(2026, 1, 1, 14, 0, tzinfo=paris),
            data={"error": "x"},
        )
    )
    assert env.timestamp == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert env.timestamp.utcoffset() == timedelta(0)

    as_dict = corail.Event(
        type=corail.EventType.TURN_STARTED, session_id="s", data={"round": 0}
    ).to_dict()
    env = corail_envelope(as_dict)  # Corail's to_dict() shape: type and timestamp as strings
    assert (env.type, env.session_id, env.data) == ("turn.started", "s", {"round": 0})
    assert env.timestamp == datetime.fromisoformat(as_dict["timestamp"])

    env = corail_envelope(corail.Event(type=corail.EventType.SESSION_ENDED, data=None))
    assert env.data == {}


async def test_corail_and_our_bus_decode_to_the_same_payloads_and_are_stored(
    corail: types.SimpleNamespace,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    unique_name: str,
) -> None:
    ours_sid, theirs_sid = f"{unique_name}-ours", f"{unique_name}-corail"
    samples = [(t.value, SAMPLE_DATA[t.value]) for t in corail.EventType]
    samples.append(("turn.ended", {"round": 3, "stop_reason": corail.StopReason.MAX_ROUNDS}))
    settings = settings_for(kafka_settings, f"sqlite:///{tmp_path}/events.db")
    async with persistence(settings) as (_, store):
        publisher = KafkaPublisher(kafka_settings)
        try:
            ours = EventBus(publisher, agent_id="corail-pod")
            with ours.scope(session_id=ours_sid, user_id="u-1"):
                for value, data in samples:
                    await ours.emit(Event(type=value, data=copy.deepcopy(data)))

            theirs = corail.EventBus()
            forwarder = CorailForwarder(
                publisher, agent_id="corail-pod", session_key="conversation_id", user_key="user"
            )
            theirs.subscribe("*", forwarder)
            sent = [
                corail.Event(
                    type=corail.EventType(value),
                    data={**copy.deepcopy(data), "conversation_id": theirs_sid, "user": "u-1"},
                )
                for value, data in samples
            ]
            for event in sent:
                await theirs.emit(event)
            assert forwarder.flush(30)
            assert (forwarder.forwarded, forwarder.failures.count) == (len(sent), 0)
        finally:
            publisher.close(10)

        routing = kafka_settings.routing()
        records = [
            *await read_records(kafka_settings, routing.events, 2 * (len(samples) - 1)),
            *await read_records(kafka_settings, routing.tokens, 2),
        ]
        arrived = sorted(
            (
                decode_record(
                    r.value, r.headers, where=RecordLocation(r.topic, r.partition, r.offset)
                )
                for r in records
            ),
            key=lambda e: e.seq,  # one publisher: its sequence is the publish order
        )
        assert len(arrived) == 2 * len(samples)
        mine = [e for e in arrived if e.session_id == ours_sid]
        their = [e for e in arrived if e.session_id == theirs_sid]
        assert [e.type for e in mine] == [e.type for e in their] == [v for v, _ in samples]
        for m, t, original in zip(mine, their, sent, strict=True):
            assert m.payload == t.payload, m.type  # the services cannot tell them apart
            assert (t.agent_id, t.user_id) == (m.agent_id, m.user_id) == ("corail-pod", "u-1")
            assert t.timestamp == original.timestamp
            assert t.data == {**m.data, "conversation_id": theirs_sid, "user": "u-1"}

        total = len(arrived)

        async def stored() -> bool:
            return await store.count() == total

        await wait_until(stored, what=f"{total} events stored")
        timeline = await store.timeline(theirs_sid)
        assert [e.event_id for e in timeline] == [e.event_id for e in their]
        assert [e.payload for e in timeline] == [e.payload for e in their]
