"""Offsets, backoff and subscription tables, without a broker."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from agentstream.consumers.runtime import Record
from agentstream.consumers.runtime.offsets import PartitionOffsets
from agentstream.consumers.runtime.retry import backoff_seconds
from agentstream.consumers.runtime.subscriptions import (
    SubscriptionTable,
    make_batch_subscription,
    make_subscription,
    topic_restriction,
)
from agentstream.schemas import Event, EventType
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.routing import Routing


def test_committable_is_first_unfinished_record() -> None:
    offsets = PartitionOffsets()
    assert offsets.committable() is None
    for offset in (10, 11, 12, 13):
        offsets.received(offset)
    assert offsets.committable() == 10
    offsets.release(11)
    offsets.release(12)
    assert offsets.committable() == 10, "later records finished, 10 did not"
    offsets.release(10)
    assert offsets.committable() == 13
    offsets.release(13)
    assert offsets.committable() == 14
    assert offsets.outstanding == 0


def test_held_record_blocks_until_every_hold_is_released() -> None:
    offsets = PartitionOffsets()
    offsets.received(0)
    offsets.hold(0, 2)  # two batch handlers buffer it
    offsets.release(0)  # the worker is done with it
    offsets.release(0)
    assert offsets.committable() == 0
    offsets.release(0)
    assert offsets.committable() == 1


def test_offsets_seen_before_are_refused() -> None:
    offsets = PartitionOffsets()
    assert offsets.received(5)
    assert not offsets.received(3)
    assert not offsets.received(5)
    assert offsets.committable() == 5
    offsets.release(5)
    assert offsets.committable() == 6


def test_gaps_in_offsets_are_fine() -> None:  # compacted topics, transaction markers
    offsets = PartitionOffsets()
    offsets.received(3)
    offsets.received(7)
    offsets.release(3)
    assert offsets.committable() == 7
    offsets.release(7)
    assert offsets.committable() == 8


class _Raw:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def test_a_fetched_chunk_is_tracked_in_one_pass_and_redeliveries_refused() -> None:
    offsets = PartitionOffsets()
    new = offsets.received_all([_Raw(o) for o in (4, 5, 7)])
    assert [r.offset for r in new] == [4, 5, 7]
    assert offsets.first == 4 and offsets.outstanding == 3
    new = offsets.received_all([_Raw(o) for o in (6, 7, 8)])
    assert [r.offset for r in new] == [8], "6 and 7 are behind the last received"
    offsets.hold(5)
    offsets.release_all([4, 5, 7])
    assert offsets.committable() == 5, "5 still has a batch handler's hold"
    offsets.release_all([5, 8])
    assert offsets.committable() == 9
    assert offsets.received_all([]) == []
    assert offsets.committable() == 9


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    rng = random.Random(1)
    for attempt, ceiling in ((1, 0.2), (2, 0.4), (3, 0.8), (10, 5.0), (200, 5.0)):
        delay = backoff_seconds(attempt, 200, 5_000, rng)
        assert ceiling / 2 <= delay <= ceiling
    with pytest.raises(ValueError, match=">= 1"):
        backoff_seconds(0, 200, 5_000)


async def _handler(event: Event) -> None:
    return None


async def _with_record(event: Event, record: object) -> None:
    return None


async def _batch(records: list[Record]) -> None:
    return None


def test_subscription_table_matches_patterns_and_types() -> None:
    table = SubscriptionTable()
    table.add(make_subscription("tool.*", _handler, None))
    table.add(make_subscription(EventType.LLM_TOKEN, _with_record, None))
    table.add(make_batch_subscription("*", _batch, "sink", 10, 5))
    singles, batches = table.for_type("p.events", "tool.called")
    assert [s.name for s in singles] == ["_handler"]
    assert [b.name for b in batches] == ["sink"]
    singles, _ = table.for_type("p.tokens", "llm.token")
    assert singles[0].takes_record
    assert table.for_type("p.events", "anything.else") == ((), (batches[0],))
    assert table.patterns() == ("tool.*", "llm.token", "*")


def test_topic_restriction_narrows_fetching_and_delivery() -> None:
    routing = Routing("p")
    table = SubscriptionTable()
    everything = topic_restriction(routing, "*", ["events"])
    alerts = topic_restriction(routing, "budget.*", ("alerts",))
    assert everything == frozenset({"p.events"})
    table.add(make_batch_subscription("*", _batch, "sink", 10, 5, everything))
    table.add(make_subscription("budget.*", _handler, "alerts", alerts))
    assert table.topics(routing) == frozenset({"p.events", "p.alerts"})
    singles, batches = table.for_type("p.alerts", "budget.warning")
    assert [s.name for s in singles] == ["alerts"] and not batches
    singles, batches = table.for_type("p.events", "budget.warning")
    assert not singles and [b.name for b in batches] == ["sink"]
    assert table.for_type("p.tokens", "llm.token") == ((), ())
    assert table.for_type("p.alerts", "tool.called") == ((), ())
    unrestricted = SubscriptionTable()
    unrestricted.add(make_subscription("*", _handler, None, topic_restriction(routing, "*", None)))
    assert unrestricted.topics(routing) == frozenset(
        {"p.events", "p.tokens", "p.alerts", "p.control"}
    )


def test_handler_timeouts_must_be_positive() -> None:
    assert make_subscription("*", _handler, None, None, 250).timeout_s == 0.25
    assert make_subscription("*", _handler, None).timeout_s is None
    with pytest.raises(ConfigurationError, match="timeout_ms > 0"):
        make_batch_subscription("*", _batch, "sink", 10, 5, None, 0)


def test_topic_restriction_refuses_unknown_kinds_and_impossible_topics() -> None:
    routing = Routing("p")
    with pytest.raises(ConfigurationError, match="topic kinds"):
        topic_restriction(routing, "*", ["events", "audit"])
    with pytest.raises(ConfigurationError, match="topic kinds"):
        topic_restriction(routing, "*", [])
    with pytest.raises(ConfigurationError, match=r"can hold .tool\.called."):
        topic_restriction(routing, "tool.called", ["tokens"])


def test_subscriptions_need_unique_names_and_async_handlers() -> None:
    table = SubscriptionTable()
    table.add(make_subscription("tool.*", _handler, None))
    with pytest.raises(ConfigurationError, match="unique handler name"):
        table.add(make_subscription("llm.*", _handler, None))

    def sync(event: Event) -> None:
        return None

    with pytest.raises(ConfigurationError, match="async handler"):
        make_subscription("*", sync, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"got 'Tool\.Called'"):  # would get nothing
        make_subscription("Tool.Called", _handler, None)


def test_tail_view_lines_and_durations() -> None:
    from agentstream.consumers.runtime.since import parse_since
    from agentstream.consumers.runtime.tailview import human_line, json_line, rich_line

    now = datetime(2026, 11, 1, 12, tzinfo=UTC)
    for text, seconds in (("90s", 90), ("10m", 600), ("1.5H", 5400), ("2d", 172_800)):
        assert parse_since(text, now) == now - timedelta(seconds=seconds)
    assert parse_since(" 1w ", now) == now - timedelta(weeks=1)
    assert parse_since("90m", now) == datetime(2026, 11, 1, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-01T09:00:00Z") == datetime(2026, 11, 1, 9, tzinfo=UTC)
    assert parse_since("2026-11-01T09:00:00") == datetime(2026, 11, 1, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"a duration .* or an ISO time"):
        parse_since("yesterday")
    for too_far in ("99999999w", "9999999999999999999999d"):  # an OverflowError traceback
        with pytest.raises(ValueError, match="back to year 1 at most"):
            parse_since(too_far, now)
    event = Event(
        type="tool.error",
        session_id="5f0c9e6a1b2d4c3e",
        agent_id="agent-7",
        data={"name": "search", "error": "timeout\nafter 30 s", "attempt": 2, "empty": ""},
    )
    plain = human_line(event, colour=False)
    assert "tool.error" in plain
    assert " 5f0c9e6a " in plain
    assert "agent-7" in plain
    assert "name=search error=timeout after 30 s attempt=2" in plain
    assert "empty" not in plain
    coloured = human_line(event, colour=True)
    assert "\x1b[1;31m" in coloured, "errors stand out"
    text = rich_line(event)
    assert text.plain == plain
    assert any(str(span.style) == "bold red" for span in text.spans)
    assert '"_kafka": {"topic": "t", "partition": 1, "offset": 2}' in json_line(
        event, topic="t", partition=1, offset=2
    )


def test_a_tail_type_that_can_match_nothing_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agentstream.consumers.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["tail", "--type", "tool.*"]).type == "tool.*"
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["tail", "--type", "Tool.Called"])
    assert exited.value.code == 2
    assert "argument --type: expected an event type" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["tail"], ["sessions"]])
def test_a_bad_since_is_a_usage_error_that_says_what_is_expected(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from agentstream.consumers.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([*command, "--since", "2h"]).since.tzinfo is UTC
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([*command, "--since", "yesterday"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"agentstream {command[0]}: error: argument --since:" in err
    assert "a duration (90s, 15m, 1h, 2d, 1w) or an ISO time, got 'yesterday'" in err


def test_dead_letter_headers_follow_the_connect_convention() -> None:
    from agentstream.consumers.runtime.deadletter import Failure, error_headers, original_headers

    try:
        raise ValueError("x" * 5000)
    except ValueError as exc:
        error = exc
    headers = dict(
        error_headers(
            topic="p.events",
            partition=3,
            offset=42,
            service="budget",
            group_id="p.budget",
            failure=Failure("on_tool", "retries exhausted", error, 4),
            now_ms=1700000000000,
        )
    )
    assert headers["agentstream.errors.topic"] == b"p.events"
    assert headers["agentstream.errors.partition"] == b"3"
    assert headers["agentstream.errors.offset"] == b"42"
    assert headers["agentstream.errors.exception.class.name"] == b"builtins.ValueError"
    assert len(headers["agentstream.errors.exception.message"]) <= 2048
    assert b"Traceback" in headers["agentstream.errors.exception.stacktrace"]
    assert headers["agentstream.errors.timestamp"] == b"1700000000000"
    assert headers["agentstream.errors.attempts"] == b"4"
    kept = original_headers([("ce_type", b"a.b"), ("agentstream.errors.topic", b"old")])
    assert kept == [("ce_type", b"a.b")]


def test_the_largest_error_headers_fit_the_dead_letter_headroom() -> None:
    """``schemas.admin.DEAD_LETTER_HEADROOM`` (how much larger the DLQ and the services'
    producer accept records) must hold the error headers at their cut lengths, in 4-byte
    UTF-8 characters: the two numbers live apart (schemas cannot import the runtime)."""
    from agentstream.consumers.runtime.deadletter import Failure, error_headers
    from agentstream.schemas.admin import DEAD_LETTER_HEADROOM

    wide = "\U0001f600" * 20_000  # past every cut
    try:
        raise ValueError(wide)
    except ValueError as exc:
        error = exc
    headers = error_headers(
        topic="t" * 249,  # Kafka's longest topic name
        partition=2**31 - 1,
        offset=2**63 - 1,
        service="s" * 100,
        group_id="g" * 249,
        failure=Failure("h" * 100, wide, error, 10**6),
    )
    record_overhead = 10 * len(headers)  # each header's varint lengths, generously
    size = sum(len(name.encode()) + len(value) for name, value in headers) + record_overhead
    assert size <= DEAD_LETTER_HEADROOM, f"{size} bytes of error headers"


@pytest.mark.parametrize(("no_color", "coloured"), [("1", False), ("", True)])
def test_tail_without_rich_honours_no_color(
    no_color: str,
    coloured: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """rich (the services extra) honours NO_COLOR; the plain printer without it did not."""
    import sys

    from agentstream.consumers.cli.tail import _printer

    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails: not installed
    monkeypatch.setenv("NO_COLOR", no_color)
    _printer(as_json=False)(Event(type="tool.error", data={"name": "x"}), None)
    assert ("\x1b[" in capsys.readouterr().out) is coloured
