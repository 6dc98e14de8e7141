"""The budget service's Prometheus metrics (on the consumer's registry; bounded labels only:
scope kinds, dimensions and levels, never session, agent or user ids)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .accounting import Charge, ScopeKind, Signal


class BudgetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.signals = Counter(
            "agentstream_budget_signals_total",
            "Budget warnings and exceedances published.",
            ["dimension", "level", "scope_kind"],
            registry=registry,
        )
        self.tracked_scopes = Gauge(
            "agentstream_budget_tracked_scopes",
            "Scopes whose running totals this process holds.",
            ["scope_kind"],
            registry=registry,
        )
        self.stale_directives = Counter(
            "agentstream_budget_stale_directives_skipped_total",
            "Pause directives not sent: the exceeding event was older than "
            "budget_pause_max_age_s (a backlog caught up).",
            registry=registry,
        )
        self.tokens = Counter(
            "agentstream_budget_tokens_total",
            "Tokens counted into session budgets, by source (reported usage or estimate).",
            ["source"],
            registry=registry,
        )
        self.unpriced_tokens = Counter(
            "agentstream_budget_unpriced_tokens_total",
            "Tokens counted at cost 0: their model has no price in the config (or is unknown).",
            registry=registry,
        )
        self.cost = Counter(
            "agentstream_budget_cost_usd_total",
            "Estimated cost counted into session budgets, in US dollars.",
            registry=registry,
        )
        self.replayed = Counter(
            "agentstream_budget_replayed_records_total",
            "Records skipped because their scope had applied them (a replay) or their event "
            "(the same event_id delivered again) already.",
            ["stage"],
            registry=registry,
        )
        self.invalid = Counter(
            "agentstream_budget_invalid_records_total",
            "Repartition records that could not be read (logged and skipped).",
            registry=registry,
        )
        self.restored_scopes = Counter(
            "agentstream_budget_restored_scopes_total",
            "Scope states read back from the changelog on assignment.",
            ["stage"],
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "agentstream_budget_restore_seconds",
            "Time to restore the state of newly assigned partitions.",
            ["stage"],
            registry=registry,
        )
        self.changelog_records = Counter(
            "agentstream_budget_changelog_records_total",
            "Scope states and tombstones written to the changelog topic.",
            ["stage"],
            registry=registry,
        )
        for kind in ScopeKind:
            self.tracked_scopes.labels(kind.value).set(0)

    def charged(self, charge: Charge) -> None:
        if charge.tokens:
            estimated = charge.estimated_tokens
            if estimated:
                self.tokens.labels("estimated").inc(estimated)
            if charge.tokens - estimated:
                self.tokens.labels("reported").inc(charge.tokens - estimated)
        if charge.unpriced_tokens:
            self.unpriced_tokens.inc(charge.unpriced_tokens)
        if charge.cost_usd:
            self.cost.inc(charge.cost_usd)

    def signalled(self, signal: Signal) -> None:
        self.signals.labels(
            signal.dimension.value, signal.level.name.lower(), signal.scope_kind.value
        ).inc()
