"""The OTLP/HTTP exporter against an in-process receiver: encoding, batching, retries, drops."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.tls import TlsFiles, encrypted_key

from agentstream.consumers.tracing import Trace, TraceAssembler
from agentstream.consumers.tracing.exporter import ExportPolicy, OtlpHttpExporter
from agentstream.consumers.tracing.metrics import TracingMetrics
from agentstream.consumers.tracing.settings import ExportTarget, TracingSettings, export_target
from agentstream.schemas import Event
from agentstream.schemas.errors import ConfigurationError

from .conftest import Receiver, serving_receiver

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_trace(n: int, tools: int = 1) -> Trace:
    session = f"{n:032x}"
    events = [("message.received", {"content": f"q{n}"})]
    for i in range(tools):
        events += [("tool.called", {"name": f"t{i}"}), ("tool.result", {"name": f"t{i}"})]
    events.append(("turn.ended", {"round": 0, "stop_reason": "end_turn"}))
    assembler = TraceAssembler()
    out: list[Trace] = []
    for i, (type_, data) in enumerate(events):
        event = Event(
            event_id=f"{n}-{i}",
            type=type_,
            timestamp=T0 + timedelta(milliseconds=i),
            agent_id="agent-a",
            session_id=session,
            source="pod-1",
            data=data,
        )
        out += assembler.add(event)
    (trace,) = out
    return trace


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def exporter_for(
    url: str, registry: CollectorRegistry, *, target: ExportTarget | None = None, **policy: float
) -> OtlpHttpExporter:
    target = target or ExportTarget(
        endpoint=url, headers={"authorization": "Bearer s3cret"}, timeout_s=2
    )
    defaults = {"linger_s": 0.01, "backoff_s": 0.01, "max_backoff_s": 0.05}
    return OtlpHttpExporter(
        target,
        TracingMetrics(registry),
        ExportPolicy(**{**defaults, **policy}),  # type: ignore[arg-type]
    )


async def test_delivers_protobuf_with_headers_ids_and_resource(otlp_receiver: Any) -> None:
    registry = CollectorRegistry()
    exporter = exporter_for(otlp_receiver.url, registry)
    await exporter.start()
    try:
        trace = make_trace(1, tools=2)
        assert await exporter.export([trace], wait_s=5)
    finally:
        await exporter.close()
    (request,) = otlp_receiver.requests
    assert otlp_receiver.headers[0]["authorization"] == "Bearer s3cret"
    assert otlp_receiver.headers[0]["content-type"] == "application/x-protobuf"
    (rs,) = request.resource_spans
    resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
    assert resource == {
        "service.name": "agent-a",
        "gen_ai.agent.id": "agent-a",
        "service.instance.id": "pod-1",
    }
    spans = list(rs.scope_spans[0].spans)
    assert [s.name for s in spans] == ["turn", "tool:t0", "tool:t1"]
    assert all(s.trace_id == trace.trace_id for s in spans)
    assert spans[1].parent_span_id == spans[0].span_id and not spans[0].parent_span_id
    assert spans[0].status.code == 1  # OK
    assert value(registry, "agentstream_tracing_spans_exported_total") == 3
    assert value(registry, "agentstream_tracing_traces_exported_total", outcome="complete") == 1


async def test_batches_whole_traces_up_to_the_span_limit(otlp_receiver: Any) -> None:
    registry = CollectorRegistry()
    exporter = exporter_for(otlp_receiver.url, registry, batch_spans=7, linger_s=0.05)
    await exporter.start()
    try:
        traces = [make_trace(n, tools=2) for n in range(6)]  # 3 spans each
        assert await exporter.export(traces, wait_s=5)
    finally:
        await exporter.close()
    sizes = [
        sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans)
        for r in otlp_receiver.requests
    ]
    assert sizes == [6, 6, 6]  # two whole traces per request, never split
    assert len(otlp_receiver.spans()) == 18


async def test_retries_retryable_answers_then_delivers(otlp_receiver: Any) -> None:
    otlp_receiver.script = [503, 429, 502]
    registry = CollectorRegistry()
    exporter = exporter_for(otlp_receiver.url, registry, max_retries=5)
    await exporter.start()
    try:
        assert await exporter.export([make_trace(1)], wait_s=5)
    finally:
        await exporter.close()
    assert otlp_receiver.attempts == 4 and len(otlp_receiver.requests) == 1
    assert value(registry, "agentstream_tracing_export_failures_total") == 3


async def answered_once(receiver: Any, status: int) -> CollectorRegistry:
    """Export one trace (2 spans) to ``receiver`` answering ``status``: not delivered, one
    attempt, dropped as rejected. The exporter's registry."""
    receiver.script = [status]
    registry = CollectorRegistry()
    exporter = exporter_for(receiver.url, registry)
    await exporter.start()
    try:
        assert not await exporter.export([make_trace(1)], wait_s=5)
    finally:
        await exporter.close()
    assert receiver.attempts == 1
    assert value(registry, "agentstream_tracing_dropped_spans_total", reason="rejected") == 2
    return registry


async def test_non_retryable_answer_drops_and_counts(otlp_receiver: Any) -> None:
    await answered_once(otlp_receiver, 400)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_drops_and_names_the_new_address(
    otlp_receiver: Any, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    # urllib would follow 301/302/303 with a GET without the spans: a 200 to it is no export
    registry = await answered_once(otlp_receiver, status)
    assert otlp_receiver.gets == 0
    assert value(registry, "agentstream_tracing_spans_exported_total") == 0
    assert f"answered HTTP {status} (a redirect to /v1/traces/" in caplog.text


async def export_over_tls(receiver: Receiver, target: ExportTarget) -> CollectorRegistry:
    registry = CollectorRegistry()
    exporter = exporter_for(receiver.url, registry, target=target, max_retries=0)
    await exporter.start()
    try:
        await exporter.export([make_trace(1)], wait_s=5)
    finally:
        await exporter.close()
    return registry


async def test_an_https_endpoint_is_verified_with_the_ca_given(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """An OTLP collector behind a certificate of an internal CA: OTEL_EXPORTER_OTLP_CERTIFICATE
    (or ours) trusts it; an unrelated CA is refused with the verification error."""
    with serving_receiver(tls_files) as receiver:
        trusted = ExportTarget(endpoint=receiver.url, timeout_s=2, ca_file=str(tls_files.ca))
        await export_over_tls(receiver, trusted)
        assert len(receiver.requests) == 1
        wrong = ExportTarget(endpoint=receiver.url, timeout_s=2, ca_file=str(tls_files.other_ca))
        registry = await export_over_tls(receiver, wrong)
        assert len(receiver.requests) == 1
    assert value(registry, "agentstream_tracing_dropped_spans_total", reason="export_failed") == 2
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_mutual_tls_sends_the_client_certificate(tls_files: TlsFiles) -> None:
    # The server certificate doubles as the client's here: signed by the CA the server trusts.
    with serving_receiver(tls_files, client_ca=tls_files.ca) as receiver:
        anonymous = ExportTarget(endpoint=receiver.url, timeout_s=2, ca_file=str(tls_files.ca))
        await export_over_tls(receiver, anonymous)
        assert receiver.requests == []  # the handshake was refused
        client = ExportTarget(
            endpoint=receiver.url,
            timeout_s=2,
            ca_file=str(tls_files.ca),
            client_cert=str(tls_files.cert),
            client_key=str(tls_files.key),
        )
        await export_over_tls(receiver, client)
        assert len(receiver.requests) == 1


def test_tls_files_follow_otel_variables_and_unreadable_ones_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, tls_files: TlsFiles, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tls_files.other_ca))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(tls_files.ca))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(tls_files.cert))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(tls_files.key))
    target = export_target(TracingSettings())
    assert (target.ca_file, target.client_cert, target.client_key) == (
        str(tls_files.ca),
        str(tls_files.cert),
        str(tls_files.key),
    )
    missing = tmp_path / "missing.pem"
    monkeypatch.setenv("AGENTSTREAM_OTLP_CERTIFICATE", str(missing))
    with pytest.raises(ConfigurationError) as caught:
        TracingSettings()
    assert f"OTLP TLS: expected readable PEM files ({missing}, {tls_files.cert}" in str(
        caught.value
    )


def test_an_encrypted_client_key_is_refused_not_asked_for(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    key = encrypted_key(tls_files, tmp_path, "pw-1")
    target = ExportTarget(endpoint="https://c:4318/v1/traces", client_cert=str(tls_files.cert),
                          client_key=str(key))  # fmt: skip
    with pytest.raises(ConfigurationError, match="is an encrypted private key: give an unenc"):
        target.ssl_context()


async def test_endpoint_down_bounded_queue_counted_drops_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Traces dropped for a full queue were counted but never logged."""
    registry = CollectorRegistry()
    # Nothing listens on this port: every POST fails to connect.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exporter = exporter_for(
        f"http://127.0.0.1:{port}/v1/traces", registry, queue_spans=6, max_retries=2
    )
    await exporter.start()
    try:
        traces = [make_trace(n) for n in range(10)]  # 2 spans each
        futures = exporter.submit(traces)
        assert exporter.queued_spans <= 6
        results = await asyncio.gather(*futures)
    finally:
        await exporter.close()
    assert not any(results)
    dropped_full = value(registry, "agentstream_tracing_dropped_spans_total", reason="queue_full")
    dropped_failed = value(
        registry, "agentstream_tracing_dropped_spans_total", reason="export_failed"
    )
    assert dropped_full >= 8 and dropped_full + dropped_failed == 20
    assert value(registry, "agentstream_tracing_export_failures_total") >= 3
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("agentstream")]
    # The first problem is said at once; what followed within the minute, at shutdown.
    assert len(lines) == 2, lines
    assert "new traces are dropped" in lines[0]
    assert lines[1].startswith("tracing export: at shutdown (") and "spans dropped)" in lines[1]


async def test_log_lines_leave_out_credentials_in_the_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = CollectorRegistry()
    url = f"http://user:s3cret-pw@127.0.0.1:{port}/v1/traces?api_key=s3cret-key"
    exporter = exporter_for(url, registry, max_retries=0)
    await exporter.start()
    try:
        assert not await exporter.export([make_trace(1)], wait_s=5)
    finally:
        await exporter.close()
    assert f"tracing export: http://127.0.0.1:{port}/v1/traces?…: 2 spans dropped" in caplog.text
    assert "s3cret" not in caplog.text


async def test_export_waits_at_most_the_bound_and_keeps_retrying(otlp_receiver: Any) -> None:
    otlp_receiver.script = [503] * 3
    registry = CollectorRegistry()
    exporter = exporter_for(otlp_receiver.url, registry, backoff_s=0.2, max_backoff_s=0.2)
    await exporter.start()
    try:
        assert not await exporter.export([make_trace(1)], wait_s=0.05)
        for _ in range(100):  # delivered later, in the background
            if otlp_receiver.requests:
                break
            await asyncio.sleep(0.05)
    finally:
        await exporter.close()
    assert len(otlp_receiver.requests) == 1


def test_settings_follow_otel_variables_and_ours_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-a=1,authorization=Basic%20abc")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fleet")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    target = export_target(TracingSettings())
    assert target.endpoint == "http://collector:4318/v1/traces"
    assert target.headers == {"x-a": "1", "authorization": "Basic abc"}
    assert (target.service_name, target.compression) == ("fleet", "gzip")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/custom")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-a=2")
    target = export_target(TracingSettings())
    assert target.endpoint == "http://traces:4318/custom" and target.headers["x-a"] == "2"
    monkeypatch.setenv("AGENTSTREAM_OTLP_ENDPOINT", "https://ours:443/v1/traces")
    monkeypatch.setenv("AGENTSTREAM_OTLP_HEADERS", "x-a=3")
    settings = TracingSettings()
    target = export_target(settings)
    assert target.endpoint == "https://ours:443/v1/traces" and target.headers["x-a"] == "3"
    assert settings.http_port == 9105
    # Refused when the settings are read (at start, before any broker is waited for).
    monkeypatch.setenv("AGENTSTREAM_OTLP_HEADERS", "novalue")
    with pytest.raises(ConfigurationError, match="key=value"):
        TracingSettings()
    for variable in ("AGENTSTREAM_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):  # a secret
        monkeypatch.setenv(variable, "x-a=1,x-api-key:s3cret-key")  # ':' for '='
        with pytest.raises(ConfigurationError, match="without '='") as refused:
            TracingSettings()
        assert "s3cret" not in str(refused.value)
        monkeypatch.setenv(variable, "x-a=1")
    monkeypatch.delenv("AGENTSTREAM_OTLP_HEADERS")
    for endpoint in ("collector:4318/v1/traces", "http:///v1/traces", "http://c:43x8/v1"):
        monkeypatch.setenv("AGENTSTREAM_OTLP_ENDPOINT", endpoint)
        with pytest.raises(ConfigurationError, match="OTLP endpoint: expected an http"):
            TracingSettings()


def test_an_otlp_protocol_other_than_http_protobuf_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` with the collector's gRPC port was taken as an
    OTLP/HTTP endpoint: every export failed, and the log said only that the POST did."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigurationError) as refused:
        TracingSettings()
    assert "OTEL_EXPORTER_OTLP_PROTOCOL): expected http/protobuf" in str(refused.value)
    assert "got 'grpc'" in str(refused.value) and "4318" in str(refused.value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        TracingSettings()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")  # the signal's wins
    assert export_target(TracingSettings()).endpoint == "http://collector:4317/v1/traces"


async def test_gzip_compression(otlp_receiver: Any) -> None:
    registry = CollectorRegistry()
    target = ExportTarget(endpoint=otlp_receiver.url, compression="gzip", service_name="fleet")
    exporter = OtlpHttpExporter(target, TracingMetrics(registry), ExportPolicy(linger_s=0))
    await exporter.start()
    try:
        assert await exporter.export([make_trace(3)], wait_s=5)
    finally:
        await exporter.close()
    assert otlp_receiver.headers[0]["content-encoding"] == "gzip"
    (rs,) = otlp_receiver.requests[0].resource_spans
    assert rs.resource.attributes[0].value.string_value == "fleet"


def test_nested_attribute_values_encode_as_otlp_any_values() -> None:
    from agentstream.consumers.tracing.otlp import any_value

    value = any_value({"city": "Paris", "n": 3, "ok": True, "t": 1.5, "tags": ["a", 2], "e": {}})
    fields = {kv.key: kv.value for kv in value.kvlist_value.values}
    assert fields["city"].string_value == "Paris" and fields["n"].int_value == 3
    assert fields["ok"].bool_value is True and fields["t"].double_value == 1.5
    assert [v.WhichOneof("value") for v in fields["tags"].array_value.values] == [
        "string_value",
        "int_value",
    ]
    assert fields["e"].WhichOneof("value") == "kvlist_value"  # an empty map stays a map
    assert any_value(2**70).string_value == str(2**70)


async def test_close_during_backoff_counts_the_batch_in_flight(
    otlp_receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch retried, then dropped at shutdown, left no line at all."""
    otlp_receiver.script = [503] * 10
    registry = CollectorRegistry()
    exporter = exporter_for(otlp_receiver.url, registry, backoff_s=30, max_backoff_s=30)
    await exporter.start()
    (future,) = exporter.submit([make_trace(1)])
    await wait_for_attempt(otlp_receiver)
    await exporter.close(timeout_s=0.2)
    assert future.done() and future.result() is False
    assert value(registry, "agentstream_tracing_dropped_spans_total", reason="shutdown") == 2
    assert "2 spans not delivered to" in caplog.text and "by shutdown were dropped" in caplog.text
    assert "HTTP 503; retrying" in caplog.text  # said at the first failed attempt


async def wait_for_attempt(receiver: Any) -> None:
    for _ in range(200):
        if receiver.attempts:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the exporter never POSTed")
