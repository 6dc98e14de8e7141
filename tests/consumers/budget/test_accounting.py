"""Scenario tests of the pure accounting: token sources, every dimension, overrides, day
rollover with an injected clock, and the once-only signal logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from support.budget import T0, ev, llm, response, tool, turn

from agentstream.consumers.budget.accounting import (
    RECENT_EVENTS,
    BudgetTracker,
    Ledger,
    Level,
    Signal,
    signal_event_id,
)
from agentstream.consumers.budget.changelog import decode_state, encode_state
from agentstream.consumers.budget.config import (
    BudgetConfig,
    Dimension,
    Limits,
    Override,
    Price,
    parse_config,
)
from agentstream.schemas import Event
from agentstream.schemas.payloads import MAX_USAGE_COUNT

NO_LIMITS = Limits(tokens=0, rounds=0)


def run(tracker: BudgetTracker, events: list[Event], *, partition: int = 0) -> list[Signal]:
    offsets = count()
    signals: list[Signal] = []
    for event in events:
        signals += tracker.process(event, partition=partition, offset=next(offsets))
    return signals


def pairs(signals: list[Signal]) -> list[tuple[str, str, str]]:
    return [(s.scope, s.dimension.value, s.level.name.lower()) for s in signals]


# --- token sources ----------------------------------------------------------------------------


def test_reported_usage_counts_input_and_output_and_prices_them() -> None:
    config = BudgetConfig(session=NO_LIMITS, prices={"claude-sonnet": Price(3.0, 15.0)})
    tracker = BudgetTracker(config)
    run(tracker, [llm(1_000, 200, model="claude-sonnet"), llm(500, 100, model="claude-sonnet")])
    state = tracker.usage("session:s-1")
    assert state is not None
    assert (state.tokens, state.input_tokens, state.output_tokens) == (1_800, 1_500, 300)
    assert state.estimated_tokens == 0
    assert state.cost_usd == pytest.approx((1_500 * 3.0 + 300 * 15.0) / 1e6)
    assert state.unpriced_tokens == 0


def test_without_usage_output_chars_are_estimated_as_chars_over_4() -> None:
    tracker = BudgetTracker(BudgetConfig(session=NO_LIMITS))
    run(tracker, [llm(output_chars=401), response("x" * 4_000)])
    state = tracker.usage("session:s-1")
    assert state is not None
    # 401 // 4 = 100; the answer of the same turn is not counted again.
    assert (state.tokens, state.estimated_tokens, state.output_tokens) == (100, 100, 100)


def test_without_any_size_the_answer_of_the_turn_is_estimated() -> None:
    tracker = BudgetTracker(BudgetConfig(session=NO_LIMITS))
    run(
        tracker,
        [
            llm(),  # Corail: round and stop_reason only
            response("y" * 403),  # 100 tokens
            llm(10, 20, turn="turn-2"),
            response("z" * 4_000, turn="turn-2"),  # reported in this turn: not counted again
        ],
    )
    state = tracker.usage("session:s-1")
    assert state is not None
    assert (state.tokens, state.estimated_tokens) == (130, 100)


def test_without_turn_ids_a_new_round_resets_what_the_answer_may_skip() -> None:
    tracker = BudgetTracker(BudgetConfig(session=NO_LIMITS))
    run(
        tracker,
        [
            turn(0, turn=""),
            llm(10, 10, turn=""),
            response("a" * 400, turn=""),  # the reported call covers it
            turn(1, turn=""),
            llm(turn=""),  # nothing reported this round
            response("b" * 400, turn=""),  # estimated: 100
        ],
    )
    state = tracker.usage("session:s-1")
    assert state is not None
    assert (state.tokens, state.estimated_tokens, state.rounds) == (120, 100, 2)


def test_events_without_a_session_count_a_rounds_answer_once_per_source() -> None:
    """An answer's ``message.response`` of a round whose ``llm.call.completed`` counted was
    counted again when the events had no session: nothing remembered the counted turn."""
    tracker = BudgetTracker(BudgetConfig(session=NO_LIMITS))
    events = [
        turn(0, session="", turn="t-9"),
        llm(100, 50, session="", turn="t-9"),
        response("x" * 400, session="", turn="t-9"),  # covered by the call: not counted
        turn(0, session="", turn="t-10"),
        llm(session="", turn="t-10"),  # nothing reported
        response("y" * 400, session="", turn="t-10"),  # estimated: 100
    ]
    run(tracker, events)
    day = tracker.usage("agent:agent-a:2026-11-21")
    assert day is not None
    assert (day.tokens, day.estimated_tokens, day.rounds) == (250, 100, 2)


def test_unknown_model_costs_nothing_and_is_counted_as_unpriced() -> None:
    config = BudgetConfig(session=NO_LIMITS, prices={"known": Price(1.0, 1.0)})
    tracker = BudgetTracker(config)
    run(tracker, [llm(100, 100, model="mystery"), llm(10, 10, model="known"), response("a" * 40)])
    state = tracker.usage("session:s-1")
    assert state is not None
    assert state.cost_usd == pytest.approx(20 / 1e6)
    assert state.unpriced_tokens == 200  # the mystery model's 200 tokens


@pytest.mark.parametrize("bad", [-5, "812", 1.5, True, MAX_USAGE_COUNT + 1, 10**23])
def test_negative_non_integer_or_absurd_usage_fields_are_ignored(bad: object) -> None:
    tracker = BudgetTracker(BudgetConfig(session=NO_LIMITS))
    data = {"round": 0, "stop_reason": "x", "input_tokens": bad, "output_tokens": 7}
    run(tracker, [ev("llm.call.completed", data)])
    state = tracker.usage("session:s-1")
    assert state is not None
    assert state.tokens == 7
    assert decode_state(encode_state(state)) == state  # the changelog can hold it


# --- dimensions ---------------------------------------------------------------------------------


def test_rounds_follow_corail_defaults_10_rounds() -> None:
    tracker = BudgetTracker(BudgetConfig())
    signals = run(tracker, [turn(r) for r in range(10)])
    assert pairs(signals) == [
        ("session:s-1", "rounds", "warning"),  # 8 of 10
        ("session:s-1", "rounds", "exceeded"),  # 10 of 10
    ]
    assert signals[0].used == 8
    assert signals[1].used == 10


def test_tokens_follow_corail_default_100k() -> None:
    tracker = BudgetTracker(BudgetConfig())
    signals = run(tracker, [llm(40_000, 0), llm(40_000, 0), llm(19_999, 0), llm(1, 0)])
    assert [(s.level, s.used) for s in signals] == [
        (Level.WARNING, 80_000),
        (Level.EXCEEDED, 100_000),
    ]


def test_tool_calls_count_corail_and_calute_attempts() -> None:
    config = BudgetConfig(session=Limits(tool_calls=4))
    tracker = BudgetTracker(config)

    def attempt() -> Event:
        return ev("audit.tool_call_attempt", {"tool_name": "shell"})

    signals = run(tracker, [tool(), attempt(), tool(), ev("tool.result", {"name": "x"}), attempt()])
    state = tracker.usage("session:s-1")
    assert state is not None
    assert state.tool_calls == 4
    assert pairs(signals) == [
        ("session:s-1", "tool_calls", "warning"),
        ("session:s-1", "tool_calls", "exceeded"),
    ]


def test_cost_limit() -> None:
    config = BudgetConfig(
        session=Limits(cost_usd=1.0), prices={"m": Price(0.0, 10.0)}
    )  # 100k output tokens = 1 USD
    tracker = BudgetTracker(config)
    signals = run(tracker, [llm(0, 85_000, model="m"), llm(0, 15_000, model="m")])
    assert [(s.dimension, s.level) for s in signals] == [
        (Dimension.COST_USD, Level.WARNING),
        (Dimension.COST_USD, Level.EXCEEDED),
    ]


def test_wall_time_from_first_to_last_event_of_the_session() -> None:
    tracker = BudgetTracker(BudgetConfig(session=Limits(wall_time_s=100)))
    signals = run(
        tracker,
        [turn(0), ev("thinking.started", seconds=50), tool(seconds=81), tool(seconds=120)],
    )
    state = tracker.usage("session:s-1")
    assert state is not None
    assert state.used(Dimension.WALL_TIME_S) == 120
    assert [(s.level, s.used) for s in signals] == [(Level.WARNING, 81), (Level.EXCEEDED, 120)]


def test_warning_fraction_is_configurable() -> None:
    tracker = BudgetTracker(BudgetConfig(warning_fraction=0.5, session=Limits(rounds=4)))
    signals = run(tracker, [turn(0), turn(1)])
    assert [(s.level, s.used) for s in signals] == [(Level.WARNING, 2)]


# --- agents, users, overrides ----------------------------------------------------------------


def test_agent_and_user_days_sum_sessions_across_partitions() -> None:
    config = BudgetConfig(
        session=NO_LIMITS, agent_day=Limits(tokens=1_000), user_day=Limits(rounds=3)
    )
    tracker = BudgetTracker(config)
    signals = run(tracker, [llm(300, 0, session="s-1"), turn(0, session="s-1")], partition=0)
    signals += run(
        tracker,
        [llm(300, 0, session="s-2", user="user-2"), turn(0, session="s-2", user="user-2")],
        partition=1,
    )
    signals += run(tracker, [llm(400, 0, session="s-3"), turn(0, session="s-3")], partition=2)
    agent = tracker.usage("agent:agent-a:2026-11-21")
    assert agent is not None
    assert (agent.tokens, agent.rounds) == (1_000, 3)
    user1 = tracker.usage("user:user-1:2026-11-21")
    assert user1 is not None
    assert user1.rounds == 2
    assert pairs(signals) == [
        ("agent:agent-a:2026-11-21", "tokens", "warning"),
        ("agent:agent-a:2026-11-21", "tokens", "exceeded"),
    ]


def test_overrides_per_agent_and_user_and_the_stricter_wins() -> None:
    config = BudgetConfig(
        agents={"big": Override(session=Limits(tokens=500_000), day=Limits(rounds=2))},
        users={"tight": Override(session=Limits(tokens=1_000, rounds=0))},
    )
    assert config.session_limits("other", "other") == Limits(tokens=100_000, rounds=10)
    assert config.session_limits("big", "other").get(Dimension.TOKENS) == 500_000
    both = config.session_limits("big", "tight")
    assert both.get(Dimension.TOKENS) == 1_000  # both name tokens: the user's is smaller
    assert both.get(Dimension.ROUNDS) is None  # only the user names rounds: off (0)
    assert config.session_limits("x", "tight").get(Dimension.ROUNDS) is None  # 0: no limit
    assert config.agent_day_limits("big").get(Dimension.ROUNDS) == 2
    assert config.agent_day_limits("other").get(Dimension.ROUNDS) is None

    tracker = BudgetTracker(config)
    signals = run(tracker, [turn(0, agent="big"), turn(1, agent="big")])
    assert pairs(signals) == [
        ("agent:big:2026-11-21", "rounds", "warning"),
        ("agent:big:2026-11-21", "rounds", "exceeded"),
    ]


def test_an_override_applies_when_the_sessions_first_event_did_not_name_the_agent() -> None:
    """The scope took its agent and user from its first event only: a session opened by a
    ``session.created`` without them never got its agent's stricter limits."""
    config = BudgetConfig(agents={"weather": Override(session=Limits(tokens=500))})
    tracker = BudgetTracker(config)
    signals = run(
        tracker, [ev("session.created", agent="", user=""), llm(300, 300, agent="weather")]
    )
    state = tracker.usage("session:s-1")
    assert state is not None
    assert (state.agent_id, state.user_id) == ("weather", "user-1")
    assert pairs(signals) == [
        ("session:s-1", "tokens", "warning"),
        ("session:s-1", "tokens", "exceeded"),
    ]


def test_an_override_is_not_lowered_by_the_other_sides_defaults() -> None:
    """The docs' example: an agent allowed more tokens, a user more rounds. A session of both
    got the defaults of each (100,000 tokens, 10 rounds): each override was merged onto the
    defaults and the smaller of the two taken, so the other side's default always won."""
    config = BudgetConfig(
        agents={"weather": Override(session=Limits(tokens=200_000, cost_usd=0))},
        users={"u42": Override(session=Limits(rounds=20, cost_usd=2))},
    )
    both = config.session_limits("weather", "u42")
    assert (both.get(Dimension.TOKENS), both.get(Dimension.ROUNDS)) == (200_000, 20)
    assert both.get(Dimension.COST_USD) == 2  # both name it: the smaller (0 is no limit)
    alone = config.session_limits("weather", "other")
    assert (alone.get(Dimension.TOKENS), alone.get(Dimension.ROUNDS)) == (200_000, 10)


def test_a_cost_that_reaches_its_limit_exactly_is_exceeded() -> None:
    """$0.70 + $0.10 is 0.7999999999999999 in floats: a $0.80 budget was only warned about."""
    config = BudgetConfig(session=Limits(cost_usd=0.8), prices={"m": Price(input_per_million=1.0)})
    tracker = BudgetTracker(config)
    events = [llm(700_000, 0, model="m"), llm(100_000, 0, model="m", seconds=1)]
    assert [level for _, _, level in pairs(run(tracker, events))] == ["warning", "exceeded"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_limit_or_price_that_is_no_finite_number_is_refused(value: float) -> None:
    """TOML's nan passed the `value < 0` check and switched the budget off silently."""
    from agentstream.schemas.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="expected a number >= 0 for tokens"):
        parse_config({"session": {"tokens": value}})
    with pytest.raises(ConfigurationError, match="expected a number >= 0 for input_per_million"):
        parse_config({"prices": {"m": {"input_per_million": value}}})


def test_toml_config_and_its_errors() -> None:
    config = parse_config(
        {
            "warning_fraction": 0.9,
            "session": {"tokens": 2_000},
            "user_day": {"cost_usd": 20},
            "agents": {"a": {"session": {"rounds": 20}, "day": {"tokens": 10}}},
            "prices": {"m": {"input_per_million": 3, "output_per_million": 15}},
        }
    )
    assert config.warning_fraction == 0.9
    assert config.session == Limits(tokens=2_000, rounds=10)  # rounds keeps Corail's default
    assert config.user_day.get(Dimension.COST_USD) == 20
    assert config.prices["m"] == Price(3.0, 15.0)
    assert config.agent_day_limits("a").get(Dimension.TOKENS) == 10
    from agentstream.schemas.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown"):
        parse_config({"sesion": {}})
    with pytest.raises(ConfigurationError, match="tokens"):
        parse_config({"session": {"tokens": -1}})
    with pytest.raises(ConfigurationError, match="warning_fraction"):
        parse_config({"warning_fraction": 1.5})


# --- days and the injected clock -------------------------------------------------------------


def test_the_event_timestamp_decides_the_day_and_a_new_day_starts_from_zero() -> None:
    now = [datetime(2026, 11, 25, tzinfo=UTC)]  # the service's clock, far from the events
    config = BudgetConfig(session=NO_LIMITS, agent_day=Limits(tokens=100))
    tracker = BudgetTracker(config, clock=lambda: now[0])
    before = T0 + timedelta(minutes=59, seconds=59)  # 2026-11-21 23:59:59 UTC
    after = before + timedelta(seconds=2)  # 2026-11-22 00:00:01 UTC
    signals = run(
        tracker,
        [
            llm(90, 0, at=before),
            llm(5, 0, at=after, session="s-2"),
            llm(90, 0, at=after, session="s-3"),
        ],
    )
    day1, day2 = (
        tracker.usage("agent:agent-a:2026-11-21"),
        tracker.usage("agent:agent-a:2026-11-22"),
    )
    assert day1 is not None
    assert day2 is not None
    assert (day1.tokens, day2.tokens) == (90, 95)
    # Each day earns its own warning, with its own id.
    assert [s.scope for s in signals if s.scope.startswith("agent:")] == [
        "agent:agent-a:2026-11-21",
        "agent:agent-a:2026-11-22",
    ]
    assert signals[0].event_id != signals[1].event_id

    # The clock decides eviction, once nothing was applied for the idle time: keep 3 days
    # before today (the 22nd), sessions idle for an hour.
    now[0] = datetime(2026, 11, 25, 0, 59, tzinfo=UTC)
    assert tracker.ledger.evict(session_idle=timedelta(hours=1), keep_days=3) == []
    now[0] = datetime(2026, 11, 25, 1, 1, tzinfo=UTC)
    gone = tracker.ledger.evict(session_idle=timedelta(hours=1), keep_days=3)
    assert sorted(gone) == [
        "agent:agent-a:2026-11-21",
        "session:s-1",
        "session:s-2",
        "session:s-3",
        "user:user-1:2026-11-21",
    ]
    assert tracker.usage("agent:agent-a:2026-11-22") is not None


def test_scopes_of_events_stamped_years_ahead_are_evicted_once_unseen() -> None:
    """A pod whose clock is 30 years ahead stamps its records so too (the skew check compares
    the two): its session never looked idle and its day was decades away, so both stayed in
    memory and in the changelog for good."""
    now = [T0]
    tracker = BudgetTracker(BudgetConfig(session=NO_LIMITS), clock=lambda: now[0])
    ahead = T0 + timedelta(days=365 * 30)
    run(tracker, [llm(10, 0, at=ahead, session="s-ahead"), llm(10, 0, session="s-now")])
    later_day = f"agent:agent-a:{ahead.date().isoformat()}"
    assert tracker.usage(later_day) is not None
    now[0] = T0 + timedelta(hours=2)
    assert tracker.ledger.evict(session_idle=timedelta(hours=1), keep_days=2) == [
        "session:s-ahead",  # unseen for 2 h, whatever its events claim
        "session:s-now",
    ]
    now[0] = T0 + timedelta(days=4)
    assert sorted(tracker.ledger.evict(session_idle=timedelta(hours=1), keep_days=2)) == [
        "agent:agent-a:2026-11-21",
        later_day,
        "user:user-1:2026-11-21",
        f"user:user-1:{ahead.date().isoformat()}",
    ]


def test_a_backlog_of_old_events_keeps_its_scopes_while_it_is_applied() -> None:
    """Events stamped 30 hours ago (a backlog after an outage) made their session look idle
    24 hours by their own times: evicted between two of its events, it lost its total and
    sent its warning again."""
    now = [T0 + timedelta(hours=30)]
    tracker = BudgetTracker(BudgetConfig(session=Limits(tokens=1_000)), clock=lambda: now[0])
    first = run(tracker, [llm(450, 450)])
    now[0] += timedelta(minutes=5)
    assert tracker.ledger.evict(session_idle=timedelta(hours=24), keep_days=0) == []
    later = tracker.process(llm(450, 450, turn="turn-2", seconds=1), partition=0, offset=9)
    assert pairs(first + later) == [
        ("session:s-1", "tokens", "warning"),
        ("session:s-1", "tokens", "exceeded"),
    ]
    state = tracker.usage("session:s-1")
    assert state is not None
    assert state.tokens == 1_800
    now[0] += timedelta(hours=24, seconds=1)  # nothing applied for the idle time
    assert sorted(tracker.ledger.evict(session_idle=timedelta(hours=24), keep_days=0)) == [
        "agent:agent-a:2026-11-21",
        "session:s-1",
        "user:user-1:2026-11-21",
    ]


# --- once-only signals and idempotence ---------------------------------------------------


def test_a_replayed_record_counts_once_and_signals_nothing_new() -> None:
    tracker = BudgetTracker(BudgetConfig(session=Limits(tokens=100)))
    first = tracker.process(llm(90, 0), partition=3, offset=7)
    assert [s.level for s in first] == [Level.WARNING]
    assert tracker.process(llm(90, 0), partition=3, offset=7) == []  # the same record again
    assert tracker.process(llm(90, 0), partition=3, offset=5) == []  # an older one
    state = tracker.usage("session:s-1")
    assert state is not None
    assert state.tokens == 90
    agent = tracker.usage("agent:agent-a:2026-11-21")
    assert agent is not None
    assert agent.tokens == 90


def test_an_event_delivered_twice_at_another_offset_counts_once() -> None:
    """A producer that retries a batch the broker had written (or its spool sent twice)
    puts the same event at a later offset: it was counted again, and could cross a limit."""
    tracker = BudgetTracker(BudgetConfig(session=Limits(tokens=1_000)))
    call, other = llm(300, 300), llm(10, 10, turn="turn-2")
    assert tracker.process(call, partition=0, offset=1) == []
    assert tracker.process(other, partition=0, offset=2) == []
    assert tracker.process(call, partition=0, offset=3) == []  # the copy, later
    fillers = [tool() for _ in range(RECENT_EVENTS - 1)]
    for offset, event in enumerate(fillers, start=4):
        tracker.process(event, partition=0, offset=offset)
    state = tracker.usage("session:s-1")
    assert state is not None
    assert (state.tokens, state.tool_calls) == (620, RECENT_EVENTS - 1)
    day = tracker.usage("agent:agent-a:2026-11-21")
    assert day is not None
    assert day.tokens == 620
    # The ids survive the changelog (a restart) ...
    restored = decode_state(encode_state(state))
    assert restored.counted_before(other.event_id)
    # ... and the window holds the last RECENT_EVENTS counted events of the session.
    assert not restored.counted_before(call.event_id)


def test_a_jump_past_both_thresholds_earns_warning_then_exceeded_and_then_nothing() -> None:
    tracker = BudgetTracker(BudgetConfig(session=Limits(tokens=100)))
    signals = run(tracker, [llm(10, 0), llm(500, 0), llm(500, 0), llm(1, 0)])
    assert [(s.level, s.used) for s in signals] == [
        (Level.WARNING, 510),
        (Level.EXCEEDED, 510),
    ]


def test_signal_ids_are_deterministic_uuids() -> None:
    a = signal_event_id("session:s-1", Dimension.TOKENS, Level.WARNING)
    assert a == signal_event_id("session:s-1", Dimension.TOKENS, Level.WARNING)
    assert a != signal_event_id("session:s-1", Dimension.TOKENS, Level.EXCEEDED)
    assert a != signal_event_id("session:s-2", Dimension.TOKENS, Level.WARNING)
    import uuid

    assert str(uuid.UUID(a)) == a
    ledger_signal = run(BudgetTracker(BudgetConfig()), [turn(r) for r in range(8)])[0]
    assert ledger_signal.event_id == signal_event_id("session:s-1", Dimension.ROUNDS, Level.WARNING)


def test_signals_wait_in_the_scope_outbox_until_confirmed() -> None:
    ledger = Ledger(BudgetConfig(session=Limits(rounds=1)))
    _, state, signals = ledger.apply_session(turn(0), 0, 0)
    assert state is not None
    assert state.pending == signals
    assert state.signals == {"rounds": Level.EXCEEDED}


def test_a_day_scope_has_no_wall_time() -> None:
    """`budget show` printed an hour of wall time for an agent's day (its first and last
    events half an hour apart); days have no wall-time dimension."""
    tracker = BudgetTracker(BudgetConfig())
    run(tracker, [tool(seconds=0), tool(seconds=1_800)])  # T0 is 23:00: one day
    day = tracker.usage("agent:agent-a:2026-11-21")
    session = tracker.usage("session:s-1")
    assert day is not None and day.used(Dimension.WALL_TIME_S) == 0
    assert session is not None and session.used(Dimension.WALL_TIME_S) == 1_800
