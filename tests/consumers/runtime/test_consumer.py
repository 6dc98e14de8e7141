"""EventConsumer against the real broker: subscriptions, order, hooks, commits, output."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from support.produce import produce_events, produce_raw
from support.runtime import (
    committed_offsets,
    read_records,
    recording_consumer,
    running_consumer,
    service_settings,
    wait_until,
)
from support.samples import all_sample_events, sample_event

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.consumers.runtime import EventConsumer, Record
from agentstream.schemas import Event, decode_record, encode_event, event_headers, new_event_id
from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.settings import KafkaSettings


def _session_events(
    sessions: int, per_session: int, event_type: str = "tool.called"
) -> list[Event]:
    events = []
    for s in range(sessions):
        for i in range(per_session):
            event = sample_event(event_type, i)
            events.append(
                Event(
                    event_id=new_event_id(),
                    type=event.type,
                    session_id=f"session-{s}",
                    seq=i,
                    source="test",
                    data=event.data,
                )
            )
    return events


async def test_patterns_route_every_matching_event_to_its_handlers(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="patterns")
    everything: list[str] = []
    tools: list[str] = []
    tokens: list[Record] = []

    @consumer.subscribe("*")
    async def on_any(event: Event) -> None:
        everything.append(event.type)

    @consumer.subscribe("tool.*")
    async def on_tool(event: Event) -> None:
        tools.append(event.type)

    @consumer.subscribe("llm.token", name="tokens")
    async def on_token(event: Event, record: Record) -> None:
        tokens.append(record)

    assert consumer.topics() == sorted(settings.routing().all_topics()[:4])
    events = all_sample_events()
    async with running_consumer(consumer):
        await produce_events(settings, events)
        await wait_until(lambda: len(everything) == len(events), what="all events handled")
    assert sorted(everything) == sorted(e.type for e in events)
    assert sorted(tools) == ["tool.called", "tool.error", "tool.result"]
    assert len(tokens) == 1
    assert tokens[0].topic == settings.routing().tokens
    assert tokens[0].event.type == "llm.token"
    assert dict(tokens[0].headers)["ce_type"] == b"llm.token"


async def test_per_session_order_and_commit_of_everything_handled(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="order")
    seen: dict[str, list[int]] = defaultdict(list)

    @consumer.subscribe("tool.called")
    async def on_tool(event: Event) -> None:
        await asyncio.sleep(0)  # let partitions interleave
        seen[event.session_id].append(event.seq)

    events = _session_events(sessions=8, per_session=25)
    async with running_consumer(consumer):
        await produce_events(settings, events)
        await wait_until(lambda: sum(map(len, seen.values())) == len(events))
    assert all(seqs == list(range(25)) for seqs in seen.values()), seen
    committed = await committed_offsets(settings, consumer.group_id)
    topic = settings.routing().events
    assert sum(o for tp, o in committed.items() if tp.topic == topic) == len(events)


async def test_skipped_types_are_not_decoded_and_still_committed(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings)
    consumer, handled = recording_consumer(settings, "skipper", "tool.*")

    topic = settings.routing().events
    # Not an event at all, but announced as a type nobody here subscribes to.
    await produce_raw(
        settings, topic, b"\x00not-json", key=b"k", headers=[("ce_type", b"memory.stored")]
    )
    # No ce_type header: decoded, then matched.
    headerless_skip = sample_event("memory.stored", 2)
    await produce_raw(settings, topic, encode_event(headerless_skip), key=b"k")
    headerless_tool = sample_event("tool.result", 3)
    await produce_raw(settings, topic, encode_event(headerless_tool), key=b"k")
    last = sample_event("tool.called", 1)
    async with running_consumer(consumer):
        await produce_events(settings, [last], topic=topic)
        await wait_until(lambda: handled == [headerless_tool.event_id, last.event_id])
        await wait_until(lambda: _sample(consumer, "skipped", "memory.stored") == 2)
    assert _sample(consumer, "failed", "memory.stored") == 0
    committed = await committed_offsets(settings, consumer.group_id)
    assert sum(o for tp, o in committed.items() if tp.topic == topic) == 4


async def test_assigned_hook_runs_before_records_and_revoked_after_commit(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="hooks")
    log: list[str] = []
    hook_done = asyncio.Event()

    @consumer.on_assigned
    async def restore(partitions: frozenset[TopicPartition]) -> None:
        log.append(f"assigned {len(partitions)}")
        await asyncio.sleep(0.2)  # a slow restore: records must wait for it
        log.append("restored")
        hook_done.set()

    @consumer.on_revoked
    async def flush(partitions: frozenset[TopicPartition]) -> None:
        committed = await committed_offsets(settings, consumer.group_id)
        log.append(f"revoked {len(partitions)} after commit {sum(committed.values())}")

    @consumer.subscribe("*")
    async def on_any(event: Event) -> None:
        log.append("event")

    # Records are already there when the consumer joins.
    await produce_events(settings, [sample_event("tool.called", i) for i in range(3)])
    async with running_consumer(consumer):
        await wait_until(lambda: log.count("event") == 3)
    assert log[0] == "assigned 16", log  # 4 topics x 4 partitions
    assert log[1] == "restored"
    assert log[-1] == "revoked 16 after commit 3"


async def test_offset_of_an_unfinished_record_is_never_committed(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings, commit_interval_ms=50)
    consumer = EventConsumer(settings, service="blocker")
    release = asyncio.Event()
    blocked: list[Record] = []
    finished: list[Record] = []

    @consumer.subscribe("tool.called")
    async def handler(event: Event, record: Record) -> None:
        if event.data.get("block"):
            blocked.append(record)
            await release.wait()
        finished.append(record)

    events = _session_events(sessions=6, per_session=5)
    blocker = Event(
        type="tool.called", session_id="session-0", source="test", data={"name": "x", "block": 1}
    )
    after = _session_events(sessions=6, per_session=5)
    sent = [*events, blocker, *after]
    async with running_consumer(consumer):
        await produce_events(settings, sent)
        records = await read_records(settings, settings.routing().events, len(sent))
        await wait_until(lambda: bool(blocked))
        stuck = blocked[0]
        stuck_tp = stuck.topic_partition
        ends: dict[TopicPartition, int] = defaultdict(int)
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            ends[tp] = max(ends[tp], r.offset + 1)
        expect_others = {tp: end for tp, end in ends.items() if tp != stuck_tp}

        async def others_committed() -> bool:
            committed = await committed_offsets(settings, consumer.group_id)
            return all(committed.get(tp) == end for tp, end in expect_others.items())

        await wait_until(others_committed, what="other partitions committed")
        assert {r.offset for r in finished if r.topic_partition == stuck_tp} == set(
            range(stuck.offset)
        ), "records after the blocked one ran out of order"
        # Several commit intervals passed while the blocked record was in progress.
        committed = await committed_offsets(settings, consumer.group_id)
        assert committed.get(stuck_tp, 0) == stuck.offset, "committed past an unfinished record"
        release.set()

        async def stuck_committed() -> bool:
            committed = await committed_offsets(settings, consumer.group_id)
            return committed.get(stuck_tp) == ends[stuck_tp]

        await wait_until(stuck_committed, what="blocked partition committed after release")
    assert len(finished) == len(sent)


async def test_send_publishes_in_the_wire_format(kafka_settings: KafkaSettings) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="alerter")

    @consumer.subscribe("tool.error")
    async def on_error(event: Event) -> None:
        alert = Event(
            type="budget.warning",
            session_id=event.session_id,
            data={"scope": "session", "dimension": "tokens", "used": 1, "limit": 2},
        )
        await consumer.send(consumer.routing.alerts, alert)

    async with running_consumer(consumer):
        await produce_events(settings, [sample_event("tool.error", 3)])
        [record] = await read_records(settings, settings.routing().alerts, 1)
    event = decode_record(record.value, record.headers)
    assert event.type == "budget.warning"
    assert record.key == event.session_id.encode()
    assert dict(record.headers)["ce_type"] == b"budget.warning"
    assert list(record.headers)[:2] == event_headers(event)[:2]


def _sample(consumer: EventConsumer, outcome: str, event_type: str) -> float:
    value = consumer.registry.get_sample_value(
        "agentstream_consumer_records_total",
        {"service": consumer.service, "type": event_type, "outcome": outcome},
    )
    return value or 0.0


async def test_a_failed_assignment_hook_holds_records_back_and_reports_unhealthy(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings)
    consumer = EventConsumer(settings, service="unrestored")
    handled: list[str] = []

    @consumer.on_assigned
    async def restore(partitions: frozenset[TopicPartition]) -> None:
        raise OSError("state store unreachable")

    @consumer.subscribe("*")
    async def handle(event: Event) -> None:
        handled.append(event.event_id)

    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await produce_events(settings, [sample_event("tool.called", 1)])

        def buffered() -> float:
            value = consumer.registry.get_sample_value(
                "agentstream_consumer_buffered_records", {"service": "unrestored"}
            )
            return value or 0.0

        await wait_until(lambda: buffered() == 1, what="record fetched and held back")
        assert not consumer.healthy
        assert not consumer.ready
        assert handled == []
    finally:
        stop.set()
        await task
    committed = await committed_offsets(settings, consumer.group_id)
    assert set(committed.values()) <= {0}, "nothing committed past the held-back record"


async def test_topic_restricted_subscriptions_fetch_and_get_only_their_topics(
    kafka_settings: KafkaSettings,
) -> None:
    settings = service_settings(kafka_settings)
    routing = settings.routing()
    consumer = EventConsumer(settings, service="narrowed")
    seen: list[tuple[str, str]] = []
    alerts: list[tuple[str, str]] = []

    @consumer.subscribe_batch("*", max_records=10, max_wait_ms=20, topics=["events"])
    async def sink(records: list[Record]) -> None:
        seen.extend((r.topic, r.event.type) for r in records)

    @consumer.subscribe("budget.*", topics=["alerts"])
    async def on_alert(event: Event, record: Record) -> None:
        alerts.append((record.topic, event.type))

    assert consumer.topics() == sorted([routing.events, routing.alerts])
    warning = sample_event("budget.warning", 1)
    async with running_consumer(consumer):
        await produce_events(settings, [sample_event("llm.token", 0), warning])  # tokens, events
        await produce_events(settings, [warning], topic=routing.alerts)
        await produce_events(settings, [sample_event("tool.called", 2)])
        await wait_until(lambda: len(seen) == 2 and len(alerts) == 1)
        assigned = consumer.registry.get_sample_value(
            "agentstream_consumer_assigned_partitions", {"service": "narrowed"}
        )
    assert sorted(seen) == [(routing.events, "budget.warning"), (routing.events, "tool.called")]
    assert alerts == [(routing.alerts, "budget.warning")]
    assert assigned == 8, "4 events + 4 alerts partitions: tokens and control are not fetched"


@pytest.mark.parametrize("handled", [0, 3])
async def test_a_consumer_whose_broker_died_stops_without_an_error(
    broker_factory: type[EmbeddedBroker], unique_name: str, handled: int
) -> None:
    """SIGTERM after the broker went away: stopping must not end in the CancelledError
    aiokafka's fetcher raises from its own retry wait. Records handled since the last commit
    cannot be committed any more, and ``committed_at_stop`` says so (the runner exits 1)."""
    broker = broker_factory()
    broker.start()
    await broker.wait_ready()
    base = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=unique_name)
    await ensure_topics(base.admin_options(), base.routing(), TopicSpec(partitions=2))
    # a long retry wait: stopping finds the fetcher in it, as it does after any outage; no
    # periodic commit: what is handled stays to be committed at stop
    settings = service_settings(
        base, retry_backoff_ms=2000, commit_interval_ms=600_000, drain_timeout_ms=1000
    )
    consumer = EventConsumer(settings, service="orphan")
    seen: list[Event] = []

    @consumer.subscribe("*")
    async def handle(event: Event) -> None:
        seen.append(event)

    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await wait_until(lambda: consumer.ready, what="partitions assigned")
    await produce_events(base, [sample_event("tool.called", i) for i in range(handled)])
    await wait_until(lambda: len(seen) == handled, what=f"{handled} events handled")
    broker.stop()
    await asyncio.sleep(1)  # the fetcher fails and waits to retry
    stop.set()
    await asyncio.wait_for(task, 60)  # returns: no CancelledError, no hang
    assert consumer.committed_at_stop is (handled == 0)


async def test_a_group_offset_past_the_end_of_the_log_is_said_and_a_reset_position_committed(
    kafka_settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """The topic was created again under a group whose committed offset (1,000) is past its
    new end. Apache Kafka answers OFFSET_OUT_OF_RANGE and aiokafka resets the position
    (auto_offset_reset=earliest); the embedded broker does not, so the test then does what
    aiokafka does. Before, the records after the reset were handled but nothing committed
    (only offsets above the group's were), and nothing said why a group stood still."""
    settings = service_settings(kafka_settings)
    events = _session_events(sessions=1, per_session=20)
    await produce_events(settings, events)
    consumer = EventConsumer(settings, service="reset")
    topic = settings.routing().events
    tp = TopicPartition(topic, partition_for(b"session-0", 4))  # the fixture's 4 partitions
    committer = AIOKafkaConsumer(**{**settings.consumer_options(), "group_id": consumer.group_id})
    await committer.start()
    try:
        committer.assign([tp])
        await committer.commit({tp: 1_000})
    finally:
        await committer.stop()
    seen: list[int] = []

    @consumer.subscribe("tool.called")
    async def on_tool(event: Event) -> None:
        seen.append(event.seq)

    async with running_consumer(consumer):
        said = "the group's committed offset 1000 is past the end of the log (20)"
        await wait_until(lambda: bool(seen) or said in caplog.text, what="a reset or a word")
        if not seen:  # the embedded broker: what aiokafka does on OFFSET_OUT_OF_RANGE
            assert consumer._consumer is not None
            await consumer._consumer.seek_to_beginning(tp)
        await wait_until(lambda: len(seen) == 20)
        await wait_until(lambda: consumer.committed_offsets().get(tp) == 20)
    assert seen == list(range(20))
    assert (await committed_offsets(settings, consumer.group_id))[tp] == 20


async def test_a_transaction_marker_after_the_last_record_is_committed_past(
    kafka_settings: KafkaSettings,
) -> None:
    """A transactional producer (librdkafka) ends each transaction with a marker the client
    skips: the group's commit stayed one short of the end, its lag 1 until the next record."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    settings = service_settings(kafka_settings)
    topic = settings.routing().events
    event = sample_event("tool.called", 1)
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "transactional.id": new_event_id()}
    )
    await asyncio.to_thread(producer.init_transactions, 20)
    producer.begin_transaction()
    producer.produce(topic, encode_event(event), key=b"s", partition=0,
                     headers=event_headers(event))  # fmt: skip
    await asyncio.to_thread(producer.commit_transaction, 20)
    del producer  # librdkafka's destroy: its threads and connections go now, not at exit
    consumer = EventConsumer(settings, service="txn")
    seen: list[Event] = []

    @consumer.subscribe("tool.called")
    async def on_tool(event: Event) -> None:
        seen.append(event)

    tp = TopicPartition(topic, 0)
    async with running_consumer(consumer):
        await wait_until(lambda: len(seen) == 1)
        await wait_until(lambda: consumer.committed_offsets().get(tp) == 2, what="past the marker")
        assert [lag for t, p, lag in consumer._lag() if (t, p) == (topic, 0)] == [0]
