"""The tracing service's metrics, on the registry it is given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

DROP_REASONS = ("queue_full", "export_failed", "rejected", "turn_too_large", "shutdown")


class TracingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.spans_exported = Counter(
            "agentstream_tracing_spans_exported",
            "Spans the OTLP endpoint accepted.",
            registry=registry,
        )
        self.traces_exported = Counter(
            "agentstream_tracing_traces_exported",
            "Traces the OTLP endpoint accepted, by outcome: complete (the turn ended) or "
            "incomplete (closed by idle timeout, eviction, duration limit or a new turn).",
            ["outcome"],
            registry=registry,
        )
        self.export_failures = Counter(
            "agentstream_tracing_export_failures",
            "Failed OTLP requests (each attempt, retries included).",
            registry=registry,
        )
        self.dropped_spans = Counter(
            "agentstream_tracing_dropped_spans",
            "Spans never delivered, by reason.",
            ["reason"],
            registry=registry,
        )
        self.open_turns = Gauge(
            "agentstream_tracing_open_turns",
            "Turns being assembled (not yet exported).",
            registry=registry,
        )
        self.ignored_events = Counter(
            "agentstream_tracing_ignored_events",
            "Traced events that belonged to no open turn or were redelivered, by reason.",
            ["reason"],
            registry=registry,
        )
        for outcome in ("complete", "incomplete"):
            self.traces_exported.labels(outcome=outcome)
        for reason in DROP_REASONS:
            self.dropped_spans.labels(reason=reason)
