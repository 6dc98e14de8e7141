"""FleetMetrics from events, without Kafka: every metric, its labels and its bounds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agentstream.consumers.metrics import BoundedLabel, FleetMetrics
from agentstream.consumers.runtime.eventtime import EventTime
from agentstream.schemas import Event

EVENTS, ALERTS, TOKENS = "p.events", "p.alerts", "p.tokens"
NOW = 1_800_000_000.0


@dataclass(frozen=True)
class Rec:
    event: Event
    topic: str = EVENTS
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = -1


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


def ev(
    type_: str,
    data: dict[str, Any] | None = None,
    *,
    at: float = NOW - 1.0,
    session: str = "s1",
    agent: str = "agent-a",
) -> Event:
    return Event(
        type=type_,
        timestamp=datetime.fromtimestamp(at, UTC),
        agent_id=agent,
        session_id=session,
        data=data or {},
    )


class Harness:
    def __init__(self, max_skew_ms: int | None = None, **options: Any) -> None:
        self.now = NOW
        self.registry = CollectorRegistry()
        if max_skew_ms is not None:
            options["event_time"] = EventTime(self.registry, "metrics", max_skew_ms)
        self.metrics = FleetMetrics(
            self.registry,
            events_topic=EVENTS,
            alerts_topic=ALERTS,
            clock=lambda: self.now,
            **options,
        )

    def feed(
        self, *events: Event, topic: str = EVENTS, partition: int = 0, record_ms: int = -1
    ) -> None:
        self.metrics.observe_batch([Rec(e, topic, partition, 0, record_ms) for e in events])

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


def test_events_by_type_and_agent_with_bounded_labels() -> None:
    h = Harness(agents=BoundedLabel(2))
    h.feed(
        ev("message.received", {"content": "hi"}, agent="a1"),
        ev("message.received", {"content": "hi"}, agent="a2"),
        ev("message.received", {"content": "hi"}, agent="a3"),
        ev("custom.thing", agent="a1"),
        ev("turn.started", {"round": 0}, agent=""),
    )
    assert h.value("agentstream_events_total", type="message.received", agent="a1") == 1
    assert h.value("agentstream_events_total", type="message.received", agent="a2") == 1
    assert h.value("agentstream_events_total", type="message.received", agent="other") == 1
    assert h.value("agentstream_events_total", type="other", agent="a1") == 1
    assert h.value("agentstream_events_total", type="turn.started", agent="unknown") == 1


def test_tool_calls_pair_by_call_id_then_by_name_in_order() -> None:
    h = Harness()
    h.feed(
        ev("tool.called", {"name": "search", "call_id": "c1"}, at=NOW - 10),
        ev("tool.called", {"name": "search", "call_id": "c2"}, at=NOW - 9),
        ev("tool.called", {"name": "fetch"}, at=NOW - 8),
        ev("tool.called", {"name": "fetch"}, at=NOW - 7),
        # c2 finishes first: by call id it gets its own start, not c1's.
        ev("tool.result", {"name": "search", "call_id": "c2"}, at=NOW - 8.5),
        ev("tool.error", {"name": "search", "call_id": "c1", "error": "x"}, at=NOW - 6),
        ev("tool.result", {"name": "fetch"}, at=NOW - 7.5),  # the first fetch: 0.5 s
        ev("tool.result", {"name": "fetch"}, at=NOW - 2),  # the second: 5 s
        ev("tool.result", {"name": "fetch"}, at=NOW - 1),  # no start
    )
    assert h.value("agentstream_tool_calls_total", tool="search", outcome="success") == 1
    assert h.value("agentstream_tool_calls_total", tool="search", outcome="error") == 1
    assert h.value("agentstream_tool_calls_total", tool="fetch", outcome="success") == 3
    assert h.value("agentstream_tool_duration_seconds_count", tool="search") == 2
    assert h.value("agentstream_tool_duration_seconds_sum", tool="search") == pytest.approx(4.5)
    assert h.value("agentstream_tool_duration_seconds_count", tool="fetch") == 2
    assert h.value("agentstream_tool_duration_seconds_sum", tool="fetch") == pytest.approx(5.5)
    assert h.value("agentstream_tool_duration_seconds_bucket", tool="fetch", le="0.5") == 1
    assert h.value("agentstream_unpaired_calls_total", call="tool", reason="no_start") == 1


def test_tool_pairing_stays_inside_a_session() -> None:
    h = Harness()
    h.feed(
        ev("tool.called", {"name": "search"}, at=NOW - 10, session="s1"),
        ev("tool.result", {"name": "search"}, at=NOW - 1, session="s2"),
    )
    assert h.value("agentstream_tool_calls_total", tool="search", outcome="success") == 1
    assert h.value("agentstream_tool_duration_seconds_count", tool="search") == 0


def test_audit_tool_outcomes_and_duration_ms() -> None:
    h = Harness()
    h.feed(
        ev("audit.tool_call_complete", {"tool_name": "shell", "duration_ms": 250.0}),
        ev("audit.tool_call_complete", {"tool_name": "shell", "status": "timeout"}),
        ev("audit.tool_call_failure", {"tool_name": "shell", "error_type": "ValueError"}),
        ev("audit.tool_call_complete", {"tool_name": "shell", "duration_ms": "fast"}),
        # one 1e308 made the tool's _sum absorb every later duration: over a week is no duration
        ev("audit.tool_call_complete", {"tool_name": "shell", "duration_ms": 1e308}),
    )
    assert h.value("agentstream_tool_calls_total", tool="shell", outcome="success") == 3
    assert h.value("agentstream_tool_calls_total", tool="shell", outcome="error") == 2
    # duration_ms defaults to 0.0 in Calute: the timeout counts 0 s; "fast" is no duration.
    assert h.value("agentstream_tool_duration_seconds_count", tool="shell") == 1
    assert h.value("agentstream_tool_duration_seconds_sum", tool="shell") == pytest.approx(0.25)
    malformed = "agentstream_metrics_malformed_events_total"
    assert h.value(malformed, type="audit.tool_call_complete") == 2  # "fast" and 1e308


def test_llm_calls_durations_and_tokens() -> None:
    h = Harness()
    h.feed(
        ev("llm.call.started", {"round": 0, "model": "sonnet"}, at=NOW - 10),
        ev(
            "llm.call.completed",
            {"round": 0, "stop_reason": "tool_use", "input_tokens": 800, "output_tokens": 60},
            at=NOW - 8,
        ),
        ev("llm.call.started", {"round": 1}, at=NOW - 7),
        ev(
            "llm.call.completed",
            {"round": 1, "stop_reason": "end_turn", "model": "haiku", "output_chars": 400},
            at=NOW - 6.5,
        ),
        ev("llm.call.completed", {"round": 5, "stop_reason": "end_turn"}, at=NOW - 6),
    )
    assert h.value("agentstream_llm_calls_total", model="sonnet") == 1
    assert h.value("agentstream_llm_calls_total", model="haiku") == 1
    assert h.value("agentstream_llm_calls_total", model="unknown") == 1
    assert h.value("agentstream_llm_call_duration_seconds_sum", model="sonnet") == 2
    assert h.value("agentstream_llm_call_duration_seconds_sum", model="haiku") == 0.5
    assert h.value("agentstream_llm_tokens_total", model="sonnet", kind="input") == 800
    assert h.value("agentstream_llm_tokens_total", model="sonnet", kind="output") == 60
    assert h.value("agentstream_llm_tokens_total", model="haiku", kind="output_estimated") == 100
    assert h.value("agentstream_unpaired_calls_total", call="llm", reason="no_start") == 1


def test_turns_and_guards() -> None:
    h = Harness()
    h.feed(
        ev("turn.ended", {"round": 2, "stop_reason": "end_turn"}),
        ev("turn.ended", {"round": 9, "stop_reason": "max_rounds"}),
        ev("turn.ended", {"round": 9, "stop_reason": "bored"}),
        ev("audit.turn_end", {"function_calls_count": 1}),
        ev("guard.input.checked", {"guard": "pii", "direction": "input", "allowed": True}),
        ev("guard.output.checked", {"guard": "tox", "direction": "sideways", "allowed": False}),
        ev("guard.blocked", {"direction": "output", "reason": "card number"}),
    )
    assert h.value("agentstream_turns_total", stop_reason="end_turn") == 1
    assert h.value("agentstream_turns_total", stop_reason="max_rounds") == 1
    assert h.value("agentstream_turns_total", stop_reason="other") == 1
    assert h.value("agentstream_turns_total", stop_reason="unknown") == 1
    assert h.value("agentstream_guard_checks_total", direction="input", outcome="allowed") == 1
    assert h.value("agentstream_guard_checks_total", direction="output", outcome="blocked") == 1
    assert h.value("agentstream_guard_blocks_total", direction="output") == 1


def test_budget_and_loop_events_with_their_origin() -> None:
    h = Harness()
    h.feed(
        ev("budget.exceeded", {"tokens_used": 100_250}),
        ev("budget.exceeded", {"rounds": 10}),
        ev("audit.tool_loop_block", {"tool_name": "search", "pattern": "same_call"}),
        ev("audit.tool_loop_warning", {"tool_name": "search", "severity_level": "ok"}),
    )
    h.feed(
        ev("budget.warning", {"scope": "session", "dimension": "tokens", "used": 8, "limit": 10}),
        ev("audit.tool_loop_warning", {"tool_name": "x", "pattern": "pingpong"}),
        topic=ALERTS,
    )
    signals = "agentstream_budget_events_total"
    assert h.value(signals, level="exceeded", dimension="tokens", origin="agent") == 1
    assert h.value(signals, level="exceeded", dimension="rounds", origin="agent") == 1
    assert h.value(signals, level="warning", dimension="tokens", origin="service") == 1
    loops = "agentstream_loop_events_total"
    assert h.value(loops, kind="block", pattern="same_call", origin="agent") == 1
    assert h.value(loops, kind="warning", pattern="pingpong", origin="service") == 1
    # Calute's "ok" pseudo-warning is no finding (but still an event).
    assert h.value(loops, kind="warning", pattern="unknown", origin="agent") == 0
    assert h.value("agentstream_events_total", type="audit.tool_loop_warning", agent="agent-a") == 2


def test_active_sessions_from_the_events_topic_only() -> None:
    h = Harness(session_window_s=60.0)
    h.feed(ev("turn.started", session="s1", at=NOW - 30), ev("turn.started", session="s2"))
    h.feed(ev("turn.started", session="s3"), partition=1)
    h.feed(ev("llm.token", session="s4"), topic=TOKENS)
    h.feed(ev("turn.started", session=""))  # no session: not counted
    assert h.value("agentstream_active_sessions") == 3
    h.feed(ev("session.ended", session="s2"))
    assert h.value("agentstream_active_sessions") == 2
    h.now = NOW + 40  # s1's last event is now 70 s old
    assert h.value("agentstream_active_sessions") == 1


def test_a_rebalance_keeps_the_state_of_the_partitions_assigned_back() -> None:
    """A rebalance revokes every partition: the active sessions and open calls of those
    assigned back were forgotten (the gauge read 0 after a second instance joined, and stayed
    so until the sessions' next events); those of partitions that moved are dropped."""
    h = Harness()
    h.feed(ev("tool.called", {"name": "search"}, session="s1"), partition=0)
    h.feed(ev("tool.called", {"name": "search"}, session="s2"), partition=1)
    assert h.value("agentstream_active_sessions") == 2

    asyncio.run(h.metrics.forget_partitions([TP(EVENTS, 0), TP(EVENTS, 1)]))
    assert h.value("agentstream_active_sessions") == 0  # nothing held during the rebalance
    asyncio.run(h.metrics.keep_partitions([TP(EVENTS, 1), TP(EVENTS, 2)]))
    assert h.value("agentstream_active_sessions") == 1
    assert h.value("agentstream_unpaired_calls_total", call="tool", reason="revoked") == 1
    h.feed(ev("tool.result", {"name": "search"}, session="s2"), partition=1)
    assert h.value("agentstream_tool_duration_seconds_count", tool="search") == 1
    # A partition revoked and never assigned back is dropped at the next assignment.
    asyncio.run(h.metrics.forget_partitions([TP(EVENTS, 1)]))
    asyncio.run(h.metrics.keep_partitions([]))
    assert h.value("agentstream_active_sessions") == 0


def test_calls_left_open_by_a_turn_get_no_duration_from_later_calls() -> None:
    """A request that ended on an error left its LLM call (round 0) and tool call open: every
    later request's round-0 call and same-name tool call of the session was paired with the
    start before it, 61 s instead of 1 s, for the rest of the session."""
    h = Harness()
    h.feed(
        ev("turn.started", {"round": 0}, at=NOW - 100),
        ev("llm.call.started", {"round": 0, "model": "m"}, at=NOW - 100),
        ev("tool.called", {"name": "search"}, at=NOW - 99),
        ev("agent.error", {"error": "boom"}, at=NOW - 98),  # no turn.ended
        ev("turn.started", {"round": 0}, at=NOW - 40),
        ev("llm.call.started", {"round": 0, "model": "m"}, at=NOW - 40),
        ev("llm.call.completed", {"round": 0, "model": "m"}, at=NOW - 39),
        ev("tool.called", {"name": "search"}, at=NOW - 38),
        ev("turn.ended", {"round": 0, "stop_reason": "end_turn"}, at=NOW - 36),
        ev("tool.result", {"name": "search"}, at=NOW - 30),  # after its turn: no start left
    )
    assert h.value("agentstream_llm_call_duration_seconds_sum", model="m") == 1.0
    assert h.value("agentstream_tool_duration_seconds_count", tool="search") == 0
    unpaired = "agentstream_unpaired_calls_total"
    assert h.value(unpaired, call="llm", reason="turn_ended") == 1
    assert h.value(unpaired, call="tool", reason="turn_ended") == 2
    assert h.value(unpaired, call="tool", reason="no_start") == 1


def test_a_turn_ends_the_calls_of_its_own_agent_only() -> None:
    """A worker agent's turn inside a planner's tool call (one session) ended the planner's
    open call too; events without a session (keyed by the pod) ended every request's."""
    h = Harness()
    h.feed(
        ev("tool.called", {"name": "delegate", "call_id": "c1"}, agent="planner", at=NOW - 10),
        ev("turn.started", {"round": 0}, agent="worker", at=NOW - 9),
        ev("llm.call.started", {"round": 0, "model": "m"}, agent="worker", at=NOW - 9),
        ev("llm.call.completed", {"round": 0, "model": "m"}, agent="worker", at=NOW - 8),
        ev("turn.ended", {"round": 0, "stop_reason": "end_turn"}, agent="worker", at=NOW - 8),
        ev("tool.result", {"name": "delegate", "call_id": "c1"}, agent="planner", at=NOW - 7),
    )
    assert h.value("agentstream_tool_duration_seconds_sum", tool="delegate") == 3.0
    # Two requests of one pod without a session: the second's start leaves the first's call.
    h.feed(
        ev("tool.called", {"name": "fetch"}, session="", at=NOW - 6),
        ev("turn.started", {"round": 0}, session="", at=NOW - 5),
        ev("tool.result", {"name": "fetch"}, session="", at=NOW - 4),
    )
    assert h.value("agentstream_tool_duration_seconds_count", tool="fetch") == 1
    unpaired = "agentstream_unpaired_calls_total"
    assert h.value(unpaired, call="tool", reason="turn_ended") == 0
    assert h.value(unpaired, call="tool", reason="no_start") == 0


def test_a_backlog_hours_old_is_paired_as_it_happened() -> None:
    """Calls of events stamped two hours ago (the service was down) were expired at the first
    prune as older than the hour a call may stay open: 150 of 200 durations were missing."""
    h = Harness(pending_ttl_s=3_600.0)
    old = NOW - 7_200
    h.feed(*(ev("tool.called", {"name": "search"}, session=f"s{i}", at=old) for i in range(3)))
    h.now += 61  # the next batch prunes
    h.feed(
        *(ev("tool.result", {"name": "search"}, session=f"s{i}", at=old + 0.5) for i in range(3))
    )
    assert h.value("agentstream_tool_duration_seconds_count", tool="search") == 3
    assert h.value("agentstream_unpaired_calls_total", call="tool", reason="expired") == 0


def test_pipeline_delay_per_event() -> None:
    h = Harness()
    h.feed(
        ev("turn.started", at=NOW - 0.004), ev("turn.started", at=NOW - 2), ev("x.y", at=NOW + 5)
    )
    assert h.value("agentstream_pipeline_delay_seconds_count") == 3
    assert h.value("agentstream_pipeline_delay_seconds_bucket", le="0.005") == 2  # future → 0
    assert h.value("agentstream_pipeline_delay_seconds_bucket", le="2.5") == 3
    assert h.value("agentstream_pipeline_delay_seconds_sum") == pytest.approx(2.004)


def test_an_event_stamped_far_from_its_record_is_timed_by_the_record() -> None:
    """One event of a Go producer's zero time added two thousand years to the delay's sum,
    and a call's duration was measured from it."""
    h = Harness(max_skew_ms=3_600_000)
    record_ms = int((NOW - 1) * 1000)
    zero = datetime(1, 1, 1, tzinfo=UTC).timestamp()
    h.feed(
        ev("turn.started", at=NOW - 2),
        ev("tool.called", {"name": "search"}, at=zero),
        ev("tool.result", {"name": "search"}, at=NOW - 0.5),
        record_ms=record_ms,
    )
    assert h.value("agentstream_pipeline_delay_seconds_sum") == pytest.approx(2 + 1 + 0.5)
    assert h.value("agentstream_tool_duration_seconds_sum", tool="search") == pytest.approx(0.5)
    skewed = "agentstream_consumer_clock_skewed_events_total"
    assert h.value(skewed, service="metrics", topic=EVENTS) == 1


def test_odd_data_never_fails_the_batch_and_is_counted() -> None:
    h = Harness()
    broken = Event(type="tool.called", data=None)  # type: ignore[arg-type]
    h.feed(
        ev("tool.result", {"name": 42, "call_id": ["x"]}),
        broken,
        ev("llm.call.completed", {"round": "zero", "input_tokens": -5, "output_tokens": True}),
        ev("guard.blocked", {"direction": None}),
        ev("turn.started", {"round": 0}),
        # a list or a dict where a name goes raised TypeError (unhashable) in the set lookup:
        # the event was missing from turns and guard counts, counted as malformed instead
        ev("turn.ended", {"stop_reason": ["end_turn"]}),
        ev("guard.input.checked", {"direction": {"in": 1}, "passed": True}),
    )
    assert h.value("agentstream_turns_total", stop_reason="other") == 1
    assert h.value("agentstream_metrics_malformed_events_total", type="turn.ended") == 0
    assert h.value("agentstream_metrics_malformed_events_total", type="guard.input.checked") == 0
    assert h.value("agentstream_tool_calls_total", tool="unknown", outcome="success") == 1
    assert h.value("agentstream_metrics_malformed_events_total", type="tool.called") == 1
    assert h.value("agentstream_llm_calls_total", model="unknown") == 1
    assert h.value("agentstream_llm_tokens_total", model="unknown", kind="input") == 0
    assert h.value("agentstream_guard_blocks_total", direction="unknown") == 1
    assert h.value("agentstream_events_total", type="turn.started", agent="agent-a") == 1
    assert h.value("agentstream_events_total", type="tool.called", agent="unknown") == 1


def test_pending_state_is_bounded_and_expires() -> None:
    h = Harness(pending_max_sessions=3, pending_ttl_s=100.0, session_window_s=40.0)
    for i in range(10):
        h.feed(ev("tool.called", {"name": "search"}, session=f"s{i}", at=NOW - 5))
    assert h.value("agentstream_unpaired_calls_total", call="tool", reason="evicted") == 7
    h.now = NOW + 200  # past the TTL; the next batch prunes
    h.feed(ev("turn.started", session="late", at=NOW + 199))
    assert h.value("agentstream_unpaired_calls_total", call="tool", reason="expired") == 3


def test_alerted_series_exist_at_zero_before_any_event() -> None:
    h = Harness()
    labels = {"level": "exceeded", "dimension": "tokens", "origin": "service"}
    assert h.registry.get_sample_value("agentstream_budget_events_total", labels) == 0
    labels = {"kind": "block", "pattern": "pingpong", "origin": "agent"}
    assert h.registry.get_sample_value("agentstream_loop_events_total", labels) == 0
    assert h.registry.get_sample_value("agentstream_turns_total", {"stop_reason": "end_turn"}) == 0


def test_usage_counts_follow_the_one_rule_the_budget_service_applies() -> None:
    """812.0 counts, 812.5, text and 10^23 do not, in both services (the metrics counted
    floats the budget ignored, so dashboards and budgets disagreed)."""
    from support.budget import ev as budget_ev

    from agentstream.consumers.budget.accounting import BudgetTracker
    from agentstream.consumers.budget.config import BudgetConfig, Limits

    reported: list[object] = [800, 812.0, 812.5, "9", 10**23, -1, True]
    h = Harness()
    tracker = BudgetTracker(BudgetConfig(session=Limits(tokens=0, rounds=0)))
    for offset, tokens in enumerate(reported):
        data = {"round": offset, "stop_reason": "end_turn", "input_tokens": tokens}
        h.feed(ev("llm.call.completed", data))
        tracker.process(budget_ev("llm.call.completed", data), offset=offset)
    state = tracker.usage("session:s-1")
    assert state is not None and state.input_tokens == 1_612
    assert h.value("agentstream_llm_tokens_total", model="unknown", kind="input") == 1_612
