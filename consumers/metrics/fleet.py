"""The fleet's Prometheus metrics, computed from the event stream.

:class:`FleetMetrics` registers every ``agentstream_*`` family on an injected registry and
updates them from batches of records (:meth:`FleetMetrics.observe_batch`). The hot path is
the part every event pays for: a count per ``(type, agent)`` kept in a plain dict and added
to the counters once per batch, the pipeline delay counted into a local histogram batch, the
session's latest time, and a dict lookup for the few types that feed a specific metric.
Payloads are read from ``event.data`` with type checks instead of the typed view: an event
whose ``data`` is odd still counts, with ``unknown`` where a name is missing.

Counters are per process; instances splitting the partitions add up with ``sum``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from agentstream.consumers.runtime.eventtime import EventTime
from agentstream.consumers.runtime.histogram import BatchHistogram, HistogramBatch
from agentstream.schemas import Event, StopReason
from agentstream.schemas.payloads import usage_count

from .labels import OTHER, UNKNOWN, BoundedLabel, type_label
from .pairing import PendingCalls
from .sessions import ActiveSessions, PartitionKey

log = logging.getLogger(__name__)

DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LLM_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)

AGENT, SERVICE = "agent", "service"
"""``origin`` of a budget or loop signal: emitted in the agent pod (events topic) or
published by an agentstream service (alerts topic)."""

SUCCESS, ERROR = "success", "error"
KNOWN_DIMENSIONS = ("tokens", "rounds", "tool_calls", "cost_usd", "wall_time_s")
"""Budget dimensions (Corail's and the budget service's): their series exist from the start."""
KNOWN_PATTERNS = ("max_calls", "same_call", "pingpong")
"""Calute's loop patterns: their series exist from the start."""
_STOP_REASONS = frozenset(r.value for r in StopReason)
_DIRECTIONS = frozenset(("input", "output"))


class RecordLike(Protocol):
    """What :meth:`FleetMetrics.observe_batch` reads of a consumed record."""

    @property
    def event(self) -> Event: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


class PartitionLike(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...


class _PartitionState:
    __slots__ = ("llm", "seen", "tools")

    def __init__(
        self, tools: PendingCalls, llm: PendingCalls, seen: dict[str, float] | None
    ) -> None:
        self.tools = tools
        self.llm = llm
        self.seen = seen


_Handler = Callable[[Event, float, _PartitionState, str], None]


def _text(value: object) -> str:
    return value if type(value) is str else ""


def _session(event: Event) -> str:
    # Events without a session are keyed (and partitioned) by their source.
    return event.session_id or event.source


class FleetMetrics:
    """Every fleet metric, and how each event updates them."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        events_topic: str,
        alerts_topic: str,
        agents: BoundedLabel | None = None,
        tools: BoundedLabel | None = None,
        models: BoundedLabel | None = None,
        session_window_s: float = 300.0,
        pending_max_sessions: int = 10_000,
        pending_max_per_session: int = 64,
        pending_ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        event_time: EventTime | None = None,
    ) -> None:
        """``event_time``: events whose timestamp is far from their record's are timed by the
        record (pipeline delay, call durations, session activity); None: by their own."""
        self._event_time = event_time
        self._events_topic = events_topic
        self._alerts_topic = alerts_topic
        self._agents = agents or BoundedLabel(50)
        self._tools = tools or BoundedLabel(100)
        self._models = models or BoundedLabel(20)
        self._dimensions = BoundedLabel(16)
        self._patterns = BoundedLabel(16)
        self._pending_max_sessions = pending_max_sessions
        self._pending_max_per_session = pending_max_per_session
        self._pending_ttl_s = pending_ttl_s
        self._clock = clock
        self._states: dict[PartitionKey, _PartitionState] = {}
        self._revoked: dict[PartitionKey, _PartitionState] = {}  # until the next assignment
        self._now = 0.0  # the clock when the batch in progress started
        self._next_prune = 0.0
        self._prune_every_s = min(60.0, session_window_s / 4)

        def counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.events = counter(
            "agentstream_events_total",
            "Events consumed, by type (the catalogue's, else other) and agent.",
            ["type", "agent"],
        )
        self.tool_calls = counter(
            "agentstream_tool_calls_total",
            "Tool call outcomes (tool.result, tool.error, audit.tool_call_complete/_failure).",
            ["tool", "outcome"],
        )
        self.tool_duration = BatchHistogram(
            "agentstream_tool_duration_seconds",
            "Tool call duration: the audit duration_ms, or tool.called to its outcome.",
            TOOL_BUCKETS,
            ["tool"],
            registry=registry,
        )
        self.llm_calls = counter(
            "agentstream_llm_calls_total", "Completed LLM calls (llm.call.completed).", ["model"]
        )
        self.llm_duration = BatchHistogram(
            "agentstream_llm_call_duration_seconds",
            "LLM call duration, llm.call.started to llm.call.completed of the same round.",
            LLM_BUCKETS,
            ["model"],
            registry=registry,
        )
        self.llm_tokens = counter(
            "agentstream_llm_tokens_total",
            "LLM tokens by kind: input, output (reported), output_estimated (characters / 4 "
            "when the call reported no output tokens).",
            ["model", "kind"],
        )
        self.turns = counter(
            "agentstream_turns_total",
            "Finished agent loops by stop reason (turn.ended; audit.turn_end counts as unknown).",
            ["stop_reason"],
        )
        self.guard_checks = counter(
            "agentstream_guard_checks_total",
            "Guard checks (guard.input/output.checked) by direction and outcome.",
            ["direction", "outcome"],
        )
        self.guard_blocks = counter(
            "agentstream_guard_blocks_total", "Content blocked by a guard.", ["direction"]
        )
        self.budget_events = counter(
            "agentstream_budget_events_total",
            "budget.warning and budget.exceeded events in the stream by level, dimension and "
            "origin (agent: emitted in the pod; service: published on the alerts topic).",
            ["level", "dimension", "origin"],
        )
        self.loop_events = counter(
            "agentstream_loop_events_total",
            "Tool loop findings in the stream (audit.tool_loop_warning/_block) by kind, "
            "pattern and origin (agent: emitted in the pod; service: on the alerts topic).",
            ["kind", "pattern", "origin"],
        )
        self.unpaired_calls = counter(
            "agentstream_unpaired_calls_total",
            "Call starts or outcomes that got no duration: no_start (outcome without a start), "
            "evicted (memory bound), expired, session_ended, turn_ended, revoked (partition "
            "moved).",
            ["call", "reason"],
        )
        self.malformed = counter(
            "agentstream_metrics_malformed_events_total",
            "Events counted in agentstream_events_total whose data could not feed their "
            "specific metric.",
            ["type"],
        )
        self.pipeline_delay = BatchHistogram(
            "agentstream_pipeline_delay_seconds",
            "Time from an event's timestamp to its processing by the metrics service.",
            DELAY_BUCKETS,
            registry=registry,
        )
        self.active_sessions = ActiveSessions(session_window_s, clock=clock, registry=registry)

        self._children: dict[tuple[Any, ...], Any] = {}
        self._initialise_series()
        self._event_children: dict[tuple[str, str], Any] = {}
        # What the batch in progress adds; merged into the metrics when it is done.
        self._incs: dict[tuple[Any, ...], float] = {}
        self._tool_times = self.tool_duration.new_batch()
        self._llm_times = self.llm_duration.new_batch()
        self._dispatch: dict[str, _Handler] = {
            "tool.called": self._tool_called,
            "tool.result": self._tool_result,
            "tool.error": self._tool_error,
            "audit.tool_call_complete": self._audit_tool_complete,
            "audit.tool_call_failure": self._audit_tool_failure,
            "llm.call.started": self._llm_started,
            "llm.call.completed": self._llm_completed,
            "turn.started": self._turn_started,
            "turn.ended": self._turn_ended,
            "audit.turn_end": self._audit_turn_end,
            "guard.input.checked": self._guard_checked,
            "guard.output.checked": self._guard_checked,
            "guard.blocked": self._guard_blocked,
            "budget.warning": self._budget_warning,
            "budget.exceeded": self._budget_exceeded,
            "audit.tool_loop_warning": self._loop_warning,
            "audit.tool_loop_block": self._loop_block,
            "session.ended": self._session_ended,
        }

    def _initialise_series(self) -> None:
        """Create the series alerts and dashboards count with ``increase()`` at 0, so that the
        first event is an increase (a series born at 1 is not one for Prometheus)."""
        for origin in (AGENT, SERVICE):
            for level in ("warning", "exceeded"):
                for dimension in KNOWN_DIMENSIONS:
                    self._child(self.budget_events, level, self._dimensions(dimension), origin)
            for kind in ("warning", "block"):
                for pattern in KNOWN_PATTERNS:
                    self._child(self.loop_events, kind, self._patterns(pattern), origin)
        for reason in sorted(_STOP_REASONS):
            self._child(self.turns, reason)
        for direction in sorted(_DIRECTIONS):
            self._child(self.guard_blocks, direction)

    # --- the consumer side --------------------------------------------------------------

    async def handle_batch(self, records: Sequence[RecordLike]) -> None:
        """The batch handler to subscribe with ``consumer.subscribe_batch("*", ...)``."""
        self.observe_batch(records)

    async def forget_partitions(self, partitions: Iterable[PartitionLike]) -> None:
        """The ``on_revoked`` hook: set the partitions' open calls and sessions aside until
        the next assignment, which keeps those it assigns back (a rebalance revokes every
        partition; each instance gets most of them back)."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            state = self._states.pop(key, None)
            if state is not None:
                self._revoked[key] = state
                self.active_sessions.detach(key)

    async def keep_partitions(self, partitions: Iterable[PartitionLike]) -> None:
        """The ``on_assigned`` hook: take back the state of the partitions assigned again;
        drop the others' (their open calls get no duration: ``revoked``). Sessions active
        on a partition that moved count on the instance that took it from their next event."""
        assigned = {(tp.topic, tp.partition) for tp in partitions}
        revoked, self._revoked = self._revoked, {}
        for key, state in revoked.items():
            if key in assigned and key not in self._states:
                self._states[key] = state
                if state.seen is not None:
                    self.active_sessions.attach(key, state.seen)
            else:
                state.tools.clear()
                state.llm.clear()

    def observe_batch(self, records: Sequence[RecordLike]) -> None:
        """Update every metric from ``records`` (normally consecutive records of one partition).

        Counts become visible when the whole batch is done: a batch that fails half-way
        (and is retried by the runtime) adds nothing to the counters.
        """
        if not records:
            return
        now = self._now = self._clock()
        counts: dict[tuple[str, str], int] = {}
        delay = self.pipeline_delay.new_batch()
        observe_delay = delay.observe
        self._incs = {}
        self._tool_times = self.tool_duration.new_batch()
        self._llm_times = self.llm_duration.new_batch()
        dispatch = self._dispatch
        skew_ms = self._event_time.max_skew_ms if self._event_time is not None else 0
        topic, partition = "", -1
        state: _PartitionState | None = None
        seen: dict[str, float] | None = None
        origin = AGENT
        with self.active_sessions.lock:
            for record in records:
                if record.partition != partition or record.topic != topic:
                    topic, partition = record.topic, record.partition
                    state = self._state(topic, partition)
                    seen = state.seen
                    origin = SERVICE if topic == self._alerts_topic else AGENT
                event = record.event
                key = (event.type, event.agent_id)
                counts[key] = counts.get(key, 0) + 1
                at = event.timestamp.timestamp()
                if skew_ms:  # EventTime.seconds, inlined: this runs once per event
                    off = at * 1000 - record.timestamp_ms
                    if (off > skew_ms or off < -skew_ms) and record.timestamp_ms >= 0:
                        at = self._retime(event, record)
                observe_delay(now - at if now > at else 0.0)
                if seen is not None and event.session_id:
                    seen[event.session_id] = at if at < now else now
                handler = dispatch.get(event.type)
                if handler is not None:
                    assert state is not None
                    try:
                        handler(event, at, state, origin)
                    except Exception:  # a bug or odd data must not cost the batch its counts
                        log.debug("metrics of a %s event failed", event.type, exc_info=True)
                        self._inc(self.malformed, type_label(event.type))
            if now >= self._next_prune:
                self._prune(now)
        self._flush(counts, delay)

    def _retime(self, event: Event, record: RecordLike) -> float:
        """The record's timestamp, for an event whose own is too far from it (counted, logged)."""
        assert self._event_time is not None
        ms = record.timestamp_ms
        self._event_time.skewed(event, ms, record.topic, record.partition, record.offset)
        return ms / 1000

    def _flush(self, counts: dict[tuple[str, str], int], delay: HistogramBatch) -> None:
        event_children = self._event_children
        for key, n in counts.items():
            child = event_children.get(key)
            if child is None:
                child = self._child(self.events, type_label(key[0]), self._agents(key[1]))
                if len(event_children) < 16_384:
                    event_children[key] = child
            child.inc(n)
        for labelled, amount in self._incs.items():
            self._child(*labelled).inc(amount)
        self.pipeline_delay.add(delay)
        self.tool_duration.add(self._tool_times)
        self.llm_duration.add(self._llm_times)

    def _inc(self, family: Counter, *labels: str, amount: float = 1) -> None:
        """Add to a counter when the batch is done (label values already bounded)."""
        key = (family, *labels)
        self._incs[key] = self._incs.get(key, 0) + amount

    # --- state ----------------------------------------------------------------------------

    def _state(self, topic: str, partition: int) -> _PartitionState:
        key = (topic, partition)
        state = self._states.get(key)
        if state is None:
            seen = self.active_sessions.partition(key) if topic == self._events_topic else None
            state = _PartitionState(self._pending("tool"), self._pending("llm"), seen)
            self._states[key] = state
        return state

    def _pending(self, call: str) -> PendingCalls:
        def dropped(reason: str, count: int) -> None:
            self._child(self.unpaired_calls, call, reason).inc(count)  # rare: at once

        return PendingCalls(
            max_sessions=self._pending_max_sessions,
            max_per_session=self._pending_max_per_session,
            on_drop=dropped,
        )

    def _prune(self, now: float) -> None:
        """Forget stale sessions and open calls even when nobody scrapes (lock held)."""
        self._next_prune = now + self._prune_every_s
        cutoff = now - self.active_sessions.window_s
        for state in list(self._states.values()):
            state.tools.expire(now - self._pending_ttl_s)
            state.llm.expire(now - self._pending_ttl_s)
            if state.seen:
                for session in [s for s, seen in state.seen.items() if seen < cutoff]:
                    del state.seen[session]

    def _child(self, family: Any, *labels: str) -> Any:
        """The labelled child of ``family``, cached (label values are already bounded)."""
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    # --- tools ----------------------------------------------------------------------------

    def _tool_called(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        data = event.data
        name = _text(data.get("name"))
        call_id = _text(data.get("call_id"))
        key = ("id", call_id) if call_id else ("name", name)
        state.tools.start(_session(event), event.agent_id, key, at, name, seen=self._now)

    def _tool_result(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        self._tool_outcome(event, at, state, SUCCESS)

    def _tool_error(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        self._tool_outcome(event, at, state, ERROR)

    def _tool_outcome(self, event: Event, at: float, state: _PartitionState, outcome: str) -> None:
        data = event.data
        name = _text(data.get("name"))
        call_id = _text(data.get("call_id"))
        session = _session(event)
        agent = event.agent_id
        started = None
        if call_id:
            started = state.tools.finish(session, agent, ("id", call_id))
        if started is None:
            started = state.tools.finish(session, agent, ("name", name))
        tool = self._tools(name or (started[1] if started else ""))
        self._inc(self.tool_calls, tool, outcome)
        if started is None:
            self._inc(self.unpaired_calls, "tool", "no_start")
        elif at >= started[0]:
            self._tool_times.observe(at - started[0], (tool,))

    def _audit_tool_complete(
        self, event: Event, at: float, state: _PartitionState, origin: str
    ) -> None:
        data = event.data
        tool = self._tools(data.get("tool_name"))
        status = data.get("status", SUCCESS)
        self._inc(self.tool_calls, tool, SUCCESS if status == SUCCESS else ERROR)
        reported = data.get("duration_ms")
        seconds = _seconds_from_ms(reported)
        if seconds is not None:
            self._tool_times.observe(seconds, (tool,))
        elif reported is not None:  # negative, text, past a week: its metric cannot use it
            self._inc(self.malformed, type_label(event.type))

    def _audit_tool_failure(
        self, event: Event, at: float, state: _PartitionState, origin: str
    ) -> None:
        self._inc(self.tool_calls, self._tools(event.data.get("tool_name")), ERROR)

    # --- LLM ------------------------------------------------------------------------------

    def _llm_started(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        data = event.data
        model = _text(data.get("model"))
        state.llm.start(_session(event), event.agent_id, _round(data), at, model, seen=self._now)

    def _llm_completed(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        data = event.data
        started = state.llm.finish(_session(event), event.agent_id, _round(data))
        model = self._models(_text(data.get("model")) or (started[1] if started else ""))
        self._inc(self.llm_calls, model)
        if started is None:
            self._inc(self.unpaired_calls, "llm", "no_start")
        elif at >= started[0]:
            self._llm_times.observe(at - started[0], (model,))
        input_tokens = usage_count(data.get("input_tokens"))
        if input_tokens:
            self._inc(self.llm_tokens, model, "input", amount=input_tokens)
        output_tokens = usage_count(data.get("output_tokens"))
        if output_tokens is not None:
            if output_tokens:
                self._inc(self.llm_tokens, model, "output", amount=output_tokens)
        else:
            chars = usage_count(data.get("output_chars"))
            if chars:
                self._inc(self.llm_tokens, model, "output_estimated", amount=chars // 4)

    # --- turns, guards --------------------------------------------------------------------

    def _turn_started(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        if _round(event.data) == 0:  # a new request: what the last one left open is over
            self._end_turn(event, state)

    def _turn_ended(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        reason = event.data.get("stop_reason")
        label = reason if type(reason) is str and reason in _STOP_REASONS else OTHER
        self._inc(self.turns, label)
        self._end_turn(event, state)

    @staticmethod
    def _end_turn(event: Event, state: _PartitionState) -> None:
        """The calls of this agent still open when its turn is over never get an outcome:
        kept, a later call of the same name or round would be paired with them (Corail's
        rounds start at 0 in every request) and take their start time. Calls are keyed by
        agent, so a worker agent's turn inside a planner's tool call (same session) leaves
        the planner's call open. Without a session (keyed by the pod), requests cannot be
        told apart: nothing is ended."""
        if not event.session_id:
            return
        session, agent = event.session_id, event.agent_id
        state.tools.end_owner(session, agent)
        state.llm.end_owner(session, agent)

    def _audit_turn_end(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        self._inc(self.turns, UNKNOWN)

    def _guard_checked(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        data = event.data
        direction = _direction(data, "input" if event.type == "guard.input.checked" else "output")
        allowed = data.get("allowed")
        outcome = "allowed" if allowed is True else "blocked" if allowed is False else UNKNOWN
        self._inc(self.guard_checks, direction, outcome)

    def _guard_blocked(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        self._inc(self.guard_blocks, _direction(event.data, UNKNOWN))

    # --- budgets, loops, sessions ---------------------------------------------------------

    def _budget_warning(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        self._budget("warning", event, origin)

    def _budget_exceeded(
        self, event: Event, at: float, state: _PartitionState, origin: str
    ) -> None:
        self._budget("exceeded", event, origin)

    def _budget(self, level: str, event: Event, origin: str) -> None:
        data = event.data
        dimension = _text(data.get("dimension"))
        if not dimension:
            # Corail's own budget.exceeded says which limit through the key it sends.
            if data.get("tokens_used") is not None:
                dimension = "tokens"
            elif data.get("rounds") is not None:
                dimension = "rounds"
        self._inc(self.budget_events, level, self._dimensions(dimension), origin)

    def _loop_warning(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        # Calute's detector emits a "warning" with severity_level "ok" for every checked call
        # (a bug of the seed): that is no finding.
        if event.data.get("severity_level") != "ok":
            self._loop("warning", event, origin)

    def _loop_block(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        self._loop("block", event, origin)

    def _loop(self, kind: str, event: Event, origin: str) -> None:
        pattern = self._patterns(event.data.get("pattern"))
        self._inc(self.loop_events, kind, pattern, origin)

    def _session_ended(self, event: Event, at: float, state: _PartitionState, origin: str) -> None:
        session = _session(event)
        state.tools.end_session(session)
        state.llm.end_session(session)
        if state.seen is not None:
            state.seen.pop(event.session_id, None)


MAX_DURATION_MS = 7 * 86_400_000
"""A call's reported duration beyond a week is taken for a wrong value (counted as malformed
data): one 1e308 made its tool's ``_sum`` absorb every later duration."""


def _seconds_from_ms(value: object) -> float | None:
    if (type(value) is int or type(value) is float) and 0 <= value <= MAX_DURATION_MS:
        return value / 1000
    return None


def _round(data: dict[str, Any]) -> int | None:
    value = data.get("round")
    return value if type(value) is int else None


def _direction(data: dict[str, Any], default: str) -> str:
    value = data.get("direction")
    return value if type(value) is str and value in _DIRECTIONS else default
