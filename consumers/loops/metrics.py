"""The loop service's metrics, registered on the consumer's registry (bounded labels only)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from .detector import Level, Pattern


class LoopMetrics:
    def __init__(self, registry: CollectorRegistry, tracked_scopes: Callable[[], float]) -> None:
        self.findings = Counter(
            "agentstream_loop_findings_total",
            "Loop findings reported (live processing; once per streak and level).",
            ["pattern", "level"],
            registry=registry,
        )
        self.alerts = Counter(
            "agentstream_loop_alerts_published_total",
            "Events published: kind=warning|block (alerts topic), control (pause directives).",
            ["kind"],
            registry=registry,
        )
        self.stale_directives = Counter(
            "agentstream_loop_stale_directives_skipped_total",
            "Pause directives not sent: the triggering event was older than control_max_age_s "
            "(a backlog caught up).",
            registry=registry,
        )
        self.duplicates = Counter(
            "agentstream_loop_duplicate_alerts_skipped_total",
            "Alerts not published because the alerts topic already held them (after a restart).",
            registry=registry,
        )
        self.webhook = Counter(
            "agentstream_loop_webhook_deliveries_total",
            "Webhook deliveries by outcome (delivered, failed after retries, dropped: queue full, "
            "stale: not sent, the triggering event was older than webhook_max_age_s).",
            ["outcome"],
            registry=registry,
        )
        self.scopes = Gauge(
            "agentstream_loop_tracked_scopes",
            "Scopes (agent turns or sessions) whose state the detector holds.",
            registry=registry,
        )
        self.scopes.set_function(tracked_scopes)
        self.evictions = Counter(
            "agentstream_loop_evictions_total",
            "Scope states dropped: ended (turn/session end), ttl, lru (over max_scopes), revoked.",
            ["reason"],
            registry=registry,
        )
        self.restored = Counter(
            "agentstream_loop_restored_records_total",
            "Records read again to rebuild state after a partition assignment.",
            registry=registry,
        )
        self.restore_failures = Counter(
            "agentstream_loop_restore_failures_total",
            "Assignments whose state could not be fully rebuilt (see the log).",
            registry=registry,
        )
        self.restore_seconds = Counter(
            "agentstream_loop_restore_seconds_total",
            "Time spent rebuilding state after partition assignments.",
            registry=registry,
        )
        for pattern in Pattern:
            for level in (Level.WARNING, Level.CRITICAL):
                if pattern is Pattern.MAX_CALLS and level is Level.WARNING:
                    continue
                self.findings.labels(pattern.value, level.label)
        for kind in ("warning", "block", "control"):
            self.alerts.labels(kind)
        for outcome in ("delivered", "failed", "dropped", "stale"):
            self.webhook.labels(outcome)
        for reason in ("ended", "ttl", "lru", "revoked"):
            self.evictions.labels(reason)
