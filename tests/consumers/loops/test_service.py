"""The loops service on a real broker: alerts and directives, restarts and rebalances."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from support.produce import produce_events, produce_raw
from support.runtime import (
    ServiceProcess,
    committed_offsets,
    http_get,
    running_consumer,
    wait_until,
)

from agentstream.consumers.loops.restore import recent_ids_from
from agentstream.consumers.loops.service import SERVICE, LoopService, LoopSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.consumers.runtime.replay import Window, read_windows
from agentstream.schemas import Event, decode_record, encode_event, event_headers
from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.settings import KafkaSettings

SEARCH = {"query": "kafka exactly once", "top_k": 5}


def search(session: str, agent: str = "support-bot") -> Event:
    """Corail ``tool.called`` without a turn id: the session is the scope."""
    return Event(
        type="tool.called",
        agent_id=agent,
        user_id="u-1",
        session_id=session,
        data={"name": "web_search", "args": dict(SEARCH)},
    )


def attempt(session: str, name: str, i: int, turn: str = "a1b2c3d4e5f6") -> Event:
    """Calute ``audit.tool_call_attempt`` within a turn."""
    return Event(
        type="audit.tool_call_attempt",
        agent_id="researcher",
        session_id=session,
        turn_id=turn,
        data={"tool_name": name, "arguments_preview": f'{{"path": "/src/{i}"}}'},
    )


def loop_settings(base: KafkaSettings, **overrides: Any) -> LoopSettings:
    fields: dict[str, Any] = {
        "bootstrap_servers": base.bootstrap_servers,
        "topic_prefix": base.topic_prefix,
        "linger_ms": 1,
        "commit_interval_ms": 100,
        "handler_retries": 2,
        "handler_retry_backoff_ms": 1,
        "handler_retry_max_backoff_ms": 5,
        "drain_timeout_ms": 10_000,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 300,
        "fetch_max_wait_ms": 50,
        **overrides,
    }
    return LoopSettings(**fields)


@contextlib.asynccontextmanager
async def loops_service(settings: LoopSettings) -> AsyncIterator[LoopService]:
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings) as service, running_consumer(consumer):
        yield cast(LoopService, service)


async def all_processed(settings: LoopSettings, produced: int) -> bool:
    """Whether the group committed all ``produced`` records of the events topic (counted from
    what the test produced: the embedded broker can understate end offsets)."""
    done = await committed_offsets(settings, settings.group_for(SERVICE.name))
    return sum(o for tp, o in done.items() if tp.topic == settings.routing().events) >= produced


async def records_of(
    settings: KafkaSettings, topic: str, *, at_least: int = 0, timeout: float = 20.0
) -> list[tuple[bytes | None, Event]]:
    """Every record of ``topic`` (key, event): read until a fetch round brings nothing."""
    consumer = AIOKafkaConsumer(**{**settings.consumer_options(), "auto_offset_reset": "earliest"})
    await consumer.start()
    found: list[tuple[bytes | None, Event]] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(4)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while True:
            batches = await consumer.getmany(timeout_ms=300)
            for records in batches.values():
                found.extend((r.key, decode_record(r.value, r.headers)) for r in records)
            if not batches and len(found) >= at_least:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {at_least} records on {topic}, got {len(found)}")
    finally:
        await consumer.stop()


def findings(alerts: list[tuple[bytes | None, Event]]) -> collections.Counter[tuple[str, ...]]:
    return collections.Counter(
        (e.session_id, e.type, e.data["pattern"], e.data["severity_level"]) for _, e in alerts
    )


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[Any]]]:
    """A local HTTP endpoint collecting the JSON bodies POSTed to it."""
    bodies: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_findings_publish_alerts_and_a_pause_directive(kafka_settings: KafkaSettings) -> None:
    with webhook_receiver() as (url, bodies):
        await _findings_publish_alerts_and_a_pause_directive(kafka_settings, url, bodies)


async def _findings_publish_alerts_and_a_pause_directive(
    kafka_settings: KafkaSettings, url: str, bodies: list[Any]
) -> None:
    settings = loop_settings(kafka_settings, webhook_url=url, webhook_format="slack")
    events = [search("s-same") for _ in range(6)]
    events += [
        attempt("s-pingpong", "read_file" if i % 2 == 0 else "list_dir", i) for i in range(7)
    ]
    events += [
        Event(type="tool.called", session_id="s-max", agent_id="a", data={"name": "f", "args": i})
        for i in range(30)
    ]
    async with loops_service(settings) as service:
        await produce_events(settings, events)
        await wait_until(lambda: all_processed(settings, len(events)), what="all processed")
        alerts = await records_of(settings, settings.routing().alerts, at_least=5)
        controls = await records_of(settings, settings.routing().control, at_least=10)
        metrics = service.consumer.registry
        await wait_until(lambda: len(bodies) == 5, what="5 alerts delivered to the webhook")

    assert findings(alerts) == collections.Counter(
        {
            ("s-same", "audit.tool_loop_warning", "same_call", "warning"): 1,
            ("s-same", "audit.tool_loop_block", "same_call", "critical"): 1,
            ("s-pingpong", "audit.tool_loop_warning", "pingpong", "warning"): 1,
            ("s-pingpong", "audit.tool_loop_block", "pingpong", "critical"): 1,
            ("s-max", "audit.tool_loop_block", "max_calls", "critical"): 1,
        }
    )
    by_session = {(e.session_id, e.type): (key, e) for key, e in alerts}
    key, block = by_session[("s-same", "audit.tool_loop_block")]
    assert key == b"s-same"
    assert block.source == "agentstream-loops"
    assert block.agent_id == "support-bot" and block.user_id == "u-1"
    assert block.data["tool_name"] == "web_search" and block.data["call_count"] == 5
    assert block.data["metadata"]["trigger_event_id"] == events[4].event_id
    _, pingpong = by_session[("s-pingpong", "audit.tool_loop_warning")]
    assert pingpong.turn_id == "a1b2c3d4e5f6" and pingpong.data["call_count"] == 4

    blocks = {e.event_id: e for _, e in alerts if e.type == "audit.tool_loop_block"}
    # One directive per block, and one more per call the agent made after it (repeats).
    per_session = collections.Counter(e.session_id for _, e in controls)
    assert per_session == {"s-same": 2, "s-pingpong": 2, "s-max": 6}
    assert len({e.event_id for _, e in controls}) == len(controls)
    for key, directive in controls:
        assert directive.type == "control.agent.paused"
        assert key == directive.session_id.encode()
        assert directive.data["service"] == "loops"
        alert = blocks[directive.data["finding_id"]]
        assert (directive.agent_id, directive.session_id, directive.turn_id) == (
            alert.agent_id,
            alert.session_id,
            alert.turn_id,
        )
        assert directive.data["pattern"] == alert.data["pattern"]
    sample = metrics.get_sample_value
    assert (
        sample("agentstream_loop_findings_total", {"pattern": "same_call", "level": "warning"}) == 1
    )
    assert sample("agentstream_loop_alerts_published_total", {"kind": "control"}) == 10
    assert sample("agentstream_loop_alerts_published_total", {"kind": "block"}) == 3
    assert sample("agentstream_loop_webhook_deliveries_total", {"outcome": "delivered"}) == 5
    assert all(set(body) == {"text"} for body in bodies)
    assert sum("BLOCK" in body["text"] for body in bodies) == 3


async def test_a_backlog_of_old_events_alerts_but_pauses_no_agent(
    kafka_settings: KafkaSettings,
) -> None:
    """A loop found while catching up a backlog ended long ago: its alerts are published, but
    no pause directive (the agent may be running a new session now) and no webhook call
    (nobody is paged for it); fresh loops still get both."""
    with webhook_receiver() as (url, bodies):
        settings = loop_settings(kafka_settings, webhook_url=url)  # both max ages: 600 s
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        old = [msgspec.structs.replace(search("s-old"), timestamp=hour_ago) for _ in range(5)]
        fresh = [search("s-fresh") for _ in range(5)]
        async with loops_service(settings) as service:
            await produce_events(settings, old + fresh)
            await wait_until(lambda: all_processed(settings, 10), what="all processed")
            alerts = await records_of(settings, settings.routing().alerts, at_least=4)
            controls = await records_of(settings, settings.routing().control)
            await wait_until(lambda: len(bodies) == 2, what="the fresh alerts at the webhook")
            sample = service.consumer.registry.get_sample_value
            assert sample("agentstream_loop_stale_directives_skipped_total") == 1
            stale = {"outcome": "stale"}
            assert sample("agentstream_loop_webhook_deliveries_total", stale) == 2
    assert {body["session_id"] for body in bodies} == {"s-fresh"}
    assert findings(alerts) == collections.Counter(
        {
            (session, kind, "same_call", level): 1
            for session in ("s-old", "s-fresh")
            for kind, level in (
                ("audit.tool_loop_warning", "warning"),
                ("audit.tool_loop_block", "critical"),
            )
        }
    )
    assert [e.session_id for _, e in controls] == ["s-fresh"]


def assert_each_finding_once(alerts: list[tuple[bytes | None, Event]], sessions: list[str]) -> None:
    ids = collections.Counter(e.event_id for _, e in alerts)
    assert [i for i, n in ids.items() if n > 1] == [], "an alert id was published twice"
    expected: collections.Counter[tuple[str, ...]] = collections.Counter()
    for s in sessions:
        expected[(s, "audit.tool_loop_warning", "same_call", "warning")] = 1
        expected[(s, "audit.tool_loop_block", "same_call", "critical")] = 1
    assert findings(alerts) == expected


SESSIONS = [f"sess-{i}" for i in range(8)]


async def test_a_second_instance_joining_misses_nothing_and_repeats_nothing(
    kafka_settings: KafkaSettings,
) -> None:
    settings = loop_settings(kafka_settings)
    async with loops_service(settings) as first:
        await produce_events(settings, [search(s) for _ in range(4) for s in SESSIONS])
        await wait_until(lambda: all_processed(settings, 32), what="part 1 processed")
        async with loops_service(settings) as second:
            await wait_until(
                lambda: (
                    bool(first.positions)
                    and bool(second.positions)
                    and len(first.positions) + len(second.positions) == 4
                ),
                what="partitions split between the two instances",
            )
            await produce_events(settings, [search(s) for _ in range(2) for s in SESSIONS])
            await wait_until(lambda: all_processed(settings, 48), what="part 2 processed")
            restored = second.consumer.registry.get_sample_value(
                "agentstream_loop_restored_records_total"
            )
    assert restored is not None and restored > 0
    alerts = await records_of(settings, settings.routing().alerts, at_least=16)
    assert_each_finding_once(alerts, SESSIONS)


@pytest.mark.parametrize("commit_interval_ms", [100, 60_000], ids=["some-committed", "none"])
async def test_kill_9_mid_stream_then_restart_misses_nothing_and_repeats_nothing(
    kafka_settings: KafkaSettings, commit_interval_ms: int
) -> None:
    settings = loop_settings(kafka_settings)
    alerts_topic = settings.routing().alerts
    env = {
        "AGENTSTREAM_COMMIT_INTERVAL_MS": str(commit_interval_ms),
        "AGENTSTREAM_SESSION_TIMEOUT_MS": "3000",
        "AGENTSTREAM_HEARTBEAT_INTERVAL_MS": "300",
    }
    with ServiceProcess("loops", settings, env=env) as process:
        await process.wait_ready()
        await produce_events(settings, [search(s) for _ in range(4) for s in SESSIONS])

        async def warned() -> bool:
            return len(await records_of(settings, alerts_topic)) >= len(SESSIONS)

        await wait_until(warned, what="part 1 alerted by `agentstream consume loops`")
        _, metrics = await http_get(process.port, "/metrics")
        process.kill()  # SIGKILL: no drain, no final commit, no leave
    assert b'agentstream_loop_findings_total{level="warning",pattern="same_call"} 8.0' in metrics
    await produce_events(settings, [search(s) for _ in range(2) for s in SESSIONS])
    async with loops_service(settings) as restarted:
        await wait_until(lambda: all_processed(settings, 48), timeout=40, what="all processed")
        skipped = restarted.consumer.registry.get_sample_value(
            "agentstream_loop_duplicate_alerts_skipped_total"
        )
    assert_each_finding_once(await records_of(settings, alerts_topic, at_least=16), SESSIONS)
    if commit_interval_ms == 60_000:  # nothing committed: part 1 was processed again
        assert skipped == len(SESSIONS)


async def test_the_block_reaches_the_agents_pod(kafka_settings: KafkaSettings) -> None:
    """Pod → Kafka → loops service → control topic → the pod's bus, end to end."""
    from agentstream.producer import EventBus, EventType, KafkaPublisher

    settings = loop_settings(kafka_settings)
    publisher = KafkaPublisher(kafka_settings, instance_id="pod-1")
    paused: list[Event] = []
    try:
        async with loops_service(settings):
            bus = EventBus(publisher, agent_id="support-bot")
            await bus.enable_control(kafka_settings, fetch_max_wait_ms=20)

            async def on_paused(event: Event) -> None:
                paused.append(event)

            bus.subscribe(EventType.CONTROL_AGENT_PAUSED, on_paused)
            try:
                for _ in range(5):
                    await bus.emit(search("sess-pod"))
                assert await asyncio.to_thread(publisher.flush, 10)
                await wait_until(lambda: bool(paused), what="the pause directive in the pod")
            finally:
                await bus.close()
    finally:
        publisher.close(10)
    (directive,) = paused
    assert directive.session_id == "sess-pod" and directive.agent_id == "support-bot"
    assert directive.data["service"] == "loops"
    assert directive.data["pattern"] == "same_call" and directive.data["tool_name"] == "web_search"
    assert directive.data["reason"].startswith("Tool loop detected (same_call)")


async def test_restore_reads_whole_windows_across_record_batches(
    kafka_settings: KafkaSettings,
) -> None:
    """Three produce calls make three record batches; the window and the alerts-tail scan
    must return every record (the embedded broker's end offset stops inside the last batch)."""
    topic = kafka_settings.routing().events
    batches = [[search("one-partition") for _ in range(4)] for _ in range(3)]
    for batch in batches:
        await produce_events(kafka_settings, batch)
    tp = TopicPartition(topic, await partition_holding_records(kafka_settings, topic))
    offsets = [r.offset async for r in read_windows(kafka_settings, {tp: Window(0, 12)})]
    assert offsets == list(range(12))
    offsets = [r.offset async for r in read_windows(kafka_settings, {tp: Window(5, 12)})]
    assert offsets == list(range(5, 12))
    ids = await recent_ids_from(kafka_settings, topic, "pod-x", window=100)
    assert ids == []
    for batch in batches:
        for event in batch:
            event.source = "pod-x"
    await produce_events(kafka_settings, [e for batch in batches for e in batch])
    ids = await recent_ids_from(kafka_settings, topic, "pod-x", window=12)
    assert ids == [e.event_id for batch in batches for e in batch]


async def partition_holding_records(settings: KafkaSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(**{**settings.consumer_options(), "auto_offset_reset": "earliest"})
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(4)])
        await consumer.seek_to_beginning()
        batches = await consumer.getmany(timeout_ms=2_000)
        (tp,) = [tp for tp, records in batches.items() if records]
        return int(tp.partition)
    finally:
        await consumer.stop()


async def test_a_session_split_over_partitions_by_another_producer_is_counted(
    kafka_settings: KafkaSettings,
) -> None:
    """Events of one session that another producer keyed by user: the loops state of that
    session is split, which was silent."""
    settings = loop_settings(kafka_settings)
    events = [search("split-1") for _ in range(3)]
    right = partition_for(b"split-1", 4)
    async with loops_service(settings) as service:
        await produce_events(settings, events[:2])  # keyed by session: where it belongs
        await produce_raw(
            settings,
            settings.routing().events,
            encode_event(events[2]),
            key=b"u-1",
            headers=event_headers(events[2]),
            partition=(right + 1) % 4,
        )
        await wait_until(lambda: all_processed(settings, 3), what="all three handled")
        labels = {"service": "loops", "topic": settings.routing().events}
        sample = service.consumer.registry.get_sample_value
        assert sample("agentstream_consumer_misplaced_events_total", labels) == 1
