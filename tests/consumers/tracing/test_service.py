"""The service on the runtime and a real broker, exporting to an in-process OTLP receiver:
turns across a restart and a kill -9, no second export after a restart, idle timeout, endpoint
down, the standard OpenTelemetry variables on ``agentstream consume tracing``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from support.produce import produce_events, produce_raw
from support.runtime import (
    ServiceProcess,
    committed_offsets,
    http_get,
    read_records,
    running_consumer,
    wait_until,
)

from agentstream.consumers.runtime import EventConsumer
from agentstream.consumers.runtime.deadletter import H_OFFSET, H_REASON
from agentstream.consumers.tracing.service import SERVICE
from agentstream.consumers.tracing.settings import TracingSettings
from agentstream.schemas import Event, encode_event, event_headers
from agentstream.schemas.settings import KafkaSettings

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def settings_for(base: KafkaSettings, url: str, **overrides: Any) -> TracingSettings:
    fields: dict[str, Any] = {
        "bootstrap_servers": base.bootstrap_servers,
        "topic_prefix": base.topic_prefix,
        "otlp_endpoint": url,
        "export_linger_ms": 5,
        "export_backoff_ms": 10,
        "fetch_max_wait_ms": 100,
        "commit_interval_ms": 100,
        "drain_timeout_ms": 10_000,
        **overrides,
    }
    return TracingSettings(**fields)


@asynccontextmanager
async def tracing(settings: TracingSettings) -> AsyncIterator[EventConsumer]:
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings):
        assert consumer.topics() == [settings.routing().events], "no tokens/alerts/control"
        async with running_consumer(consumer):
            yield consumer


def turn(session: str, *parts: tuple[str, dict[str, Any]]) -> list[Event]:
    return [
        Event(
            event_id=f"{session[:6]}-{i:04d}-{'0' * 8}",
            type=type_,
            timestamp=T0 + timedelta(milliseconds=10 * i),
            agent_id="agent-x",
            session_id=session,
            seq=i,
            data=data,
        )
        for i, (type_, data) in enumerate(parts)
    ]


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        field = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, field) if field else None
    return out


def traces_of(receiver: Any) -> dict[bytes, list[Any]]:
    grouped: dict[bytes, list[Any]] = {}
    for span in receiver.spans():
        grouped.setdefault(span.trace_id, []).append(span)
    return grouped


def sample(consumer: EventConsumer, name: str, **labels: str) -> float:
    return consumer.registry.get_sample_value(name, labels) or 0.0


SESSION = "5e55105e55105e55105e55105e551050"
EVENTS = turn(
    SESSION,
    ("message.received", {"content": "hi"}),
    ("llm.call.started", {"round": 0, "model": "m"}),
    ("llm.call.completed", {"round": 0, "stop_reason": "tool_use", "model": "m"}),
    ("tool.called", {"name": "search", "args": {"q": "a"}}),
    # -- restart here --
    ("tool.result", {"name": "search", "output": "found"}),
    ("turn.ended", {"round": 0, "stop_reason": "end_turn"}),
)


def exported(consumer: EventConsumer, outcome: str) -> float:
    return sample(consumer, "agentstream_tracing_traces_exported_total", outcome=outcome)


async def test_turn_open_across_a_restart_is_rebuilt_and_exported_once(
    kafka_settings: KafkaSettings, otlp_receiver: Any
) -> None:
    settings = settings_for(kafka_settings, otlp_receiver.url)
    events_topic = kafka_settings.routing().events
    await produce_events(kafka_settings, EVENTS[:4])
    async with tracing(settings) as consumer:

        async def committed_four() -> bool:
            found = await committed_offsets(settings, consumer.group_id, [events_topic])
            return sum(found.values()) == 4

        await wait_until(committed_four, timeout=30, what="the first four records committed")
        assert sample(consumer, "agentstream_tracing_open_turns") == 1
    assert otlp_receiver.spans() == []  # the turn was open: nothing exported, state dropped

    await produce_events(kafka_settings, EVENTS[4:])
    async with tracing(settings) as consumer:
        await wait_until(lambda: len(traces_of(otlp_receiver)) == 1, timeout=30, what="a trace")
        # Counted once the endpoint has answered, a moment after it received the request.
        await wait_until(lambda: exported(consumer, "complete") == 1, what="the export counted")
    (spans,) = traces_of(otlp_receiver).values()
    names = [s.name for s in spans]
    assert names == ["turn", "llm:m", "tool:search"]
    root, _, tool = spans
    assert root.status.code == 1 and "agentstream.incomplete" not in attributes(root)
    # the tool span opened before the restart and closed after it
    assert tool.status.code == 1 and tool.end_time_unix_nano - tool.start_time_unix_nano == 10**7
    assert attributes(tool)["mlflow.spanOutputs"] == "found"
    assert tool.parent_span_id == root.span_id

    # A third start replays the same window: the finished turn is not exported again.
    marker = turn(
        "4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a4a",
        ("audit.turn_start", {"prompt_preview": "m"}),
        ("audit.turn_end", {"content_preview": "n"}),
    )
    for event in marker:
        event.turn_id = "0123456789ab"
    async with tracing(settings):
        await produce_events(kafka_settings, marker)
        await wait_until(lambda: len(traces_of(otlp_receiver)) == 2, timeout=30, what="marker")
    assert sorted(len(v) for v in traces_of(otlp_receiver).values()) == [1, 3]
    assert len(otlp_receiver.spans()) == 4  # no span of the first trace came twice


async def test_idle_turn_is_exported_incomplete(
    kafka_settings: KafkaSettings, otlp_receiver: Any
) -> None:
    settings = settings_for(kafka_settings, otlp_receiver.url, idle_timeout_ms=300)
    async with tracing(settings) as consumer:
        await produce_events(kafka_settings, EVENTS[:4])
        await wait_until(lambda: bool(otlp_receiver.spans()), timeout=30, what="an export")
        # Counted once the endpoint has answered, a moment after it received the request.
        await wait_until(lambda: exported(consumer, "incomplete") == 1, what="the export counted")
        assert sample(consumer, "agentstream_tracing_spans_exported_total") == 3
        assert sample(consumer, "agentstream_tracing_open_turns") == 0
    root, llm, tool = otlp_receiver.spans()
    assert attributes(root)["agentstream.incomplete_reason"] == "idle_timeout"
    assert root.status.code == 2
    assert attributes(tool)["agentstream.incomplete"] is True and tool.status.code == 2
    assert llm.status.code == 1 and "agentstream.incomplete" not in attributes(llm)


async def test_endpoint_down_counts_drops_and_keeps_consuming(
    kafka_settings: KafkaSettings, unique_name: str
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_for(
        kafka_settings,
        f"http://127.0.0.1:{port}/v1/traces",
        export_max_retries=1,
        export_wait_ms=200,
    )
    events_topic = kafka_settings.routing().events
    async with tracing(settings) as consumer:
        await produce_events(kafka_settings, EVENTS)

        async def all_committed() -> bool:
            found = await committed_offsets(settings, consumer.group_id, [events_topic])
            return sum(found.values()) == len(EVENTS)

        await wait_until(all_committed, timeout=30, what="records committed despite the outage")
        await wait_until(
            lambda: (
                sample(consumer, "agentstream_tracing_dropped_spans_total", reason="export_failed")
                == 3
            ),
            timeout=30,
            what="the trace's spans dropped and counted",
        )
        assert sample(consumer, "agentstream_tracing_export_failures_total") == 2


async def test_killed_process_turn_rebuilt_by_the_next_and_otel_env_honoured(
    kafka_settings: KafkaSettings, otlp_receiver: Any
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url.removesuffix("/v1/traces"),
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken",
        "OTEL_SERVICE_NAME": "fleet",
        "AGENTSTREAM_COMMIT_INTERVAL_MS": "100",
        "AGENTSTREAM_EXPORT_LINGER_MS": "5",
    }
    finished = turn(
        "f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1",
        ("message.received", {"content": "q"}),
        ("turn.ended", {"round": 0, "stop_reason": "end_turn"}),
    )
    events_topic = kafka_settings.routing().events
    group = f"{kafka_settings.topic_prefix}.tracing"
    with ServiceProcess("tracing", kafka_settings, env=env) as first:
        await first.wait_ready()
        await produce_events(kafka_settings, [*EVENTS[:4], *finished])
        await wait_until(lambda: len(traces_of(otlp_receiver)) == 1, timeout=30, what="a trace")

        async def all_committed() -> bool:
            found = await committed_offsets(kafka_settings, group, [events_topic])
            return sum(found.values()) == 6

        await wait_until(all_committed, timeout=30, what="six records committed")
        status, body = await http_get(first.port, "/metrics")
        assert status == 200 and b"agentstream_tracing_open_turns 1.0" in body
        first.kill()

    await produce_events(kafka_settings, EVENTS[4:])
    # the second process gets its endpoint from the command line instead (it wins over OTEL_*)
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: would fail
    options = ("--otlp-endpoint", otlp_receiver.url)
    with ServiceProcess("tracing", kafka_settings, *options, env=env) as second:
        await second.wait_ready()
        await wait_until(lambda: len(traces_of(otlp_receiver)) == 2, timeout=30, what="2 traces")
        assert await second.terminate() == 0
    grouped = traces_of(otlp_receiver)
    assert sorted(len(spans) for spans in grouped.values()) == [1, 3]
    assert len(otlp_receiver.spans()) == 4  # the finished turn was not exported again
    rebuilt = next(spans for spans in grouped.values() if len(spans) == 3)
    assert [s.name for s in rebuilt] == ["turn", "llm:m", "tool:search"]
    assert all(s.status.code == 1 for s in rebuilt)
    assert {h["authorization"] for h in otlp_receiver.headers} == {"Bearer t0ken"}
    resources = {
        kv.value.string_value
        for request in otlp_receiver.requests
        for rs in request.resource_spans
        for kv in rs.resource.attributes
        if kv.key == "service.name"
    }
    assert resources == {"fleet"}


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


async def test_an_event_that_fails_is_dead_lettered_alone_and_deep_arguments_are_traced(
    kafka_settings: KafkaSettings, otlp_receiver: Any
) -> None:
    """One event the assembler cannot take failed the whole batch: retried, the events before
    it were added to their turns again (a second, unpaired span), then all dead-lettered. A
    tool call with arguments 900 levels deep (the decoder takes them) was such an event."""
    settings = settings_for(kafka_settings, otlp_receiver.url)
    events = turn(
        "d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7d7",
        ("message.received", {"content": "q"}),
        ("tool.called", {"name": "deep", "args": nested(900)}),
        ("llm.call.started", {"round": 0, "model": "m", "poison": True}),
        ("tool.result", {"name": "deep", "output": "ok"}),
        ("turn.ended", {"round": 0, "stop_reason": "end_turn"}),
    )
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings) as service:
        add = service.assembler.add

        def failing(event: Event, *, scope: int) -> Any:
            if event.data.get("poison"):
                raise RuntimeError("boom")
            return add(event, scope=scope)

        service.assembler.add = failing  # type: ignore[method-assign]
        async with running_consumer(consumer):
            await produce_events(kafka_settings, events)
            await wait_until(lambda: len(traces_of(otlp_receiver)) == 1, timeout=30, what="trace")
            [letter] = await read_records(kafka_settings, kafka_settings.routing().dlq, 1)
    headers = dict(letter.headers)
    assert headers[H_OFFSET] == b"2"
    assert headers[H_REASON] == b"tracing could not handle the event: RuntimeError: boom"
    (spans,) = traces_of(otlp_receiver).values()
    assert [s.name for s in spans] == ["turn", "tool:deep"]  # each once, the tool call paired
    tool = spans[1]
    assert tool.status.code == 1 and attributes(tool)["mlflow.spanOutputs"] == "ok"


async def test_an_event_stamped_far_from_its_record_is_timed_by_the_record(
    kafka_settings: KafkaSettings, otlp_receiver: Any
) -> None:
    """An LLM call that completed in the year 9999 (a wrong timestamp field): its span and the
    turn's lasted eight thousand years. Timed by its record, it ends when it was produced."""
    settings = settings_for(kafka_settings, otlp_receiver.url)
    session = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1"
    started, completed, ended = turn(
        session,
        ("llm.call.started", {"round": 0, "model": "m"}),
        ("llm.call.completed", {"round": 0, "stop_reason": "end_turn", "model": "m"}),
        ("turn.ended", {"round": 0, "stop_reason": "end_turn"}),
    )
    completed.timestamp = datetime(9999, 12, 31, tzinfo=UTC)
    async with tracing(settings) as consumer:
        await produce_events(kafka_settings, [started])
        await produce_raw(  # its record stamped now, by the client
            kafka_settings,
            kafka_settings.routing().events,
            encode_event(completed),
            key=session.encode(),
            headers=event_headers(completed),
        )
        await produce_events(kafka_settings, [ended])
        await wait_until(lambda: len(traces_of(otlp_receiver)) == 1, timeout=30, what="trace")
        labels = {"service": "tracing", "topic": kafka_settings.routing().events}
        skewed = sample(consumer, "agentstream_consumer_clock_skewed_events_total", **labels)
    assert skewed == 1
    (spans,) = traces_of(otlp_receiver).values()
    for span in spans:
        assert span.end_time_unix_nano - span.start_time_unix_nano < 600 * 10**9, span.name
