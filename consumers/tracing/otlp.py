"""Traces → an OTLP ``ExportTraceServiceRequest`` (protobuf), built directly from the
``opentelemetry-proto`` messages: no OpenTelemetry SDK in between.

Spans are grouped into one ``ResourceSpans`` per (agent, pod): ``service.name`` is the
configured name (``OTEL_SERVICE_NAME``) or, when none is set, the agent id; ``gen_ai.agent.id``
and ``service.instance.id`` (the event ``source``) say which agent and pod emitted the events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from .spans import Span, Trace

SCOPE_NAME = "agentstream.tracing"
SCOPE_VERSION = "1"
DEFAULT_SERVICE_NAME = "agentstream-agent"


def any_value(value: Any) -> AnyValue:
    """A JSON-like Python value as an OTLP ``AnyValue`` (maps and lists nest)."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, Mapping):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(value)))
    if isinstance(value, list | tuple):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if value is None:
        return AnyValue()
    return AnyValue(string_value=str(value))


def key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=any_value(v)) for k, v in attributes.items()]


def _proto_span(span: Span) -> ProtoSpan:
    proto = ProtoSpan(
        trace_id=span.trace_id,
        span_id=span.span_id,
        name=span.name,
        kind=int(span.kind),  # type: ignore[arg-type]
        start_time_unix_nano=span.start_ns,
        end_time_unix_nano=span.end_ns if span.end_ns is not None else span.start_ns,
        attributes=key_values(span.attributes),
        status=Status(code=int(span.status), message=span.status_message),  # type: ignore[arg-type]
    )
    if span.parent_span_id is not None:
        proto.parent_span_id = span.parent_span_id
    for event in span.events:
        proto.events.add(
            time_unix_nano=event.time_ns, name=event.name, attributes=key_values(event.attributes)
        )
    return proto


def resource_attributes(
    trace: Trace, service_name: str | None, extra: Mapping[str, str]
) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(extra)
    attrs["service.name"] = service_name or trace.agent_id or DEFAULT_SERVICE_NAME
    if trace.agent_id:
        attrs["gen_ai.agent.id"] = trace.agent_id
    if trace.source:
        attrs["service.instance.id"] = trace.source
    return attrs


def encode_request(
    traces: Iterable[Trace],
    *,
    service_name: str | None = None,
    resource: Mapping[str, str] | None = None,
) -> ExportTraceServiceRequest:
    """One request holding every span of ``traces``."""
    groups: dict[tuple[str, str], list[Trace]] = {}
    for trace in traces:
        groups.setdefault((trace.agent_id, trace.source), []).append(trace)
    request = ExportTraceServiceRequest()
    for members in groups.values():
        request.resource_spans.append(_resource_spans(members, service_name, resource or {}))
    return request


def _resource_spans(
    traces: Sequence[Trace], service_name: str | None, extra: Mapping[str, str]
) -> ResourceSpans:
    attrs = resource_attributes(traces[0], service_name, extra)
    scope_spans = ScopeSpans(
        scope=InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION),
        spans=[_proto_span(span) for trace in traces for span in trace.spans],
    )
    return ResourceSpans(resource=Resource(attributes=key_values(attrs)), scope_spans=[scope_spans])


def encode(
    traces: Iterable[Trace],
    *,
    service_name: str | None = None,
    resource: Mapping[str, str] | None = None,
) -> bytes:
    """The serialized request body for ``POST /v1/traces`` (``application/x-protobuf``)."""
    request = encode_request(traces, service_name=service_name, resource=resource)
    return bytes(request.SerializeToString())
