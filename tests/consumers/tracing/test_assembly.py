"""Turn assembly without Kafka: span tree, pairing, retries, timeouts, bounds, ids."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from agentstream.consumers.tracing import StatusCode, Trace, TraceAssembler, TurnLimits
from agentstream.consumers.tracing.otlp import encode
from agentstream.consumers.tracing.spans import INCOMPLETE, INCOMPLETE_REASON, Span
from agentstream.schemas import Event

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SESSION = "5f0c9e6a1b2d4c3e8f7a6b5c4d3e2f1a"


class Stream:
    """Builds the events of one session, with increasing ids, seq and timestamps."""

    def __init__(self, session: str = SESSION, agent: str = "agent-weather") -> None:
        self.session = session
        self.agent = agent
        self.counter = itertools.count()

    def __call__(self, type_: str, data: dict[str, Any] | None = None, **kw: Any) -> Event:
        n = next(self.counter)
        at = kw.pop("at", n * 100)
        return Event(
            event_id=f"{self.session[:8]}-{n:06d}",
            type=type_,
            timestamp=T0 + timedelta(milliseconds=at),
            agent_id=self.agent,
            user_id="user-42",
            session_id=self.session,
            seq=n,
            data=data or {},
            **kw,
        )


def feed(assembler: TraceAssembler, events: list[Event]) -> list[Trace]:
    out: list[Trace] = []
    for event in events:
        out.extend(assembler.add(event, scope=0))
    return out


def children(trace: Trace, prefix: str = "") -> list[Span]:
    return [s for s in trace.spans[1:] if s.name.startswith(prefix)]


def test_corail_turn_becomes_root_with_llm_and_tool_children() -> None:
    ev = Stream()
    events = [
        ev("message.received", {"content": "Weather in Paris?"}),
        ev("turn.started", {"round": 0}),
        ev("llm.call.started", {"round": 0, "model": "claude-sonnet"}),
        ev(
            "llm.call.completed",
            {
                "round": 0,
                "stop_reason": "tool_use",
                "model": "claude-sonnet",
                "input_tokens": 800,
                "output_tokens": 60,
            },
        ),
        ev("tool.called", {"name": "weather", "args": {"city": "Paris"}}),
        ev("tool.result", {"name": "weather", "output": "18 C"}),
        ev("turn.started", {"round": 1}),
        ev("llm.call.started", {"round": 1, "model": "claude-sonnet"}),
        ev("llm.call.completed", {"round": 1, "stop_reason": "end_turn"}),
        ev("turn.ended", {"round": 1, "stop_reason": "end_turn"}),
        ev("message.response", {"content": "18 C and sunny"}),
    ]
    assembler = TraceAssembler()
    traces = feed(assembler, events)
    assert len(traces) == 1
    trace = traces[0]
    assert trace.complete
    root = trace.root
    assert root.name == "turn" and root.parent_span_id is None
    assert root.status == StatusCode.OK
    assert root.attributes["session.id"] == SESSION
    assert root.attributes["mlflow.trace.session"] == SESSION
    assert root.attributes["gen_ai.agent.id"] == "agent-weather"
    assert root.attributes["mlflow.spanInputs"] == "Weather in Paris?"
    assert root.start_ns < root.end_ns if root.end_ns else False
    assert [s.name for s in trace.spans[1:]] == [
        "llm:claude-sonnet",
        "tool:weather",
        "llm:claude-sonnet",
    ]
    assert all(s.parent_span_id == root.span_id for s in trace.spans[1:])
    llm0 = trace.spans[1]
    assert llm0.attributes["agentstream.round"] == 0
    assert llm0.attributes["agentstream.stop_reason"] == "tool_use"
    assert llm0.attributes["gen_ai.usage.input_tokens"] == 800
    assert llm0.attributes["mlflow.chat.tokenUsage"] == {
        "input_tokens": 800,
        "output_tokens": 60,
        "total_tokens": 860,
    }
    assert llm0.end_ns is not None and llm0.end_ns - llm0.start_ns == 100_000_000
    tool = trace.spans[2]
    assert tool.status == StatusCode.OK
    assert tool.attributes["mlflow.spanInputs"] == {"city": "Paris"}
    assert tool.attributes["agentstream.round"] == 0
    # message.response comes right after turn.ended in Corail: still the root's output
    assert root.attributes["mlflow.spanOutputs"] == "18 C and sunny"
    assert assembler.ignored["outside_turn"] == 0
    assert assembler.open_turns == 0
    # once settled (the trace is being exported), a late answer is counted, not applied
    assembler.settle()
    assert feed(assembler, [ev("message.response", {"content": "late"})]) == []
    assert assembler.ignored["outside_turn"] == 1
    assert root.attributes["mlflow.spanOutputs"] == "18 C and sunny"


def test_concurrent_calls_of_one_tool_pair_in_order_not_by_name_alone() -> None:
    """Corail's listener pairs by name: a.result would close the wrong call. FIFO per name."""
    ev = Stream()
    events = [
        ev("message.received", {"content": "two cities"}, at=0),
        ev("tool.called", {"name": "weather", "args": {"city": "Paris"}}, at=100),
        ev("tool.called", {"name": "weather", "args": {"city": "Rome"}}, at=110),
        ev("tool.called", {"name": "clock", "args": {}}, at=120),
        ev("tool.result", {"name": "clock", "output": "noon"}, at=130),
        ev("tool.result", {"name": "weather", "output": "Paris 18"}, at=300),
        ev("tool.error", {"name": "weather", "error": "Rome timeout", "attempt": 0}, at=900),
        ev("turn.ended", {"round": 0, "stop_reason": "end_turn"}, at=1000),
    ]
    (trace,) = feed(TraceAssembler(), events)
    paris, rome = children(trace, "tool:weather")
    assert paris.attributes["mlflow.spanInputs"] == {"city": "Paris"}
    assert (paris.status, paris.end_ns - paris.start_ns) == (StatusCode.OK, 200_000_000)
    assert rome.attributes["mlflow.spanInputs"] == {"city": "Rome"}
    assert rome.status == StatusCode.ERROR and rome.status_message == "Rome timeout"
    assert rome.end_ns - rome.start_ns == 790_000_000
    (clock,) = children(trace, "tool:clock")
    assert clock.status == StatusCode.OK


def test_call_ids_pair_exactly_whatever_the_order() -> None:
    ev = Stream()
    events = [
        ev("message.received", {"content": "x"}),
        ev("tool.called", {"name": "search", "args": "a", "call_id": "c1"}),
        ev("tool.called", {"name": "search", "args": "b", "call_id": "c2"}),
        ev("tool.result", {"name": "search", "output": "B", "call_id": "c2"}),
        ev("tool.result", {"name": "search", "output": "A", "call_id": "c1"}),
        ev("turn.ended", {"round": 0, "stop_reason": "end_turn"}),
    ]
    (trace,) = feed(TraceAssembler(), events)
    first, second = children(trace, "tool:")
    assert (first.attributes["mlflow.spanInputs"], first.attributes["mlflow.spanOutputs"]) == (
        "a",
        "A",
    )
    assert (second.attributes["mlflow.spanInputs"], second.attributes["mlflow.spanOutputs"]) == (
        "b",
        "B",
    )
    assert first.attributes["gen_ai.tool.call.id"] == "c1"


def test_corail_retries_each_get_a_span_with_error_status_on_failures() -> None:
    ev = Stream()
    events = [
        ev("message.received", {"content": "x"}, at=0),
        ev("tool.called", {"name": "fetch", "args": {"u": 1}}, at=100),
        ev("tool.error", {"name": "fetch", "error": "boom", "attempt": 0}, at=200),
        ev("tool.error", {"name": "fetch", "error": "boom again", "attempt": 1}, at=400),
        ev("tool.result", {"name": "fetch", "output": "ok"}, at=700),
        ev("turn.ended", {"round": 0, "stop_reason": "end_turn"}, at=800),
    ]
    (trace,) = feed(TraceAssembler(), events)
    spans = children(trace, "tool:fetch")
    assert [s.attributes["agentstream.tool.attempt"] for s in spans] == [0, 1, 2]
    assert [s.status for s in spans] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.OK]
    # each retry starts where the previous attempt ended
    assert [(s.start_ns - spans[0].start_ns) // 1_000_000 for s in spans] == [0, 100, 300]
    assert spans[1].attributes["agentstream.tool.retry_of"] == spans[0].span_id.hex()
    assert len({s.span_id for s in spans}) == 3


def test_calute_turn_with_decisions_retry_and_block() -> None:
    ev = Stream()
    tid = "a1b2c3d4e5f6"
    events = [
        ev("audit.turn_start", {"prompt_preview": "search twice"}, turn_id=tid),
        ev("audit.tool_policy_decision", {"tool_name": "web", "action": "allow"}, turn_id=tid),
        ev(
            "audit.tool_call_attempt", {"tool_name": "web", "arguments_preview": "q=1"}, turn_id=tid
        ),
        ev("audit.sandbox_decision", {"tool_name": "web", "context": "net"}, turn_id=tid),
        ev(
            "audit.tool_call_failure",
            {"tool_name": "web", "error_type": "ValueError", "error_message": "bad"},
            turn_id=tid,
        ),
        ev(
            "audit.tool_call_attempt", {"tool_name": "web", "arguments_preview": "q=1"}, turn_id=tid
        ),
        ev(
            "audit.tool_call_complete",
            {"tool_name": "web", "duration_ms": 5.0, "result_preview": "3 hits"},
            turn_id=tid,
        ),
        ev("audit.tool_loop_block", {"tool_name": "web", "pattern": "same_call"}, turn_id=tid),
        ev("audit.turn_end", {"content_preview": "done", "function_calls_count": 2}, turn_id=tid),
    ]
    (trace,) = feed(TraceAssembler(), events)
    assert trace.complete and trace.root.attributes["agentstream.turn_id"] == tid
    assert trace.root.attributes["mlflow.spanOutputs"] == "done"
    first, retry, blocked = children(trace, "tool:web")
    assert first.status == StatusCode.ERROR and first.status_message == "ValueError: bad"
    assert [e.name for e in first.events] == [
        "tool_policy_decision",
        "sandbox_decision",
        "exception",
    ]
    assert retry.attributes["agentstream.tool.attempt"] == 1 and retry.status == StatusCode.OK
    assert retry.attributes["mlflow.spanOutputs"] == "3 hits"
    assert blocked.status == StatusCode.ERROR and blocked.attributes["agentstream.blocked"] is True
    assert "same_call" in blocked.status_message


def test_guards_retrieval_plan_and_stop_reason() -> None:
    ev = Stream()
    events = [
        ev("message.received", {"content": "x"}),
        ev("guard.input.checked", {"guard": "pii", "direction": "input", "allowed": True}),
        ev("retrieval.searched", {"query": "paris"}),
        ev("retrieval.results", {"count": 3}),
        ev("plan.created", {"goal": "trip", "steps": ["a", "b"]}),
        ev("plan.step.started", {"step": "a", "index": 0}),
        ev("plan.step.completed", {"step": "a", "index": 0}),
        ev("plan.step.started", {"step": "b", "index": 1}),
        ev("plan.step.failed", {"step": "b", "error": "no rooms", "index": 1}),
        ev("plan.completed", {"goal": "trip", "progress": 0.5}),
        ev("guard.blocked", {"direction": "output", "reason": "card number", "guard": "pii"}),
        ev("turn.ended", {"round": 0, "stop_reason": "guard_blocked"}),
    ]
    (trace,) = feed(TraceAssembler(), events)
    names = [s.name for s in trace.spans[1:]]
    assert names == ["retrieval", "plan", "plan.step", "plan.step", "guard:pii"]
    retrieval, plan, step_a, step_b, guard = trace.spans[1:]
    assert retrieval.attributes["agentstream.retrieval.count"] == 3
    assert step_a.parent_span_id == plan.span_id and step_a.status == StatusCode.OK
    assert step_b.status == StatusCode.ERROR and step_b.status_message == "no rooms"
    assert guard.status == StatusCode.ERROR and "card number" in guard.status_message
    assert [e.name for e in trace.root.events] == ["guard.input.checked"]
    assert trace.root.status == StatusCode.ERROR
    assert trace.root.attributes["agentstream.stop_reason"] == "guard_blocked"


def test_idle_timeout_exports_incomplete_with_open_spans_marked() -> None:
    now = [0.0]
    assembler = TraceAssembler(idle_timeout_s=30, clock=lambda: now[0])
    ev = Stream()
    assert (
        feed(
            assembler,
            [
                ev("message.received", {"content": "x"}, at=0),
                ev("llm.call.started", {"round": 0}, at=100),
            ],
        )
        == []
    )
    now[0] = 29.0
    assert assembler.expire() == []
    now[0] = 31.0
    (trace,) = assembler.expire()
    assert not trace.complete and assembler.open_turns == 0
    llm = trace.spans[1]
    assert (
        llm.attributes[INCOMPLETE] is True and llm.attributes[INCOMPLETE_REASON] == "idle_timeout"
    )
    assert llm.status == StatusCode.ERROR and llm.end_ns == llm.start_ns  # closed at the last event
    assert trace.root.attributes[INCOMPLETE_REASON] == "idle_timeout"


def test_open_turns_are_bounded_least_recently_active_evicted() -> None:
    assembler = TraceAssembler(max_open_turns=2)
    a, b, c = Stream("a" * 32), Stream("b" * 32), Stream("c" * 32)
    feed(
        assembler,
        [a("message.received", {"content": "1"}), b("message.received", {"content": "2"})],
    )
    feed(assembler, [a("tool.called", {"name": "t"})])  # a is now the most recently active
    (evicted,) = feed(assembler, [c("message.received", {"content": "3"})])
    assert evicted.session_id == "b" * 32 and not evicted.complete
    assert evicted.root.attributes[INCOMPLETE_REASON] == "evicted"
    assert assembler.open_turns == 2


def test_later_events_of_a_closed_turn_are_counted_not_sent_again_under_the_same_ids() -> None:
    # an evicted (or idle, or ended) Calute turn came back as a new builder: its trace and
    # root span ids went out twice, the second root without the turn's start overwrote the first
    assembler = TraceAssembler(max_open_turns=1)
    a, b = Stream("a" * 32), Stream("b" * 32)
    feed(assembler, [a("audit.turn_start", {"prompt_preview": "p"}, turn_id="t1")])
    (evicted,) = feed(assembler, [b("audit.turn_start", {"prompt_preview": "q"}, turn_id="t2")])
    assert evicted.root.attributes[INCOMPLETE_REASON] == "evicted"
    late = a("audit.tool_call_attempt", {"tool_name": "x", "arguments_preview": "{}"}, turn_id="t1")
    assert feed(assembler, [late]) == [] and assembler.ignored["closed_turn"] == 1
    (ended,) = feed(assembler, [b("audit.turn_end", {"content_preview": "done"}, turn_id="t2")])
    assert ended.complete
    again = b("audit.tool_call_complete", {"tool_name": "x"}, turn_id="t2")
    assert feed(assembler, [again]) == [] and assembler.ignored["closed_turn"] == 2
    assert assembler.open_turns == 0
    # a new turn of the same session opens as before
    (new,) = feed(
        assembler,
        [
            a("audit.turn_start", {"prompt_preview": "r"}, turn_id="t3"),
            a("audit.turn_end", {"content_preview": "ok"}, turn_id="t3"),
        ],
    )
    assert new.complete and new.trace_id != evicted.trace_id


def test_ids_are_deterministic_and_redeliveries_ignored() -> None:
    ev = Stream()
    events = [
        ev("message.received", {"content": "x"}),
        ev("tool.called", {"name": "t"}),
        ev("tool.result", {"name": "t"}),
        ev("turn.ended", {"round": 0, "stop_reason": "end_turn"}),
    ]
    (first,) = feed(TraceAssembler(), events)
    assembler = TraceAssembler()
    (second,) = feed(assembler, [*events[:2], events[1], *events[2:]])  # tool.called redelivered
    assert assembler.ignored["duplicate"] == 1
    assert first.trace_id == second.trace_id and len(first.trace_id) == 16
    assert [s.span_id for s in first.spans] == [s.span_id for s in second.spans]
    assert [(s.start_ns, s.end_ns) for s in first.spans] == [
        (s.start_ns, s.end_ns) for s in second.spans
    ]


def test_new_message_supersedes_an_open_corail_turn_and_turn_ids_separate_turns() -> None:
    ev = Stream()
    assembler = TraceAssembler()
    feed(assembler, [ev("message.received", {"content": "1"}), ev("tool.called", {"name": "t"})])
    (old,) = feed(assembler, [ev("message.received", {"content": "2"})])
    assert old.root.attributes[INCOMPLETE_REASON] == "superseded"
    assert old.spans[1].attributes[INCOMPLETE_REASON] == "superseded"
    # Calute turns interleaved in one session stay apart by turn_id
    feed(
        assembler,
        [ev("audit.turn_start", {}, turn_id="t1"), ev("audit.turn_start", {}, turn_id="t2")],
    )
    done = feed(assembler, [ev("audit.turn_end", {}, turn_id="t1")])
    assert [t.root.attributes["agentstream.turn_id"] for t in done] == ["t1"]


def test_span_limit_per_turn_counts_refused_spans() -> None:
    ev = Stream()
    assembler = TraceAssembler(limits=TurnLimits(max_spans=3))
    events = [ev("message.received", {"content": "x"})]
    events += [ev("tool.called", {"name": f"t{i}"}) for i in range(4)]
    events.append(ev("turn.ended", {"round": 0, "stop_reason": "end_turn"}))
    (trace,) = feed(assembler, events)
    assert len(trace.spans) == 3 and trace.dropped_spans == 2


def test_decisions_waiting_for_an_attempt_are_bounded_over_all_tool_names() -> None:
    # each tool name kept up to 128: an agent naming tools freely grew an open turn by ~500 B
    # per decision, for nothing (the root takes 128 events at the end)
    ev = Stream()
    tid = "a1b2c3d4e5f6"
    events = [ev("audit.turn_start", {"prompt_preview": "go"}, turn_id=tid)]
    events += [
        ev("audit.tool_policy_decision", {"tool_name": f"t{i}", "action": "allow"}, turn_id=tid)
        for i in range(1_000)
    ]
    assembler = TraceAssembler(limits=TurnLimits(max_events_per_span=10))
    assert feed(assembler, events) == []
    (turn,) = assembler._turns.values()
    assert sum(map(len, turn.builder._pending.values())) == 10
    events = [
        ev("audit.tool_call_attempt", {"tool_name": "t0", "arguments_preview": "{}"}, turn_id=tid),
        ev("audit.tool_policy_decision", {"tool_name": "t5000", "action": "allow"}, turn_id=tid),
        ev("audit.turn_end", {"content_preview": "done"}, turn_id=tid),
    ]
    (trace,) = feed(assembler, events)
    (tool,) = children(trace, "tool:t0")
    assert [e.name for e in tool.events] == ["tool_policy_decision"]
    parked = [e.attributes["gen_ai.tool.name"] for e in trace.root.events]
    assert parked == [f"t{i}" for i in range(1, 10)] + ["t5000"]  # t0's went to its attempt


def test_malformed_data_never_raises() -> None:
    ev = Stream()
    events = [
        ev("message.received", {"content": 12}),
        ev("tool.called", {"name": None, "args": object()}),
        ev("llm.call.completed", {"round": "x"}),
        ev("tool.error", {"attempt": "two"}),
        ev("turn.ended", {"stop_reason": 5}),
    ]
    (trace,) = feed(TraceAssembler(), events)
    assert trace.complete and [s.name for s in trace.spans[1:]] == ["tool:unknown", "llm"]


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def test_arguments_nested_as_deep_as_the_decoder_allows_become_json_text_below_16_levels() -> None:
    ev = Stream()
    events = [
        ev("message.received", {"content": "hi"}),
        ev("tool.called", {"name": "deep", "args": nested(900)}),
        ev("tool.result", {"name": "deep", "output": "ok"}),
        ev("turn.ended", {"stop_reason": "end_turn"}),
    ]
    (trace,) = feed(TraceAssembler(limits=TurnLimits(max_attribute_chars=100_000)), events)
    (tool,) = children(trace, "tool:")
    value: Any = tool.attributes["mlflow.spanInputs"]
    for _ in range(16):
        value = value["a"]
    assert isinstance(value, str) and value.startswith('{"a":{"a":')
    assert value.rstrip("}").endswith('"leaf":1') and value.count("{") == 900 - 16
    assert tool.status is StatusCode.OK and tool.attributes["mlflow.spanOutputs"] == "ok"


def test_retry_error_with_attempt_continues_the_failed_call_not_a_fresh_one() -> None:
    """Without call ids: A and B run concurrently; A fails (attempt 0) and is retried
    (attempt 1) while B is still open. attempt=1 cannot be B's (a fresh call starts at 0)."""
    ev = Stream()
    events = [
        ev("message.received", {"content": "x"}, at=0),
        ev("tool.called", {"name": "fetch", "args": "A"}, at=10),
        ev("tool.called", {"name": "fetch", "args": "B"}, at=20),
        ev("tool.error", {"name": "fetch", "error": "A0", "attempt": 0}, at=30),
        ev("tool.error", {"name": "fetch", "error": "A1", "attempt": 1}, at=40),
        ev("tool.result", {"name": "fetch", "output": "B done"}, at=50),
        ev("turn.ended", {"round": 0, "stop_reason": "end_turn"}, at=60),
    ]
    (trace,) = feed(TraceAssembler(), events)
    a0, b, a1 = children(trace, "tool:fetch")
    assert (a0.attributes["mlflow.spanInputs"], a0.status_message) == ("A", "A0")
    assert a1.attributes["mlflow.spanInputs"] == "A" and a1.status_message == "A1"
    assert a1.attributes["agentstream.tool.attempt"] == 1
    assert a1.attributes["agentstream.tool.retry_of"] == a0.span_id.hex()
    assert b.attributes["mlflow.spanInputs"] == "B"
    assert b.attributes["mlflow.spanOutputs"] == "B done" and b.status == StatusCode.OK


def ms_from_t0(moment: datetime) -> int:
    return (moment - T0) // timedelta(milliseconds=1)


def test_times_outside_what_otlp_holds_are_clamped_not_fatal_to_the_export() -> None:
    """OTLP times are unsigned 64-bit nanoseconds (1970 to 2554): one event of a Go producer's
    zero time or of the year 9999 made the encoding of the whole request fail."""
    ev = Stream()
    events = [
        ev("message.received", {"content": "hi"}),
        ev("tool.called", {"name": "t"}, at=ms_from_t0(datetime(1, 1, 1, tzinfo=UTC))),
        ev("tool.result", {"name": "t"}, at=ms_from_t0(datetime(9999, 12, 31, tzinfo=UTC))),
        ev("turn.ended", {"stop_reason": "end_turn"}),
    ]
    (trace,) = feed(TraceAssembler(), events)
    assert encode([trace], service_name="svc")  # it raised ValueError
    (tool,) = children(trace, "tool:")
    assert (tool.start_ns, tool.end_ns) == (0, 2**64 - 1)


def test_a_calute_turn_inside_a_corail_tool_call_leaves_the_request_whole() -> None:
    """Calute code running in a Corail request's tool made its turn the session's current
    one: once it ended, the request's next events opened a fragment trace ("complete", with
    an unpaired tool span), and the request itself was exported at its idle timeout."""
    ev = Stream()
    tid = "c0ffee000001"
    events = [
        ev("message.received", {"content": "outer question"}),
        ev("turn.started", {"round": 0}),
        ev("llm.call.started", {"round": 0}),
        ev("llm.call.completed", {"round": 0, "model": "m", "stop_reason": "tool_use"}),
        ev("tool.called", {"name": "research", "args": {}}),
        ev("audit.turn_start", {"prompt_preview": "inner"}, turn_id=tid),
        ev("audit.tool_call_attempt", {"tool_name": "web"}, turn_id=tid),
        ev("audit.tool_call_complete", {"tool_name": "web", "duration_ms": 3.0}, turn_id=tid),
        ev("audit.turn_end", {"content_preview": "inner done"}, turn_id=tid),
        ev("tool.result", {"name": "research", "output": "found"}),
        ev("turn.started", {"round": 1}),
        ev("llm.call.started", {"round": 1}),
        ev("llm.call.completed", {"round": 1, "model": "m", "stop_reason": "end_turn"}),
        ev("turn.ended", {"round": 1, "stop_reason": "end_turn"}),
        ev("message.response", {"content": "answer"}),
    ]
    assembler = TraceAssembler()
    inner, outer = feed(assembler, events)
    assembler.settle()
    assert assembler.open_turns == 0
    assert inner.root.attributes["agentstream.turn_id"] == tid and inner.complete
    assert inner.root.status == StatusCode.OK  # Calute names no stop reason
    assert outer.complete and outer.root.attributes["mlflow.spanInputs"] == "outer question"
    (tool,) = children(outer, "tool:research")
    assert "agentstream.unpaired" not in tool.attributes and tool.status == StatusCode.OK
    # Corail's llm.call.started names no model: the completion names the span.
    assert [s.name for s in children(outer, "llm")] == ["llm:m", "llm:m"]


def test_a_calute_turn_that_reported_an_error_ends_in_error() -> None:
    ev = Stream()
    tid = "c0ffee000002"
    (trace,) = feed(
        TraceAssembler(),
        [
            ev("audit.turn_start", {}, turn_id=tid),
            ev("audit.error", {"error_type": "KeyError", "error_message": "'x'"}, turn_id=tid),
            ev("audit.turn_end", {}, turn_id=tid),
        ],
    )
    assert trace.root.status == StatusCode.ERROR
    assert trace.root.status_message == "KeyError: 'x'"


def test_events_without_a_turn_id_join_the_calute_turn_opened_last() -> None:
    """Calute's emit_* take turn_id=None: such an event joins the turn opened last. A Calute
    turn opened after another Calute turn did not become the current one, and the tool call
    went to an orphan turn (its own trace, exported at the idle timeout)."""
    ev = Stream()
    assembler = TraceAssembler()
    feed(
        assembler,
        [ev("audit.turn_start", {}, turn_id="a"), ev("audit.turn_start", {}, turn_id="b")],
    )
    feed(assembler, [ev("audit.turn_end", {}, turn_id="a")])
    feed(
        assembler,
        [
            ev("audit.tool_call_attempt", {"tool_name": "search"}),
            ev("audit.tool_call_complete", {"tool_name": "search", "duration_ms": 1.0}),
        ],
    )
    (b,) = feed(assembler, [ev("audit.turn_end", {}, turn_id="b")])
    assert [s.name for s in b.spans] == ["turn", "tool:search"]
    assert assembler.open_turns == 0
