"""``agentstream db``, ``sessions`` and ``replay`` against real stores (and Kafka for
``replay --to-topic``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support.runtime import first_line_then_close, read_records

from agentstream.consumers.cli import build_parser
from agentstream.consumers.persistence import StoreError, StoreUnavailableError, open_store
from agentstream.schemas import Event, decode_event, decode_record
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings


async def cli(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    result: Any = await args.func(args)
    return int(result or 0)


def session(sid: str, start: datetime, count: int, agent: str, stop: str | None) -> list[Event]:
    events = [
        Event(
            type="tool.called",
            timestamp=start + timedelta(seconds=i),
            session_id=sid,
            agent_id=agent,
            seq=i,
            data={"name": "search", "args": {"q": i}},
        )
        for i in range(count)
    ]
    if stop is not None:
        events.append(
            Event(
                type="turn.ended",
                timestamp=start + timedelta(seconds=count),
                session_id=sid,
                agent_id=agent,
                seq=count,
                data={"round": 1, "stop_reason": stop},
            )
        )
    return events


NOW = datetime.now(UTC).replace(microsecond=0)
RECENT = session("sess-recent", NOW - timedelta(minutes=10), 4, "agent-a", "end_turn")
OLD = session("sess-old", NOW - timedelta(days=3), 125, "agent-b", None)


@pytest.fixture
async def filled(store_url: str) -> str:
    assert await cli("db", "migrate", "--store", store_url) == 0
    async with open_store(store_url) as store:
        await store.write_batch(OLD + RECENT)
    return store_url


async def test_db_migrate_and_status(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("db", "migrate", "--store", store_url) == 0
    assert await cli("db", "migrate", "--store", store_url) == 0
    assert await cli("db", "status", "--store", store_url) == 0
    out = capsys.readouterr().out.splitlines()
    assert "applied migrations 1" in out[0]
    assert "already at version 1" in out[1]
    assert "schema version 1 (up to date), 0 events" in out[2]


async def test_sessions_lines(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("sessions", "--store", filled) == 0
    header, recent, old = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["SESSION", "AGENT", "EVENTS", "DURATION"]
    assert recent.split()[:4] == ["sess-recent", "agent-a", "5", "4.0s"]
    assert recent.endswith("end_turn")
    assert old.split()[:4] == ["sess-old", "agent-b", "125", "2m04s"]
    assert old.endswith("-")

    assert await cli("sessions", "--store", filled, "--since", "1h") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["sess-recent"]
    assert await cli("sessions", "--store", filled, "--agent", "agent-b", "--json") == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line) | {"first": None, "last": None} == {
        "session_id": "sess-old",
        "agent_id": "agent-b",
        "events": 125,
        "first": None,
        "last": None,
        "duration_s": 124.0,
        "stop_reason": None,
    }
    assert await cli("sessions", "--store", filled, "--agent", "nobody") == 0
    assert capsys.readouterr().out.strip() == "no sessions"


async def test_replay_prints_the_timeline(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("replay", "sess-recent", "--store", filled) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["tool.called"] * 4 + ["turn.ended"]
    assert '"stop_reason":"end_turn"' in lines[-1]

    assert await cli("replay", "sess-old", "--json", "--store", filled) == 0
    replayed = [Event(**json.loads(line)) for line in capsys.readouterr().out.splitlines()]
    assert [e.event_id for e in replayed] == [e.event_id for e in OLD]
    assert await cli("replay", "nope", "--store", filled) == 1
    assert "no events stored for session 'nope'" in capsys.readouterr().err


async def test_readers_refuse_an_unmigrated_or_missing_store(tmp_path: Any) -> None:
    empty = f"sqlite:///{tmp_path}/empty.db"
    async with open_store(empty):
        pass  # creates the file, no tables
    with pytest.raises(StoreError, match="agentstream db migrate"):
        await cli("sessions", "--store", empty)
    with pytest.raises(StoreError, match="found no such file"):
        await cli("replay", "x", "--store", f"sqlite:///{tmp_path}/missing.db")
    assert await cli("db", "status", "--store", empty) == 1


async def test_a_store_in_a_missing_directory_is_a_setting_to_fix_not_an_outage(
    tmp_path: Any,
) -> None:
    """The persistence service waits out an unavailable store; a directory that does not
    exist is not one: it fails at once and says which."""
    store = open_store(f"sqlite:///{tmp_path}/missing/events.db")
    with pytest.raises(StoreError, match=f"{tmp_path}/missing does not") as raised:
        await store.open()
    assert not isinstance(raised.value, StoreUnavailableError)
    with pytest.raises(StoreError, match="missing does not"):
        await cli("db", "migrate", "--store", f"sqlite:///{tmp_path}/missing/events.db")
    # a directory where the file should be: SQLite said "disk I/O error" (an outage)
    with pytest.raises(StoreError, match="found a directory") as raised:
        await cli("db", "status", "--store", f"sqlite:///{tmp_path}/")
    assert not isinstance(raised.value, StoreUnavailableError)


async def test_replay_to_topic_keeps_ids_keys_and_order(
    filled: str, kafka_settings: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = kafka_settings.routing().events
    code = await cli(
        "replay",
        "sess-old",
        "--store",
        filled,
        "--to-topic",
        topic,
        "--bootstrap-servers",
        kafka_settings.bootstrap_servers,
    )
    assert code == 0
    assert f"published 125 events of session sess-old to {topic}" in capsys.readouterr().out
    records = await read_records(kafka_settings, topic, 125)
    assert {r.key for r in records} == {b"sess-old"}
    assert len({r.partition for r in records}) == 1
    back = [decode_record(r.value, r.headers) for r in sorted(records, key=lambda r: r.offset)]
    assert back == OLD
    # each record timed as its event: services timing events by their records keep the times
    stamps = [r.timestamp for r in sorted(records, key=lambda r: r.offset)]
    assert stamps == [int(e.timestamp.timestamp() * 1000) for e in OLD]


async def test_replay_to_topic_for_one_group(
    filled: str, kafka_settings: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-trace one session after fixing the tracing service, say: the records are addressed
    to that group, so the others skip them (see test_tools' dlq replay)."""
    topic = kafka_settings.routing().events
    args = ("replay", "sess-old", "--store", filled, "--to-topic", topic)
    servers = ("--bootstrap-servers", kafka_settings.bootstrap_servers)
    assert await cli(*args, "--for-group", "agentstream.tracing", *servers) == 0
    assert "to " + topic + " for group agentstream.tracing" in capsys.readouterr().out
    records = await read_records(kafka_settings, topic, 125)
    assert {r.headers[0] for r in records} == {("agentstream.replayed.for", b"agentstream.tracing")}
    assert [decode_record(r.value, r.headers) for r in sorted(records, key=lambda r: r.offset)] == (
        OLD
    )
    with pytest.raises(ConfigurationError, match="expected --for-group with --to-topic"):
        await cli("replay", "sess-old", "--store", filled, "--for-group", "g")


async def test_replay_into_a_reader_that_stops_early_ends_as_every_command(
    store_url: str,
) -> None:
    """`agentstream replay S | head -1` exited 0 where tail, dlq, topics... exit 141."""
    assert await cli("db", "migrate", "--store", store_url) == 0
    long = [
        Event(type="message.response", session_id="long", seq=i, data={"content": "x" * 500})
        for i in range(2_000)  # a megabyte: more than a pipe holds
    ]
    async with open_store(store_url) as store:
        await store.write_batch(long)

    code, first, err = await first_line_then_close("replay", "long", "--json", "--store", store_url)
    assert json.loads(first)["session_id"] == "long"
    assert code == 141, err
    assert "Traceback" not in err, err


async def test_replay_keeps_the_fields_a_newer_producer_added(
    store_url: str, kafka_settings: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store keeps them (the docs promise it), but `replay --json` printed this version's
    Event, and `--to-topic` re-encoded it: a store fed from that topic lost them for good."""
    assert await cli("db", "migrate", "--store", store_url) == 0
    newer = (
        '{"schema_version":2,"event_id":"019a3f2e-8c00-7000-8000-00000000abcd",'
        '"type":"tool.called","timestamp":"2026-11-01T12:00:00Z","session_id":"sess-v2",'
        '"trace_ctx":{"traceparent":"00-ab-cd-01"},"priority":3,'
        '"data":{"name":"search","args":{},"added":true}}'
    )
    event = decode_event(newer.encode(), validate=False)
    async with open_store(store_url) as store:
        await store.write_batch([event], None, [newer])
    assert await cli("replay", "sess-v2", "--json", "--store", store_url) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["trace_ctx"] == {"traceparent": "00-ab-cd-01"} and printed["priority"] == 3
    assert printed["data"]["added"] is True
    topic = kafka_settings.routing().events
    servers = ("--bootstrap-servers", kafka_settings.bootstrap_servers)
    assert await cli("replay", "sess-v2", "--store", store_url, "--to-topic", topic, *servers) == 0
    [record] = await read_records(kafka_settings, topic, 1)
    sent = json.loads(record.value)
    assert (sent["trace_ctx"], sent["priority"], sent["schema_version"]) == (
        {"traceparent": "00-ab-cd-01"},
        3,
        2,
    )
    assert decode_record(record.value, record.headers).event_id == event.event_id
