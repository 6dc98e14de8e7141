"""Pure accounting: what an event costs, running totals per scope, and when to signal.

Nothing here touches Kafka. The service feeds events (session scopes, on the input
partition) and usage deltas (agent and user day scopes, after the repartition) into a
:class:`Ledger`; the scenario tests and the benchmark feed a :class:`BudgetTracker`, which
does both in one process.

Scopes
    ``session:<session_id>``, ``agent:<agent_id>:<yyyy-mm-dd>`` and
    ``user:<user_id>:<yyyy-mm-dd>``. The day is the UTC date of the **event's timestamp**
    (taken in the pod), never the service's clock: a replay after a crash or a rebalance
    must land every event on the same day. The injected clock only decides when old scopes
    are evicted (:meth:`Ledger.evict`).
Tokens
    ``llm.call.completed`` with ``input_tokens``/``output_tokens``: those (reported).
    Without them but with ``output_chars``: ``output_chars // 4`` output tokens (Corail's
    estimate). ``message.response`` counts ``len(content) // 4`` only when no
    ``llm.call.completed`` of the same turn (same ``turn_id``, since the last
    ``turn.started``) was counted (otherwise the answer would be counted twice).
Rounds, tool calls
    ``turn.started``; ``tool.called`` and ``audit.tool_call_attempt``.
Cost
    Tokens times the model's price (config); a model without a price (or an estimate with
    no model) costs 0 and is counted as unpriced.
Wall time
    Session scopes only: last minus first event timestamp.
Idempotence
    Every scope remembers the last source offset it applied per input partition; an event
    at or below it is skipped, so replays after a crash never count twice. A session also
    remembers the ids of the last :data:`RECENT_EVENTS` events it counted: the same event
    delivered again (a producer's retry or its spool sends it twice, at another offset) is
    skipped too.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import msgspec

from agentstream.schemas import Event, EventType
from agentstream.schemas.envelope import utc_now
from agentstream.schemas.payloads import usage_count

from .config import DIMENSIONS, BudgetConfig, Dimension, Limits

CHARS_PER_TOKEN = 4
"""Corail's token estimate: characters of the model's output / 4."""

SIGNAL_NAMESPACE = uuid.UUID("5b1d7c1e-7a64-4f0e-9a55-6a3b0c2d9e41")
"""Namespace of the deterministic ids of budget signals (UUID version 5)."""

COUNTED_TYPES: frozenset[str] = frozenset(
    {
        EventType.LLM_CALL_COMPLETED.value,
        EventType.MESSAGE_RESPONSE.value,
        EventType.TURN_STARTED.value,
        EventType.TOOL_CALLED.value,
        EventType.AUDIT_TOOL_CALL_ATTEMPT.value,
    }
)
"""The event types that change a budget."""

RECENT_EVENTS = 32
"""Counted events per session whose ids are remembered to skip a redelivered copy: a
producer retries a batch whole, so a copy follows its original closely in the partition."""
_DIGEST = 8
_MAX_SESSIONLESS = 10_000
"""Sources whose last counted turn is remembered for events without a session."""


class ScopeKind(enum.StrEnum):
    SESSION = "session"
    AGENT = "agent"
    USER = "user"


class Level(enum.IntEnum):
    NONE = 0
    WARNING = 1
    EXCEEDED = 2


def session_scope(session_id: str) -> str:
    return f"session:{session_id}"


def day_scope(kind: ScopeKind, owner: str, day: date) -> str:
    return f"{kind.value}:{owner}:{day.isoformat()}"


def scope_kind(scope: str) -> ScopeKind:
    return ScopeKind(scope.split(":", 1)[0])


def event_day(event: Event) -> date:
    """The UTC day an event counts for: the date of its own timestamp."""
    return event.timestamp.astimezone(UTC).date()


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    """What one event adds to a budget (also the repartition record's body)."""

    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_tokens: int = 0
    rounds: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0
    unpriced_tokens: int = 0
    model: str | None = None


_NOTHING = Charge()
_NO_WALL_TIME = Limits(wall_time_s=0)


class ScopeState(msgspec.Struct, kw_only=True):
    """Running totals of one scope; the value of its changelog record."""

    scope: str
    agent_id: str = ""
    user_id: str = ""
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_tokens: int = 0
    rounds: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0
    unpriced_tokens: int = 0
    events: int = 0
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    offsets: dict[str, int] = {}
    """Last applied source offset per input partition (``"<partition>"`` → offset)."""
    signals: dict[str, int] = {}
    """Highest :class:`Level` emitted per dimension."""
    pending: list[Signal] = []
    """Signals decided but not yet confirmed sent (the outbox, persisted with the totals)."""
    counted_turn: str | None = None
    """Session scopes: the last turn whose ``llm.call.completed`` counted tokens."""
    seen_ms: int | None = None
    """When the service last applied an event here (its clock, Unix ms). Eviction goes by it:
    events that claim a time far ahead (a pod whose clock is years off stamps its records
    so as well) kept their scope from ever looking idle, and a backlog hours old made a
    session being counted look idle."""
    recent: bytes = b""
    """Session scopes: 8-byte digests of the ids of the last :data:`RECENT_EVENTS` counted
    events, oldest first."""

    @property
    def is_session(self) -> bool:
        return scope_kind(self.scope) is ScopeKind.SESSION

    def used(self, dimension: Dimension) -> float:
        if dimension is Dimension.WALL_TIME_S:  # sessions only: a day has no wall time
            if self.first_ts_ms is None or self.last_ts_ms is None or not self.is_session:
                return 0.0
            return (self.last_ts_ms - self.first_ts_ms) / 1000
        value: float = getattr(self, dimension.value)
        return value

    def applied(self, partition: int, offset: int) -> bool:
        """Whether the record at ``offset`` of input ``partition`` was applied already."""
        last = self.offsets.get(str(partition))
        return last is not None and offset <= last

    def counted_before(self, event_id: str) -> bool:
        """Whether the event ``event_id`` was counted here (among the last ones); if not, it
        is remembered as counted now."""
        digest = hashlib.blake2b(event_id.encode(), digest_size=_DIGEST).digest()
        recent = self.recent
        at = recent.find(digest)
        while at >= 0:
            if at % _DIGEST == 0:
                return True
            at = recent.find(digest, at + 1)
        self.recent = (recent + digest)[-RECENT_EVENTS * _DIGEST :]
        return False

    def add(self, charge: Charge, ts_ms: int, partition: int, offset: int) -> None:
        self.tokens += charge.tokens
        self.input_tokens += charge.input_tokens
        self.output_tokens += charge.output_tokens
        self.estimated_tokens += charge.estimated_tokens
        self.rounds += charge.rounds
        self.tool_calls += charge.tool_calls
        self.cost_usd += charge.cost_usd
        self.unpriced_tokens += charge.unpriced_tokens
        self.events += 1
        if self.first_ts_ms is None or ts_ms < self.first_ts_ms:
            self.first_ts_ms = ts_ms
        if self.last_ts_ms is None or ts_ms > self.last_ts_ms:
            self.last_ts_ms = ts_ms
        self.offsets[str(partition)] = offset


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """A budget crossing: ``budget.warning`` or ``budget.exceeded`` for a scope and dimension,
    with the envelope ids and time of the event that caused it."""

    scope: str
    dimension: Dimension
    level: Level
    used: float
    limit: float
    session_id: str = ""
    agent_id: str = ""
    user_id: str = ""
    turn_id: str = ""
    ts_ms: int = 0

    @property
    def key(self) -> str:
        return f"{self.dimension.value}:{int(self.level)}"

    @property
    def event_id(self) -> str:
        return signal_event_id(self.scope, self.dimension, self.level)

    @property
    def event_type(self) -> str:
        if self.level is Level.EXCEEDED:
            return EventType.BUDGET_EXCEEDED.value
        return EventType.BUDGET_WARNING.value

    @property
    def scope_kind(self) -> ScopeKind:
        return scope_kind(self.scope)


@dataclass(frozen=True)
class Context:
    """The envelope ids and time of the event that changed a scope."""

    session_id: str = ""
    agent_id: str = ""
    user_id: str = ""
    turn_id: str = ""
    ts_ms: int = 0

    @classmethod
    def of(cls, event: Event) -> Context:
        return cls(
            event.session_id, event.agent_id, event.user_id, event.turn_id, timestamp_ms(event)
        )


def signal_event_id(scope: str, dimension: Dimension, level: Level, *, salt: str = "") -> str:
    """Deterministic: the same crossing always gets the same id, across restarts."""
    name = f"{scope}|{dimension.value}|{level.name.lower()}"
    return str(uuid.uuid5(SIGNAL_NAMESPACE, f"{name}|{salt}" if salt else name))


def timestamp_ms(event: Event) -> int:
    return int(event.timestamp.timestamp() * 1000)


def charge_of(event: Event, config: BudgetConfig, session: ScopeState | None) -> Charge | None:
    """What ``event`` adds to a budget, or None when its type counts nothing.

    ``session`` is the event's session state (read, and for ``llm.call.completed`` updated:
    ``counted_turn``) to avoid counting a round's answer twice.
    """
    kind = event.type
    if kind == EventType.TURN_STARTED:
        if session is not None:
            session.counted_turn = None  # a new round: its answer is not counted yet
        return Charge(rounds=1)
    if kind == EventType.TOOL_CALLED or kind == EventType.AUDIT_TOOL_CALL_ATTEMPT:
        return Charge(tool_calls=1)
    if kind == EventType.LLM_CALL_COMPLETED:
        return _llm_charge(event, config, session)
    if kind == EventType.MESSAGE_RESPONSE:
        if session is not None and session.counted_turn == event.turn_id:
            return None
        content = event.data.get("content")
        text = content if isinstance(content, str) else ""
        return _priced(config, None, 0, len(text) // CHARS_PER_TOKEN, estimated=True)
    return None


def _int_field(data: dict[str, object], name: str) -> int | None:
    return usage_count(data.get(name))


def _llm_charge(event: Event, config: BudgetConfig, session: ScopeState | None) -> Charge:
    data = event.data
    model = data.get("model")
    model = model if isinstance(model, str) and model else None
    input_tokens, output_tokens = (
        _int_field(data, "input_tokens"),
        _int_field(data, "output_tokens"),
    )
    if input_tokens is not None or output_tokens is not None:
        charge = _priced(config, model, input_tokens or 0, output_tokens or 0, estimated=False)
    else:
        chars = _int_field(data, "output_chars")
        if chars is None:
            # Neither usage nor size: the turn's message.response will be estimated instead.
            return Charge(model=model)
        charge = _priced(config, model, 0, chars // CHARS_PER_TOKEN, estimated=True)
    if session is not None:
        session.counted_turn = event.turn_id
    return charge


def _priced(
    config: BudgetConfig,
    model: str | None,
    input_tokens: int,
    output_tokens: int,
    *,
    estimated: bool,
) -> Charge:
    total = input_tokens + output_tokens
    price = config.price(model)
    return Charge(
        tokens=total,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        estimated_tokens=total if estimated else 0,
        cost_usd=price.cost(input_tokens, output_tokens) if price else 0.0,
        unpriced_tokens=0 if price else total,
        model=model,
    )


_REACH_TOLERANCE = 1e-9


def crossings(
    state: ScopeState, limits: Limits, warning_fraction: float, context: Context
) -> list[Signal]:
    """The signals ``state`` newly earns against ``limits``; records them in ``state``.

    A jump past both thresholds at once earns both, warning first. Each (scope, dimension,
    level) is earned once in the scope's life: ``state.signals`` remembers it, and the new
    ones are added to ``state.pending`` until the sender confirms them.
    """
    found: list[Signal] = []
    for dimension in DIMENSIONS:
        limit = limits.get(dimension)
        if limit is None:
            continue
        used = state.used(dimension)
        had = state.signals.get(dimension.value, Level.NONE)
        # Costs are sums of floats: $0.70 + $0.10 is 0.7999999999999999, short of a $0.80
        # limit it reached. A part in 10^9 of the limit is counted as reached.
        reach = used + limit * _REACH_TOLERANCE
        earned = (
            Level.EXCEEDED
            if reach >= limit
            else Level.WARNING
            if reach >= limit * warning_fraction
            else Level.NONE
        )
        for level in (Level.WARNING, Level.EXCEEDED):
            if had < level <= earned:
                signal = Signal(
                    scope=state.scope,
                    dimension=dimension,
                    level=level,
                    used=used,
                    limit=limit,
                    session_id=context.session_id,
                    agent_id=context.agent_id,
                    user_id=context.user_id,
                    turn_id=context.turn_id,
                    ts_ms=context.ts_ms,
                )
                found.append(signal)
                state.pending.append(signal)
        if earned > had:
            state.signals[dimension.value] = int(earned)
    return found


class Ledger:
    """Scope states held in memory, with the rules to apply events and deltas to them."""

    def __init__(self, config: BudgetConfig, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.states: dict[str, ScopeState] = {}
        self._sessionless: dict[str, ScopeState] = {}  # by source, least recent first

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ScopeState]:
        return iter(self.states.values())

    def get(self, scope: str) -> ScopeState | None:
        return self.states.get(scope)

    def put(self, state: ScopeState) -> None:
        self.states[state.scope] = state

    def drop(self, scope: str) -> None:
        self.states.pop(scope, None)

    def _state(self, scope: str, agent_id: str, user_id: str) -> ScopeState:
        state = self.states.get(scope)
        if state is None:
            state = self.states[scope] = ScopeState(scope=scope, agent_id=agent_id, user_id=user_id)
        return state

    def limits(self, state: ScopeState) -> Limits:
        """The limits of ``state``'s scope (day scopes have no wall time)."""
        kind = scope_kind(state.scope)
        if kind is ScopeKind.SESSION:
            return self.config.session_limits(state.agent_id, state.user_id)
        if kind is ScopeKind.AGENT:
            limits = self.config.agent_day_limits(state.agent_id)
        else:
            limits = self.config.user_day_limits(state.user_id)
        return limits.merged(_NO_WALL_TIME)

    def apply_session(
        self, event: Event, partition: int, offset: int
    ) -> tuple[Charge | None, ScopeState | None, list[Signal]]:
        """Count ``event`` in its session. Returns its charge (None: nothing to count, or
        already applied), the touched session state and the signals it earned."""
        if not event.session_id:
            return charge_of(event, self.config, self._of_source(event.source)), None, []
        state = self._state(session_scope(event.session_id), event.agent_id, event.user_id)
        if state.applied(partition, offset):
            return None, None, []
        if not state.agent_id and event.agent_id:  # its overrides apply from now on
            state.agent_id = event.agent_id
        if not state.user_id and event.user_id:
            state.user_id = event.user_id
        counted = event.type in COUNTED_TYPES
        if counted and state.counted_before(event.event_id):
            return None, None, []
        charge = charge_of(event, self.config, state) if counted else None
        # Every event of the session moves its wall time, counted or not.
        context = Context.of(event)
        state.add(charge or _NOTHING, context.ts_ms, partition, offset)
        state.seen_ms = self._now_ms()
        signals = crossings(state, self.limits(state), self.config.warning_fraction, context)
        return charge, state, signals

    def apply_day(
        self,
        scope: str,
        charge: Charge,
        *,
        owner: str,
        context: Context,
        partition: int,
        offset: int,
    ) -> tuple[ScopeState | None, list[Signal]]:
        """Add an event's charge to an agent or user day scope (deduplicated by the
        source partition and offset). Returns the state (None when skipped) and signals."""
        kind = scope_kind(scope)
        state = self._state(
            scope,
            owner if kind is ScopeKind.AGENT else "",
            owner if kind is ScopeKind.USER else "",
        )
        if state.applied(partition, offset):
            return None, []
        state.add(charge, context.ts_ms, partition, offset)
        state.seen_ms = self._now_ms()
        return state, crossings(state, self.limits(state), self.config.warning_fraction, context)

    def _of_source(self, source: str) -> ScopeState:
        """What :func:`charge_of` remembers of a source's events without a session (its counted
        turn; bounded, in memory only: no budget applies to it)."""
        memory = self._sessionless.pop(source, None)
        if memory is None:
            memory = ScopeState(scope=f"source:{source}")
            if len(self._sessionless) >= _MAX_SESSIONLESS:
                del self._sessionless[next(iter(self._sessionless))]
        self._sessionless[source] = memory
        return memory

    def _now_ms(self) -> int:
        return int(self.clock().timestamp() * 1000)

    def evict(self, *, session_idle: timedelta, keep_days: int) -> list[str]:
        """Forget the scopes nothing was applied to for ``session_idle`` (by the injected
        clock, ``seen_ms``): every such session, and the day scopes older than ``keep_days``
        days before today. A scope restored without ``seen_ms`` (written before it existed)
        goes by its last event's time. Day scopes unseen for ``keep_days + 1`` days go
        whatever day they claim (a pod clock years ahead). A backlog of old events keeps
        its scopes while it is applied: evicting them between two of their events lost
        their totals and sent their signals again. Returns the evicted scopes."""
        now = self.clock()
        idle_before = int((now - session_idle).timestamp() * 1000)
        oldest_day = (now.astimezone(UTC).date() - timedelta(days=keep_days)).isoformat()
        unseen_before = int((now - timedelta(days=keep_days + 1)).timestamp() * 1000)
        gone = []
        for scope, state in self.states.items():
            seen = state.seen_ms if state.seen_ms is not None else state.last_ts_ms
            idle = seen is None or seen < idle_before
            if scope_kind(scope) is ScopeKind.SESSION:
                if idle:
                    gone.append(scope)
            elif (idle and scope.rsplit(":", 1)[1] < oldest_day) or (
                seen is not None and seen < unseen_before
            ):
                gone.append(scope)
        for scope in gone:
            del self.states[scope]
        return gone


def day_scopes(event: Event) -> list[tuple[str, str]]:
    """The agent and user day scopes an event's charge also counts in, with their owner."""
    day = event_day(event)
    result = []
    if event.agent_id:
        result.append((day_scope(ScopeKind.AGENT, event.agent_id, day), event.agent_id))
    if event.user_id:
        result.append((day_scope(ScopeKind.USER, event.user_id, day), event.user_id))
    return result


class BudgetTracker:
    """Sessions, agents and users in one process: the whole accounting without Kafka.

    The service splits the same steps across the input partition (sessions) and the
    repartition topic (days); this class is what scenario tests and benchmarks drive.
    """

    def __init__(self, config: BudgetConfig, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.ledger = Ledger(config, clock=clock)

    def process(self, event: Event, *, partition: int = 0, offset: int) -> list[Signal]:
        """Apply ``event`` (the record at ``offset`` of ``partition``) everywhere it counts;
        return the signals it earned (treated as sent: the scopes' outboxes are emptied)."""
        charge, state, signals = self.ledger.apply_session(event, partition, offset)
        if state is not None:
            state.pending.clear()
        if charge is None:
            return signals
        context = Context.of(event)
        for scope, owner in day_scopes(event):
            day_state, more = self.ledger.apply_day(
                scope, charge, owner=owner, context=context, partition=partition, offset=offset
            )
            if day_state is not None:
                day_state.pending.clear()
            signals.extend(more)
        return signals

    def usage(self, scope: str) -> ScopeState | None:
        return self.ledger.get(scope)
