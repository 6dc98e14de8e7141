"""The metrics service's building blocks, without Kafka: label bounds, the batch histogram,
call pairing and active sessions."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from agentstream.consumers.metrics import (
    OTHER,
    UNKNOWN,
    ActiveSessions,
    BatchHistogram,
    BoundedLabel,
    PendingCalls,
    type_label,
)

# --- BoundedLabel ------------------------------------------------------------------------


def test_bounded_label_lets_the_first_n_names_through() -> None:
    bound = BoundedLabel(2)
    assert [bound(n) for n in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]
    assert bound.passed == {"a", "b"}


def test_bounded_label_allow_list_ignores_the_limit() -> None:
    bound = BoundedLabel(0, allow=["planner", "writer"])
    assert [bound(n) for n in ("writer", "x", "planner")] == ["writer", OTHER, "planner"]


def test_bounded_label_missing_odd_and_long_values() -> None:
    bound = BoundedLabel(3)
    assert bound("") == UNKNOWN
    assert bound(None) == UNKNOWN
    assert bound(42) == UNKNOWN
    assert bound(OTHER) == OTHER  # a name equal to the overflow value does not take a slot
    assert len(bound("x" * 1000)) == 128
    assert bound.passed == {"x" * 128}


def test_bounded_label_stays_bounded_under_many_names() -> None:
    bound = BoundedLabel(10)
    labels = {bound(f"agent-{i}") for i in range(100_000)}
    assert len(labels) == 11


def test_type_label_uses_the_catalogue() -> None:
    assert type_label("tool.called") == "tool.called"
    assert type_label("audit.tool_loop_block") == "audit.tool_loop_block"
    assert type_label("custom.thing") == OTHER


def test_bounded_label_rejects_a_negative_limit() -> None:
    with pytest.raises(ValueError, match="limit >= 0"):
        BoundedLabel(-1)


# --- BatchHistogram ------------------------------------------------------------------------


def test_batch_histogram_exposes_what_client_python_would() -> None:
    buckets = (0.01, 0.1, 1.0, 10.0)
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = BatchHistogram("x_seconds", "doc", buckets, registry=ours_registry)
    theirs = Histogram("x_seconds", "doc", buckets=buckets, registry=theirs_registry)
    rng = random.Random(7)
    values = [rng.choice((0.0, 0.01, 0.1, 1.0, 10.0, 99.0)) or rng.random() for _ in range(500)]
    for start in range(0, len(values), 37):
        batch = ours.new_batch()
        for value in values[start : start + 37]:
            batch.observe(value)
            theirs.observe(value)
        ours.add(batch)

    def samples(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "x_seconds_created" not in line)

    ours_lines, theirs_lines = samples(ours_registry), samples(theirs_registry)
    # The sums differ in the last digits only (added in another order).
    ours_sum = [line for line in ours_lines if line.startswith("x_seconds_sum ")]
    theirs_sum = [line for line in theirs_lines if line.startswith("x_seconds_sum ")]
    assert float(ours_sum[0].split()[1]) == pytest.approx(float(theirs_sum[0].split()[1]))
    assert [line for line in ours_lines if line not in ours_sum] == [
        line for line in theirs_lines if line not in theirs_sum
    ]
    assert any(line.startswith('x_seconds_bucket{le="0.01"}') for line in ours_lines)


def test_batch_histogram_is_invisible_until_added() -> None:
    registry = CollectorRegistry()
    histogram = BatchHistogram("d_seconds", "doc", (1.0,), registry=registry)
    batch = histogram.new_batch()
    batch.observe(0.5)
    assert registry.get_sample_value("d_seconds_count") == 0
    histogram.add(batch)
    assert registry.get_sample_value("d_seconds_count") == 1
    assert registry.get_sample_value("d_seconds_bucket", {"le": "1.0"}) == 1


def test_batch_histogram_rejects_bad_buckets() -> None:
    with pytest.raises(ValueError, match="distinct finite"):
        BatchHistogram("b_seconds", "doc", (1.0, 1.0))


# --- PendingCalls --------------------------------------------------------------------------


class Drops:
    def __init__(self) -> None:
        self.by_reason: dict[str, int] = {}

    def __call__(self, reason: str, count: int) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + count


def test_pending_calls_pair_by_key_in_order_per_session() -> None:
    pending = PendingCalls()
    pending.start("s1", "agent", "search", 1.0, "a", seen=1.0)
    pending.start("s1", "agent", "search", 2.0, "b", seen=2.0)
    pending.start("s2", "agent", "search", 5.0, "c", seen=5.0)
    assert pending.finish("s1", "agent", "search") == (1.0, "a")
    assert pending.finish("s2", "agent", "search") == (5.0, "c")
    assert pending.finish("s1", "agent", "search") == (2.0, "b")
    assert pending.finish("s1", "agent", "search") is None
    assert len(pending) == 0
    assert pending.sessions == 0


def test_pending_calls_evict_least_recent_session_and_oldest_call() -> None:
    drops = Drops()
    pending = PendingCalls(max_sessions=2, max_per_session=2, on_drop=drops)
    pending.start("s1", "agent", "t", 1.0, seen=1.0)
    pending.start("s2", "agent", "t", 2.0, seen=2.0)
    pending.start("s1", "agent", "u", 3.0, seen=3.0)  # s1 is now the most recent
    pending.start("s3", "agent", "t", 4.0, seen=4.0)  # evicts s2
    assert pending.finish("s2", "agent", "t") is None
    assert drops.by_reason == {"evicted": 1}
    pending.start("s1", "agent", "v", 5.0, seen=5.0)  # s1 holds 2: its oldest call (t at 1.0) goes
    assert pending.finish("s1", "agent", "t") is None
    assert pending.finish("s1", "agent", "u") == (3.0, "")
    assert drops.by_reason == {"evicted": 2}
    assert len(pending) == 2


def test_pending_calls_expire_end_and_clear_count_their_drops() -> None:
    drops = Drops()
    pending = PendingCalls(on_drop=drops)
    pending.start("old", "agent", "t", 10.0, seen=10.0)
    pending.start("new", "agent", "t", 100.0, seen=100.0)
    pending.start("ending", "agent", "t", 100.0, seen=100.0)
    pending.start("ending", "agent", "u", 100.0, seen=100.0)
    pending.start("turn", "agent", "t", 100.0, seen=100.0)
    pending.expire(started_before=50.0)
    pending.end_session("ending")
    pending.start("turn", "other-agent", "t", 100.0, seen=100.0)
    pending.end_owner("turn", "agent")  # the other agent's call stays open
    assert pending.finish("turn", "other-agent", "t") == (100.0, "")
    pending.clear()
    assert drops.by_reason == {"expired": 1, "session_ended": 2, "turn_ended": 1, "revoked": 1}
    assert len(pending) == 0


# --- ActiveSessions ------------------------------------------------------------------------


def test_active_sessions_count_the_window_and_forget_the_rest() -> None:
    now = [1000.0]
    registry = CollectorRegistry()
    sessions = ActiveSessions(60.0, clock=lambda: now[0], registry=registry)
    with sessions.lock:
        sessions.partition(("events", 0)).update({"a": 990.0, "b": 930.0})
        sessions.partition(("events", 1))["c"] = 1000.0
    assert registry.get_sample_value("agentstream_active_sessions") == 2
    now[0] = 1055.0
    assert registry.get_sample_value("agentstream_active_sessions") == 1
    table = sessions.detach(("events", 1))
    assert registry.get_sample_value("agentstream_active_sessions") == 0
    assert table == {"c": 1000.0}
    sessions.attach(("events", 1), table)
    assert registry.get_sample_value("agentstream_active_sessions") == 1


def test_labelled_batch_histogram_exposes_what_client_python_would() -> None:
    buckets = (0.5, 2.0)
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = BatchHistogram("t_seconds", "doc", buckets, ["tool"], registry=ours_registry)
    theirs = Histogram("t_seconds", "doc", ["tool"], buckets=buckets, registry=theirs_registry)
    batch = ours.new_batch()
    for tool, value in (("a", 0.25), ("b", 0.5), ("a", 3.0), ("b", 1.0), ("a", 0.5)):
        batch.observe(value, (tool,))
        theirs.labels(tool).observe(value)
    ours.add(batch)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert lines(ours_registry) == lines(theirs_registry)
    wrong = ours.new_batch()
    wrong.observe(1.0)
    with pytest.raises(ValueError, match="expected 1 label values"):
        ours.add(wrong)
