"""The tracing service: agent turns assembled from the event stream into OpenTelemetry traces
(LLM calls and tool calls as spans) and exported over OTLP/HTTP to MLflow, Jaeger, Tempo or any
OpenTelemetry endpoint. The assembly (``assembler``, ``turn``, ``pairing``) is pure; ``otlp``
encodes, ``exporter`` delivers, ``service`` wires it on the consumer runtime."""

from .assembler import TraceAssembler
from .spans import Span, SpanEvent, StatusCode, Trace
from .turn import TRACED_TYPES, TurnBuilder, TurnLimits

__all__ = [
    "TRACED_TYPES",
    "Span",
    "SpanEvent",
    "StatusCode",
    "Trace",
    "TraceAssembler",
    "TurnBuilder",
    "TurnLimits",
]
