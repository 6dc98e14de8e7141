"""Poison records, failing handlers, batches and backpressure against the real broker."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiokafka import AIOKafkaProducer
from support.produce import produce_events, produce_raw
from support.runtime import (
    read_records,
    recording_consumer,
    running_consumer,
    service_settings,
    wait_until,
)
from support.samples import sample_event

from agentstream.consumers.runtime import EventConsumer, Record
from agentstream.consumers.runtime.consumer import PAUSED_POLL_TIMEOUT_MS, POLL_TIMEOUT_MS
from agentstream.schemas import DeadLetter, Event, encode_event, event_headers, header
from agentstream.schemas.settings import KafkaSettings


async def test_poison_records_and_failing_handlers_land_in_the_dlq(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings, handler_retries=2)
    consumer = EventConsumer(settings, service="poisoned")
    ok: list[str] = []
    attempts: list[str] = []

    @consumer.subscribe("*")
    async def fine(event: Event) -> None:
        ok.append(event.event_id)

    @consumer.subscribe("tool.error", name="always-raises")
    async def broken(event: Event) -> None:
        attempts.append(event.event_id)
        raise RuntimeError(f"cannot handle {event.event_id}")

    topic = settings.routing().events
    key = b"session-poison"
    good = sample_event("tool.called", 1)
    failing = sample_event("tool.error", 2)
    wrong_tag = encode_event(sample_event("tool.result", 3)).replace(
        b'"tool.result"', b'"Not A Type!"'
    )
    after = sample_event("message.received", 4)
    # ce_type announces one type, the envelope holds another: dead-lettered, not handled.
    mislabelled = sample_event("tool.result", 5)
    mislabelled_headers = [
        (name, b"tool.called" if name == "ce_type" else value)
        for name, value in event_headers(mislabelled)
    ]
    # No headers at all (another producer): typed by its envelope, and handled.
    bare = sample_event("llm.call.started", 6)
    # Nested past msgspec's (Python's) recursion limit: a RecursionError, not a DecodeError.
    deep = sample_event("tool.called", 7)
    deep.data = {"name": "t", "args": "HOLE"}
    too_deep = encode_event(deep).replace(b'"HOLE"', b"[" * 50_000 + b"]" * 50_000)
    # An empty event_id: every such event would be taken for the first one's copy.
    anonymous = sample_event("tool.called", 8)
    no_id = encode_event(anonymous).replace(anonymous.event_id.encode(), b"")
    async with running_consumer(consumer):
        # Random bytes (after a NUL, so they never happen to start a JSON value).
        await produce_raw(settings, topic, b"\x00\x9f" + os.urandom(62), key=key)
        await produce_raw(
            settings, topic, wrong_tag, key=key, headers=[("content-type", b"application/json")]
        )
        await produce_raw(
            settings, topic, encode_event(failing), key=key, headers=event_headers(failing)
        )
        await produce_raw(
            settings, topic, encode_event(mislabelled), key=key, headers=mislabelled_headers
        )
        await produce_raw(settings, topic, encode_event(bare), key=key)
        await produce_raw(settings, topic, too_deep, key=key, headers=event_headers(deep))
        await produce_raw(settings, topic, no_id, key=key, headers=event_headers(anonymous))
        await produce_raw(
            settings, topic, encode_event(after), key=key, headers=event_headers(after)
        )
        await produce_events(settings, [good])
        await wait_until(lambda: after.event_id in ok and good.event_id in ok)
        letters = await read_records(settings, settings.routing().dlq, 6)
    assert bare.event_id in ok and mislabelled.event_id not in ok
    assert attempts == [failing.event_id] * 3  # 1 + handler_retries
    assert ok.count(failing.event_id) == 1, "the other handler of the failing event still ran"
    handlers = sorted(dict(r.headers)["agentstream.errors.handler"] for r in letters)
    assert handlers == [b"<decode>"] * 5 + [b"always-raises"]
    for letter in letters:
        headers = dict(letter.headers)
        assert letter.key == key
        assert headers["agentstream.errors.topic"] == topic.encode()
        assert headers["agentstream.errors.service"] == b"poisoned"
        assert int(headers["agentstream.errors.timestamp"]) > 0
        assert headers["agentstream.errors.exception.stacktrace"]
    raised = next(
        r for r in letters if dict(r.headers)["agentstream.errors.handler"] == b"always-raises"
    )
    headers = dict(raised.headers)
    assert raised.value == encode_event(failing)
    assert headers["ce_type"] == b"tool.error", "original headers are kept"
    assert headers["agentstream.errors.exception.class.name"] == b"builtins.RuntimeError"
    assert (
        headers["agentstream.errors.exception.message"]
        == f"cannot handle {failing.event_id}".encode()
    )
    assert headers["agentstream.errors.attempts"] == b"3"
    assert headers["agentstream.errors.reason"] == b"retries exhausted"
    classes = sorted(
        dict(r.headers)["agentstream.errors.exception.class.name"]
        for r in letters
        if dict(r.headers)["agentstream.errors.handler"] == b"<decode>"
    )
    assert classes == [
        b"agentstream.schemas.errors.EventTypeError",
        b"agentstream.schemas.errors.EventTypeError",
        b"agentstream.schemas.errors.MalformedRecordError",
        b"agentstream.schemas.errors.MalformedRecordError",
        b"agentstream.schemas.errors.PayloadValidationError",
    ]
    for letter in letters:  # each message says where its record was
        headers = dict(letter.headers)
        where = f"(at {topic}[{letter.partition}]@{int(headers['agentstream.errors.offset'])})"
        if headers["agentstream.errors.handler"] == b"<decode>":
            assert headers["agentstream.errors.exception.message"].endswith(where.encode())
    empty = next(r for r in letters if r.value == no_id)
    assert b"`$.event_id`" in dict(empty.headers)["agentstream.errors.exception.message"]
    mismatch = next(r for r in letters if r.value == encode_event(mislabelled))
    message = dict(mismatch.headers)["agentstream.errors.exception.message"]
    assert b"ce_type='tool.called'" in message and b"'tool.result'" in message
    sample = consumer.registry.get_sample_value
    labels = {"service": "poisoned", "type": "tool.error"}
    assert sample("agentstream_consumer_records_total", {**labels, "outcome": "dead_lettered"}) == 1
    assert sample("agentstream_consumer_records_total", {**labels, "outcome": "failed"}) == 1


async def test_a_record_at_the_size_limit_is_dead_lettered_with_its_error_headers(
    kafka_settings: KafkaSettings,
) -> None:
    """The dead letter is the record plus error headers: for a record the source topic took
    near max_request_size it was refused as too large at every retry, the partition wedged."""
    settings = service_settings(kafka_settings)
    consumer, handled = recording_consumer(settings, "big", "*")

    topic = settings.routing().events
    huge = b"\x00" + b"x" * (settings.max_request_size - 200)  # undecodable, and just fits
    after = sample_event("tool.called", 1)
    async with running_consumer(consumer):
        await produce_raw(settings, topic, huge, key=b"s")
        await produce_raw(
            settings, topic, encode_event(after), key=b"s", headers=event_headers(after)
        )
        await wait_until(lambda: handled == [after.event_id], timeout=30)
        [letter] = await read_records(settings, settings.routing().dlq, 1)
    assert letter.value == huge
    assert dict(letter.headers)["agentstream.errors.handler"] == b"<decode>"


async def test_invalid_payload_is_dead_lettered_once_by_a_reader_and_kept_by_a_sink(
    kafka_settings: KafkaSettings,
) -> None:
    """Envelopes are decoded without payload validation: a handler reading ``event.payload``
    of invalid data gets a PayloadValidationError (a DecodeError), dead-lettered at once, while
    a wildcard sink that never reads the payload stores the record."""
    settings = service_settings(kafka_settings, handler_retries=3)
    consumer = EventConsumer(settings, service="lazy")
    reads: list[int] = []
    stored: list[Record] = []

    @consumer.subscribe("tool.called", name="reads-payload")
    async def typed(event: Event) -> None:
        reads.append(event.seq)
        _ = event.payload

    @consumer.subscribe_batch("*", max_records=10, max_wait_ms=20, name="sink")
    async def sink(records: list[Record]) -> None:
        stored.extend(records)

    bad = Event(type="tool.called", session_id="s-lazy", seq=0, data={"name": 42})
    good = Event(type="tool.called", session_id="s-lazy", seq=1, data={"name": "weather"})
    async with running_consumer(consumer):
        await produce_events(settings, [bad, good])
        await wait_until(lambda: len(stored) == 2 and len(reads) == 2)
        [letter] = await read_records(settings, settings.routing().dlq, 1)
    assert reads == [0, 1], "no retries of a payload that cannot validate"
    assert [r.event.event_id for r in stored] == [bad.event_id, good.event_id]
    assert stored[0].event.data == {"name": 42}
    headers = dict(letter.headers)
    assert letter.value == encode_event(bad)
    assert headers["agentstream.errors.handler"] == b"reads-payload"
    assert headers["agentstream.errors.attempts"] == b"1"
    assert headers["agentstream.errors.reason"] == b"undecodable: PayloadValidationError"
    assert (
        headers["agentstream.errors.exception.class.name"]
        == b"agentstream.schemas.errors.PayloadValidationError"
    )
    assert b"ToolCalled" in headers["agentstream.errors.exception.message"]
    sample = consumer.registry.get_sample_value
    retries = sample(
        "agentstream_consumer_handler_retries_total",
        {"service": "lazy", "handler": "reads-payload"},
    )
    assert not retries


async def test_dead_letter_and_skip_requests_from_handlers(kafka_settings: KafkaSettings) -> None:
    from agentstream.schemas import DeadLetter, SkipEvent

    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="steered")
    calls: list[int] = []

    @consumer.subscribe("tool.called")
    async def steer(event: Event) -> None:
        calls.append(event.seq)
        if event.seq == 0:
            raise SkipEvent
        if event.seq == 1:
            raise DeadLetter("tool name not allowed")

    async with running_consumer(consumer):
        await produce_events(settings, [sample_event("tool.called", i) for i in range(3)])
        await wait_until(lambda: len(calls) == 3)
        [letter] = await read_records(settings, settings.routing().dlq, 1)
    assert calls == [0, 1, 2], "no retries for SkipEvent and DeadLetter"
    headers = dict(letter.headers)
    assert headers["agentstream.errors.reason"] == b"tool name not allowed"
    assert headers["agentstream.errors.attempts"] == b"1"


async def test_a_batch_handler_dead_letters_single_records(kafka_settings: KafkaSettings) -> None:
    from agentstream.consumers.runtime import BatchDeadLetter

    settings = service_settings(kafka_settings, handler_retries=3)
    consumer = EventConsumer(settings, service="picky")
    calls: list[list[int]] = []

    @consumer.subscribe_batch("*", max_records=10, max_wait_ms=20, name="picky-sink")
    async def sink(records: list[Record]) -> None:
        calls.append([r.offset for r in records])
        refused = {r.offset: f"seq {r.event.seq} refused" for r in records if r.event.seq % 5 == 1}
        if refused:
            raise BatchDeadLetter({**refused, 10_000: "not in this batch"})

    events = [sample_event("tool.called", i) for i in range(10)]  # one session: one partition
    async with running_consumer(consumer):
        await produce_events(settings, events)
        await wait_until(lambda: sum(map(len, calls)) == 10)
        letters = await read_records(settings, settings.routing().dlq, 2)
        await wait_until(lambda: sum(consumer.committed_offsets().values()) == 10)
    assert sorted(o for c in calls for o in c) == list(range(10)), "no batch retried"
    reasons = sorted(dict(r.headers)["agentstream.errors.reason"] for r in letters)
    assert reasons == [b"seq 1 refused", b"seq 6 refused"]
    assert sorted(r.value for r in letters) == sorted(encode_event(events[i]) for i in (1, 6))
    assert all(dict(r.headers)["agentstream.errors.attempts"] == b"1" for r in letters)
    sample = consumer.registry.get_sample_value
    labels = {"service": "picky", "type": "tool.called"}
    assert sample("agentstream_consumer_records_total", {**labels, "outcome": "dead_lettered"}) == 2


async def test_a_handler_past_its_timeout_is_cancelled_retried_then_dead_lettered(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings, handler_retries=2)
    consumer = EventConsumer(settings, service="timed")
    attempts: list[int] = []
    cancelled: list[int] = []
    done: list[int] = []
    batches: list[int] = []

    @consumer.subscribe("tool.called", timeout_ms=100)
    async def slow(event: Event) -> None:
        attempts.append(event.seq)
        if event.seq == 0 or (event.seq == 1 and attempts.count(1) == 1):
            try:
                await asyncio.sleep(60)  # hangs: forever for seq 0, on the first try for seq 1
            except asyncio.CancelledError:
                cancelled.append(event.seq)
                raise
        done.append(event.seq)

    @consumer.subscribe_batch("*", max_records=1, max_wait_ms=1, timeout_ms=100)
    async def sink(records: list[Record]) -> None:
        if records[0].event.seq == 2 and batches.count(2) == 0:
            batches.append(2)
            await asyncio.sleep(60)
        batches.extend(r.event.seq for r in records)

    async with running_consumer(consumer):
        await produce_events(settings, [sample_event("tool.called", i) for i in range(3)])
        await wait_until(lambda: done == [1, 2] and sorted(set(batches)) == [0, 1, 2])
        [letter] = await read_records(settings, settings.routing().dlq, 1)
    assert attempts.count(0) == 3 and cancelled == [0, 0, 0, 1]
    headers = dict(letter.headers)
    assert letter.value == encode_event(sample_event("tool.called", 0))
    assert headers["agentstream.errors.handler"].endswith(b"slow")
    assert headers["agentstream.errors.exception.class.name"].endswith(b"HandlerTimeoutError")
    assert b"within 100 ms" in headers["agentstream.errors.exception.message"]
    assert batches.count(2) == 2, "the batch past its timeout was called again"


async def test_batches_hold_consecutive_records_of_one_partition(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="sink")
    batches: list[list[Record]] = []

    @consumer.subscribe_batch("*", max_records=7, max_wait_ms=50)
    async def sink(records: list[Record]) -> None:
        batches.append(records)

    events = [sample_event("tool.called", i) for i in range(30)]  # one session: one partition
    async with running_consumer(consumer):
        await produce_events(settings, events)
        await wait_until(lambda: sum(map(len, batches)) == 30)
    assert all(len(b) <= 7 for b in batches)
    offsets = [r.offset for b in batches for r in b]
    assert offsets == sorted(offsets) and len(set(offsets)) == 30
    assert [r.event.seq for b in batches for r in b] == list(range(30))


async def test_a_slow_handler_pauses_fetching_and_bounds_the_buffer(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings, max_buffered_records=20)
    consumer = EventConsumer(settings, service="slow")
    gate = asyncio.Event()
    handled: list[int] = []
    peak = 0

    @consumer.subscribe("tool.called")
    async def slow(event: Event) -> None:
        nonlocal peak
        await gate.wait()
        handled.append(event.seq)

    events = [sample_event("tool.called", i) for i in range(300)]
    async with running_consumer(consumer):
        client = consumer._consumer
        assert client is not None
        polls: list[int] = []  # each poll's timeout: short while paused, to resume promptly
        getmany = client.getmany

        async def recorded(*partitions: Any, timeout_ms: int, max_records: int) -> Any:
            polls.append(timeout_ms)
            return await getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)

        client.getmany = recorded  # type: ignore[method-assign]
        await produce_events(settings, events)

        def paused() -> bool:
            nonlocal peak
            value = consumer.registry.get_sample_value(
                "agentstream_consumer_buffered_records", {"service": "slow"}
            )
            peak = max(peak, int(value or 0))
            return (
                consumer.registry.get_sample_value(
                    "agentstream_consumer_paused_partitions", {"service": "slow"}
                )
                == 1
            )

        await wait_until(paused, what="partition paused")
        await wait_until(lambda: PAUSED_POLL_TIMEOUT_MS in polls, what="a short poll")
        gate.set()
        await wait_until(lambda: len(handled) == 300)
        await wait_until(lambda: polls[-1] == POLL_TIMEOUT_MS, what="polls as usual")
    assert handled == list(range(300))
    assert peak <= 20 + 10, "buffer bounded by max_buffered_records plus one fetch"


async def test_a_dead_letter_too_large_to_send_goes_without_its_value(
    kafka_settings: KafkaSettings,
) -> None:
    """A record the topic took compressed (3 MB of text, a few KB in gzip) and a handler
    refused: aiokafka measures a request uncompressed, so its dead letter could never be sent;
    it was retried for good and its partition waited behind it."""
    settings = service_settings(kafka_settings)
    topic = settings.routing().events
    big = sample_event("tool.called", 1)
    big.data = {"name": "t", "args": {"text": "a" * 3_000_000}}
    small = sample_event("tool.called", 2)
    small.session_id = big.session_id
    producer = AIOKafkaProducer(
        **{**settings.producer_options(), "compression_type": "gzip", "max_request_size": 8 << 20}
    )
    await producer.start()
    try:
        for event in (big, small):
            await producer.send_and_wait(
                topic, encode_event(event, max_bytes=8 << 20), key=big.session_id.encode(),
                headers=event_headers(event),
            )  # fmt: skip
    finally:
        await producer.stop()
    consumer = EventConsumer(settings, service="big")
    handled: list[int] = []

    @consumer.subscribe("tool.called")
    async def refuse_the_big_one(event: Event) -> None:
        if event.seq == 1:
            raise DeadLetter("too much")
        handled.append(event.seq)

    async with running_consumer(consumer):
        await wait_until(lambda: handled == [2], what="the record after it")
        [letter] = await read_records(settings, settings.routing().dlq, 1)
    assert letter.value is None
    size = len(encode_event(big, max_bytes=8 << 20))
    assert header(letter.headers, "agentstream.errors.value.dropped") == str(size).encode()
    assert header(letter.headers, "agentstream.errors.reason") == b"too much"


async def test_a_ce_type_that_is_no_type_tag_is_dead_lettered_by_every_service(
    kafka_settings: KafkaSettings,
) -> None:
    """A service whose subscriptions skip records by their ce_type header (loops) skipped a
    tool call whose header said 'Tool.Called' or 'tool.called ' (a loop went unseen), where
    services taking every type dead-letter it for not matching its envelope."""
    settings = service_settings(kafka_settings)
    consumer, handled = recording_consumer(settings, "narrow", "tool.*")

    topic = settings.routing().events
    call = sample_event("tool.called", 1)
    after = sample_event("tool.result", 2)
    bad_tags = [b"Tool.Called", b"tool.called ", b"tool.called\n", b""]
    async with running_consumer(consumer):
        for tag in bad_tags:
            headers = [(n, tag if n == "ce_type" else v) for n, v in event_headers(call)]
            await produce_raw(settings, topic, encode_event(call), key=b"k", headers=headers)
        await produce_events(settings, [after], topic=topic)
        await wait_until(lambda: handled == [after.event_id])
        letters = await read_records(settings, settings.routing().dlq, len(bad_tags))
    messages = sorted(dict(r.headers)["agentstream.errors.exception.message"] for r in letters)
    assert all(b"expected an event type in header ce_type" in m for m in messages), messages
