"""``agentstream tail`` and ``agentstream dlq`` as users run them."""

from __future__ import annotations

import asyncio
import json
import re
import sys

from support.produce import produce_events, produce_raw
from support.runtime import (
    first_line_then_close,
    read_records,
    running_consumer,
    service_settings,
    wait_until,
)
from support.samples import sample_event

from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import DeadLetter, Event, encode_event, header
from agentstream.schemas.settings import KafkaSettings


async def _cli(settings: KafkaSettings, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentstream.consumers.cli",
        *args,
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--topic-prefix",
        settings.topic_prefix,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_tail_filters_by_type_and_session(kafka_settings: KafkaSettings) -> None:
    other = Event(type="tool.called", session_id="other", data={"name": "x"})
    alone = Event(type="tool.called", data={"name": "y"})  # no session
    events = [sample_event("tool.called", 1), sample_event("message.received", 2), other, alone]
    for event in events:  # --since picks records by their time, here the events' (now)
        event.timestamp = other.timestamp
    await produce_events(kafka_settings, events)
    session = sample_event("tool.called").session_id
    # A time before 1970 is from the beginning (it was aiokafka's ValueError: negative time).
    for start in ("--from-beginning", "--since=10m", "--since=1969-07-20T20:17:00Z"):
        code, out = await _cli(
            kafka_settings, "tail", start, "--no-follow", "--json", "--type", "tool.*",
            "--session", session,
        )  # fmt: skip
        assert code == 0, out
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [(e["type"], e["seq"]) for e in lines] == [("tool.called", 1)], out
    # '' is the events without a session (it matched every session)
    code, out = await _cli(
        kafka_settings, "tail", "--from-beginning", "--no-follow", "--json", "--session", ""
    )
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["data"] for e in lines] == [{"name": "y"}], out
    # Following (the default) until --limit events were shown.
    code, out = await _cli(
        kafka_settings, "tail", "--since=5m", "--limit", "2", "--agent", "agent-weather"
    )
    assert code == 0, out
    shown = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["type"] for e in shown] == ["tool.called", "message.received"]


async def test_tail_from_the_end_shows_nothing_older(kafka_settings: KafkaSettings) -> None:
    """The embedded broker answers "the latest offset" with the last batch's base offset + 1:
    tail started there and showed the rest of that batch, old events, as new ones."""
    await produce_events(kafka_settings, [sample_event("tool.called", n) for n in range(5)])
    code, out = await _cli(kafka_settings, "tail", "--no-follow", "--json")
    assert code == 0, out
    assert [line for line in out.splitlines() if line.startswith("{")] == []


async def test_tail_says_where_an_undecodable_record_is(kafka_settings: KafkaSettings) -> None:
    events = kafka_settings.routing().events
    await produce_raw(kafka_settings, events, b"not json", key=b"s")
    # data that does not match its type's payload: the services take it, tail shows it too
    # (it was "# undecodable record")
    odd = Event(type="tool.called", session_id="s-odd", data={"args": {}})
    await produce_raw(kafka_settings, events, encode_event(odd), key=b"s")
    code, out = await _cli(kafka_settings, "tail", "--from-beginning", "--no-follow", "--json")
    assert code == 0, out
    assert "# undecodable record expected json encoding of an event" in out, out
    assert re.search(rf"\(at {re.escape(events)}\[\d+\]@0\)$", out, re.MULTILINE), out
    shown = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [e["event_id"] for e in shown] == [odd.event_id], out


async def test_dlq_list_show_and_replay(kafka_settings: KafkaSettings) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="refuser")
    seen: list[Event] = []

    @consumer.subscribe("tool.called")
    async def refuse(event: Event) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise DeadLetter("bad arguments")

    async with running_consumer(consumer):
        await produce_events(settings, [sample_event("tool.called", 7)])
        await wait_until(lambda: len(seen) == 1)
        [letter] = await read_records(settings, settings.routing().dlq, 1)
        code, out = await _cli(settings, "dlq", "list", "--service", "refuser")
        assert code == 0, out
        rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 6]
        assert rows[0][0] == "ref"
        [row] = rows[1:]
        ref = row[0]
        assert row[2] == "refuser"
        assert row[4] == "tool.called"
        assert row[5] == f"{settings.routing().events}[0]@0"
        assert row[6] == "bad arguments"
        code, out = await _cli(settings, "dlq", "show", ref)
        assert code == 0, out
        assert "agentstream.errors.reason: bad arguments" in out
        assert '"seq": 7' in out
        code, out = await _cli(settings, "dlq", "replay", "--offset", ref)
        assert code == 0, out
        assert "1 dead letter(s) replayed" in out
        await wait_until(lambda: len(seen) == 2, what="replayed event handled again")
        assert f"for group {consumer.group_id}" in out
    records = await read_records(settings, settings.routing().events, 2)
    original, replayed = sorted(records, key=lambda r: r.offset)
    # the original's time travels with it, as in Kafka Connect's dead letters
    assert original.timestamp == letter.timestamp == replayed.timestamp
    assert header(replayed.headers, "agentstream.replayed.from") is not None
    assert replayed.headers[0] == ("agentstream.replayed.for", consumer.group_id.encode())
    assert not any(k.startswith("agentstream.errors.") for k, _ in replayed.headers)
    assert seen[1].event_id == seen[0].event_id

    # Another group handled the original: the replay is not for it, so it is skipped.
    bystander = EventConsumer(settings, service="bystander")
    handled: list[Event] = []

    @bystander.subscribe("tool.called")
    async def count(event: Event) -> None:
        handled.append(event)

    def skipped() -> float:
        labels = {"service": "bystander", "type": "tool.called", "outcome": "skipped"}
        return bystander.registry.get_sample_value("agentstream_consumer_records_total", labels)

    async with running_consumer(bystander):
        await wait_until(lambda: skipped() == 1, what="the replay skipped by another group")
    assert [e.seq for e in handled] == [7]
    code, out = await _cli(settings, "tail", "--from-beginning", "--no-follow", "--json")
    assert code == 0, out
    shown = [json.loads(line)["_kafka"] for line in out.splitlines() if line.startswith("{")]
    assert [k.get("replayed_for") for k in shown] == [None, consumer.group_id]  # tail marks it


async def test_reading_a_prefix_without_topics_says_so(kafka_settings: KafkaSettings) -> None:
    """A mistyped prefix read nothing (tail: forever) and exited 0."""
    typo = kafka_settings.model_copy(update={"topic_prefix": kafka_settings.topic_prefix + "x"})
    for args in (("tail", "--no-follow"), ("dlq", "list")):
        code, out = await _cli(typo, *args)
        assert code == 2, out
        assert "no such topic exists (check --topic-prefix" in out, out
        assert f"{typo.topic_prefix}.events" in out or f"{typo.topic_prefix}.dlq" in out


async def test_dlq_refs_that_cannot_be_are_usage_errors(kafka_settings: KafkaSettings) -> None:
    for args in (("replay", "--offset", "3:x"), ("show", "3-1")):
        code, out = await _cli(kafka_settings, "dlq", *args)
        assert code == 2, out
        assert "expected PARTITION:OFFSET as `dlq list` prints it (3:17), got" in out, out


async def test_dlq_show_reads_the_one_letter_asked_for(kafka_settings: KafkaSettings) -> None:
    """`dlq show` and `dlq replay --offset` read the letter where it is; they read the whole
    DLQ into memory before (a DLQ of millions after an incident)."""
    dlq = kafka_settings.routing().dlq
    for i in range(3):
        await produce_raw(kafka_settings, dlq, b"letter %d" % i, partition=1, headers=[
            ("agentstream.errors.reason", b"reason %d" % i)
        ])  # fmt: skip
    code, out = await _cli(kafka_settings, "dlq", "show", "1:2")
    assert code == 0, out
    assert "dead letter 1:2" in out and "agentstream.errors.reason: reason 2" in out, out
    code, out = await _cli(kafka_settings, "dlq", "show", "1:3")  # past the end
    assert code == 1, out
    assert "no dead letter 1:3 (see `agentstream dlq list`)" in out, out
    code, out = await _cli(kafka_settings, "dlq", "replay", "--offset", "9:0")
    assert code == 2, out
    assert f"expected partitions [9] of topic {dlq} to read, the topic has 4 partitions" in out


async def test_a_record_another_producer_wrote_to_the_dlq_is_listed_not_a_traceback(
    kafka_settings: KafkaSettings,
) -> None:
    # a non-integer origin header made `dlq list` and `dlq show` a ValueError traceback for
    # the DLQ's whole retention; replaying a record without an origin sent it to topic ''
    dlq = kafka_settings.routing().dlq
    await produce_raw(kafka_settings, dlq, b"not ours", partition=0, headers=[
        ("agentstream.errors.partition", b"abc"), ("agentstream.errors.reason", b"x")
    ])  # fmt: skip
    code, out = await _cli(kafka_settings, "dlq", "list")
    assert code == 0, out
    assert "0:0" in out and "(no origin: not a dead letter agentstream wrote)" in out, out
    code, out = await _cli(kafka_settings, "dlq", "show", "0:0")
    assert code == 0 and "dead letter 0:0" in out, out
    code, out = await _cli(kafka_settings, "dlq", "replay", "--offset", "0:0")
    assert code == 2, out
    assert "expected dead letters to replay, got 0:0: no origin (not a dead letter" in out, out
    code, out = await _cli(kafka_settings, "dlq", "replay", "--all")
    assert code == 0 and "0 dead letter(s) replayed" in out, out
    # a letter sent without its value (too large for the DLQ) cannot be replayed either
    await produce_raw(kafka_settings, dlq, b"", partition=1, headers=[
        ("agentstream.errors.topic", kafka_settings.routing().events.encode()),
        ("agentstream.errors.partition", b"2"), ("agentstream.errors.offset", b"9"),
        ("agentstream.errors.value.dropped", b"3000329"),
    ])  # fmt: skip
    code, out = await _cli(kafka_settings, "dlq", "replay", "--offset", "1:0")
    assert code == 2, out
    assert (
        "1:0: sent without its value (3000329 bytes, too large for the dead-letter topic): "
        f"the original is at {kafka_settings.routing().events}[2]@9"
    ) in out, out


async def test_tail_into_a_reader_that_stops_early_ends_quietly(
    kafka_settings: KafkaSettings,
) -> None:
    """`agentstream tail | head -1`: the closed pipe ends tail with 141 (128 + SIGPIPE), as
    Unix tools end, without a traceback; aiokafka's notices stay out of a reading command."""
    await produce_events(kafka_settings, [sample_event("tool.called", i) for i in range(300)])

    code, first, err = await first_line_then_close(
        "tail", "--from-beginning", "--no-follow", "--json", "--bootstrap-servers",
        kafka_settings.bootstrap_servers, "--topic-prefix", kafka_settings.topic_prefix,
    )  # fmt: skip
    assert json.loads(first)["type"] == "tool.called"
    assert code == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert "aiokafka" not in err, err


async def test_dlq_list_into_a_reader_that_stops_early_ends_quietly(
    kafka_settings: KafkaSettings,
) -> None:
    """`agentstream dlq list | head -1`: the reader generator was left to the event loop's
    shutdown, which closed it while it ran ("aclose(): asynchronous generator is already
    running", a traceback after the line)."""
    dlq = kafka_settings.routing().dlq
    for i in range(50):  # 4 KB lines, 200 KB in all: more than a pipe holds, so the pipe breaks
        headers = [("agentstream.errors.reason", b"r" * 4_000 + b" %d" % i)]
        await produce_raw(kafka_settings, dlq, b"letter %d" % i, partition=i % 4, headers=headers)
    for _ in range(3):  # the race showed 2 times out of 3
        code, first, err = await first_line_then_close(
            "dlq", "list", "--bootstrap-servers", kafka_settings.bootstrap_servers,
            "--topic-prefix", kafka_settings.topic_prefix,
        )  # fmt: skip
        assert first.startswith(b"ref\t"), first
        assert code == 141, err
        assert "Traceback" not in err and "aclose" not in err, err
