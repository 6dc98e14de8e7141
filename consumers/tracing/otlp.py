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
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from .spans import Span, Trace

SCOPE_NAME = "agentstream.tracing"
SCOPE_VERSION = "1"
DEFAULT_SERVICE_NAME = "agentstream-agent"


def set_value(target: AnyValue, value: Any) -> None:
    """Write a JSON-like Python value into an OTLP ``AnyValue`` (maps and lists nest)."""
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, Mapping):
        kvlist = target.kvlist_value
        kvlist.SetInParent()  # an empty map is still a map
        add_attributes(kvlist.values, value)
    elif isinstance(value, list | tuple):
        array = target.array_value
        array.SetInParent()
        for item in value:
            set_value(array.values.add(), item)
    elif value is not None:
        target.string_value = str(value)


def any_value(value: Any) -> AnyValue:
    """A JSON-like Python value as a new OTLP ``AnyValue``."""
    result = AnyValue()
    set_value(result, value)
    return result


def add_attributes(target: Any, attributes: Mapping[str, Any]) -> None:
    """Append ``attributes`` to a repeated ``KeyValue`` field (built in place: fast)."""
    for key, value in attributes.items():
        kv = target.add()
        kv.key = str(key)
        set_value(kv.value, value)


def key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=any_value(v)) for k, v in attributes.items()]


def _fill_span(proto: ProtoSpan, span: Span) -> None:
    proto.trace_id = span.trace_id
    proto.span_id = span.span_id
    if span.parent_span_id is not None:
        proto.parent_span_id = span.parent_span_id
    proto.name = span.name
    proto.kind = int(span.kind)  # type: ignore[assignment]
    proto.start_time_unix_nano = span.start_ns
    proto.end_time_unix_nano = span.end_ns if span.end_ns is not None else span.start_ns
    add_attributes(proto.attributes, span.attributes)
    if span.status or span.status_message:
        proto.status.code = int(span.status)  # type: ignore[assignment]
        proto.status.message = span.status_message
    for event in span.events:
        added = proto.events.add()
        added.time_unix_nano = event.time_ns
        added.name = event.name
        add_attributes(added.attributes, event.attributes)


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
    resource_spans = ResourceSpans(resource=Resource(attributes=key_values(attrs)))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.CopyFrom(InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION))
    for trace in traces:
        for span in trace.spans:
            _fill_span(scope_spans.spans.add(), span)
    return resource_spans


def encode(
    traces: Iterable[Trace],
    *,
    service_name: str | None = None,
    resource: Mapping[str, str] | None = None,
) -> bytes:
    """The serialized request body for ``POST /v1/traces`` (``application/x-protobuf``)."""
    request = encode_request(traces, service_name=service_name, resource=resource)
    return bytes(request.SerializeToString())
