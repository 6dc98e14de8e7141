"""Calute's tool-loop rules, applied per scope (one user turn of one agent). Pure: no Kafka.

Rules, checked in Calute's order after each call is recorded; the first that holds is the
call's verdict:

1. ``max_calls``: the scope holds ``max_calls`` calls or more → critical.
2. ``same_call``: the run of consecutive identical calls (tool name and ``args_hash``) at the
   tail is ``same_call_critical`` long or more → critical; ``same_call_warning`` → warning.
3. ``pingpong``: the *alternating tail run* is the longest suffix of the tool names in which
   every name differs from the one before it and equals the one two before it (``A B A B``;
   arguments ignored). Calute's gate — at most 2 distinct names among the last 4 calls and
   they alternate — is the run being at least 4 long. With the gate passed, a run of
   ``pingpong_critical`` or more → critical, ``pingpong_warning`` → warning.
   ``call_count`` is the run's length: ``A B A B`` is 4 alternations.

Alerting (unlike Calute, which reports on every call): a verdict is reported once per
*streak* and level. A streak is one rule's run, identified by the position of its first call
in the scope (a broken and restarted run is a new streak). A streak that reaches warning is
reported once; when it later reaches critical it is reported once more. Further calls in a
warning streak report nothing. Further calls in a critical streak -- Calute would block each
of them -- come back as *repeat* findings (``repeat=True``, ``origin_event_id`` = the call
that first reached critical): the service does not alert again but re-sends the pause
directive, since the agent evidently did not stop. ``max_calls`` has one streak per scope.

Memory per scope is constant: the detector keeps counters, not the call history.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple

from agentstream.schemas import Event, EventType
from agentstream.schemas.payloads import ARGS_DIGEST, arguments_text

from .config import PINGPONG_WINDOW, LoopConfig, LoopThresholds


class Pattern(StrEnum):
    MAX_CALLS = "max_calls"
    SAME_CALL = "same_call"
    PINGPONG = "pingpong"


class Level(IntEnum):
    NONE = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


def args_hash(arguments: Any) -> str:
    """Calute's canonical argument hash: MD5 of :func:`~agentstream.schemas.payloads.
    arguments_text` (JSON with sorted keys; a string as itself, ``None`` as ``"empty"``)."""
    return hashlib.md5(arguments_text(arguments).encode("utf-8"), usedforsecurity=False).hexdigest()


class ScopeKey(NamedTuple):
    """One detector's scope: an agent's user turn (``turn_id``), or its whole session when
    events carry no turn id (reset at turn end and at the next user message)."""

    agent_id: str
    session_id: str
    turn_id: str

    def __str__(self) -> str:
        return f"{self.agent_id}/{self.session_id}/{self.turn_id}"


def scope_of(event: Event) -> ScopeKey:
    return ScopeKey(event.agent_id, event.session_id, event.turn_id)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as the detector sees it."""

    scope: ScopeKey
    tool_name: str
    args_hash: str
    event_id: str


TOOL_CALL_TYPES: tuple[str, ...] = (
    EventType.TOOL_CALLED.value,
    EventType.AUDIT_TOOL_CALL_ATTEMPT.value,
)
"""Corail's ``tool.called`` {name, args}; Calute's ``audit.tool_call_attempt``
{tool_name, arguments_preview} (the preview string hashes as itself)."""

TURN_RESET_TYPES: tuple[str, ...] = (
    EventType.TURN_ENDED.value,
    EventType.MESSAGE_RECEIVED.value,
)
"""Drop the event's own scope and the agent's session-wide scope."""

OWN_SCOPE_RESET_TYPES: tuple[str, ...] = (
    EventType.AUDIT_TURN_START.value,
    EventType.AUDIT_TURN_END.value,
)
"""Drop the event's own scope (its turn, or the session scope without a turn id)."""

SESSION_END_TYPES: tuple[str, ...] = (EventType.SESSION_ENDED.value,)
"""Drop every scope of the session (all agents, all turns)."""

INPUT_TYPES: tuple[str, ...] = (
    *TOOL_CALL_TYPES,
    *TURN_RESET_TYPES,
    *OWN_SCOPE_RESET_TYPES,
    *SESSION_END_TYPES,
)


def tool_call_of(event: Event) -> ToolCall | None:
    """The tool call an event records, or None for other types (or a call without a name)."""
    data = event.data
    if event.type == EventType.TOOL_CALLED:
        name, arguments = data.get("name"), data.get("args")
    elif event.type == EventType.AUDIT_TOOL_CALL_ATTEMPT:
        name, arguments = data.get("tool_name"), data.get("arguments_preview", "")
    else:
        return None
    if not isinstance(name, str) or not name:
        return None
    digest = data.get(ARGS_DIGEST)
    if isinstance(digest, str) and digest:
        # The publisher's digest of the arguments before redaction: calls that differ only in
        # a secret are different calls, although their redacted arguments are equal.
        return ToolCall(scope_of(event), name, f"digest:{digest}", event.event_id)
    return ToolCall(scope_of(event), name, args_hash(arguments), event.event_id)


@dataclass(frozen=True, slots=True)
class Finding:
    """A reportable verdict: a streak of ``pattern`` reached ``level`` at this call."""

    scope: ScopeKey
    pattern: Pattern
    level: Level
    tool_name: str
    call_count: int
    streak_start: int
    """Position (0-based) in the scope of the streak's first call."""
    trigger_event_id: str
    thresholds: LoopThresholds
    origin_event_id: str = ""
    """The call that first reached this level in this streak (the trigger, unless a repeat)."""
    repeat: bool = False
    """A further call in a streak already reported as critical."""

    def __post_init__(self) -> None:
        if not self.origin_event_id:
            object.__setattr__(self, "origin_event_id", self.trigger_event_id)

    @property
    def critical(self) -> bool:
        return self.level is Level.CRITICAL

    @property
    def identity(self) -> tuple[str, str, int, str]:
        """What makes two findings the same: scope, pattern, streak, level."""
        return (str(self.scope), self.pattern.value, self.streak_start, self.level.label)

    def describe(self) -> str:
        if self.pattern is Pattern.MAX_CALLS:
            what = f"{self.call_count} tool calls in one turn (limit {self.thresholds.max_calls})"
        elif self.pattern is Pattern.SAME_CALL:
            what = (
                f"{self.tool_name} called {self.call_count} times in a row with the same arguments"
            )
        else:
            what = f"{self.call_count} alternating calls ending with {self.tool_name}"
        return f"Tool loop detected ({self.pattern.value}): {what}"


_RECENT_IDS = 8
"""Event ids remembered per scope: a redelivered or producer-duplicated call is not counted
twice (it gets the verdict it had the first time)."""


@dataclass(slots=True)
class ScopeState:
    """Counters of one scope; enough to evaluate the three rules for the next call."""

    key: ScopeKey
    thresholds: LoopThresholds
    partition: int | None = None
    last_touch: float = 0.0
    calls: int = 0
    last_name: str = ""
    last_hash: str = ""
    prev_name: str = ""
    same_len: int = 0
    same_start: int = 0
    alt_len: int = 0
    alt_start: int = 0
    reported: dict[Pattern, tuple[Level, str]] = field(default_factory=dict)
    """Highest level reported for each rule's current streak, and the call that reached it."""
    recent: deque[tuple[str, Finding | None]] = field(
        default_factory=lambda: deque(maxlen=_RECENT_IDS)
    )

    def record(self, call: ToolCall) -> Finding | None:
        for event_id, finding in self.recent:
            if event_id == call.event_id:
                return finding
        position = self.calls
        self.calls += 1
        if self.calls > 1 and call.tool_name == self.last_name and call.args_hash == self.last_hash:
            self.same_len += 1
        else:
            self.same_len, self.same_start = 1, position
            self.reported.pop(Pattern.SAME_CALL, None)
        if self.calls == 1:
            self.alt_len, self.alt_start = 1, position
        elif call.tool_name == self.last_name:
            self.alt_len, self.alt_start = 1, position
            self.reported.pop(Pattern.PINGPONG, None)
        elif self.alt_len >= 2 and call.tool_name == self.prev_name:
            self.alt_len += 1
        else:
            self.alt_len, self.alt_start = 2, position - 1
            self.reported.pop(Pattern.PINGPONG, None)
        self.prev_name, self.last_name, self.last_hash = (
            self.last_name,
            call.tool_name,
            call.args_hash,
        )
        finding = self._report(call)
        self.recent.append((call.event_id, finding))
        return finding

    def verdict(self) -> tuple[Pattern, Level, int, int] | None:
        """Calute's verdict for the latest call: (pattern, level, call_count, streak_start)."""
        t = self.thresholds
        if t.max_calls and self.calls >= t.max_calls:
            return Pattern.MAX_CALLS, Level.CRITICAL, self.calls, 0
        level = _level(self.same_len, t.same_call_warning, t.same_call_critical)
        if level:
            return Pattern.SAME_CALL, level, self.same_len, self.same_start
        if self.alt_len >= PINGPONG_WINDOW:
            level = _level(self.alt_len, t.pingpong_warning, t.pingpong_critical)
            if level:
                return Pattern.PINGPONG, level, self.alt_len, self.alt_start
        return None

    def _report(self, call: ToolCall) -> Finding | None:
        verdict = self.verdict()
        if verdict is None:
            return None
        pattern, level, count, start = verdict
        previous = self.reported.get(pattern)
        if previous is not None and level <= previous[0]:
            if previous[0] is not Level.CRITICAL:
                return None
            return Finding(
                self.key,
                pattern,
                level,
                call.tool_name,
                count,
                start,
                call.event_id,
                self.thresholds,
                origin_event_id=previous[1],
                repeat=True,
            )
        self.reported[pattern] = (level, call.event_id)
        return Finding(
            self.key, pattern, level, call.tool_name, count, start, call.event_id, self.thresholds
        )


def _level(count: int, warning: int, critical: int) -> Level:
    if critical and count >= critical:
        return Level.CRITICAL
    if warning and count >= warning:
        return Level.WARNING
    return Level.NONE


EvictionHook = Callable[[str, int], None]
"""Called with (reason, how many scopes) when scopes are dropped:
``ended`` (turn or session end), ``ttl``, ``lru`` (over ``max_scopes``), ``revoked``."""


class LoopDetector:
    """Every scope's state, bounded by ``max_scopes`` (least recently used evicted first) and
    ``scope_ttl_s`` (idle scopes dropped), fed one event at a time in per-session order."""

    def __init__(
        self,
        config: LoopConfig | None = None,
        *,
        max_scopes: int = 100_000,
        scope_ttl_s: float = 3_600.0,
        clock: Callable[[], float] = time.monotonic,
        on_evict: EvictionHook | None = None,
    ) -> None:
        if max_scopes < 1:
            raise ValueError(f"expected max_scopes >= 1, got {max_scopes}")
        self.config = config or LoopConfig()
        self.max_scopes = max_scopes
        self.scope_ttl_s = scope_ttl_s
        self._clock = clock
        self._on_evict = on_evict
        self._scopes: OrderedDict[ScopeKey, ScopeState] = OrderedDict()
        self._by_session: dict[str, set[ScopeKey]] = {}

    def __len__(self) -> int:
        return len(self._scopes)

    def __contains__(self, key: object) -> bool:
        return key in self._scopes

    def scopes(self) -> Iterator[ScopeState]:
        return iter(self._scopes.values())

    def handle(self, event: Event, partition: int | None = None) -> Finding | None:
        """Feed one event: a tool call is recorded and checked; a turn, message or session
        boundary drops the scopes it ends. Returns the finding to report, if any."""
        call = tool_call_of(event)
        if call is not None:
            return self.observe(call, partition)
        if event.type in TURN_RESET_TYPES:
            self.drop(scope_of(event))
            self.drop(ScopeKey(event.agent_id, event.session_id, ""))
        elif event.type in OWN_SCOPE_RESET_TYPES:
            self.drop(scope_of(event))
        elif event.type in SESSION_END_TYPES:
            self.drop_session(event.session_id)
        return None

    def observe(self, call: ToolCall, partition: int | None = None) -> Finding | None:
        now = self._clock()
        self.expire(now)
        state = self._scopes.get(call.scope)
        if state is None:
            state = ScopeState(
                call.scope, self.config.for_agent(call.scope.agent_id), partition=partition
            )
            self._scopes[call.scope] = state
            self._by_session.setdefault(call.scope.session_id, set()).add(call.scope)
            if len(self._scopes) > self.max_scopes:
                self._remove(next(iter(self._scopes)), "lru")
        else:
            self._scopes.move_to_end(call.scope)
        state.last_touch = now
        return state.record(call)

    def drop(self, key: ScopeKey, reason: str = "ended") -> bool:
        if key not in self._scopes:
            return False
        self._remove(key, reason)
        return True

    def drop_session(self, session_id: str, reason: str = "ended") -> int:
        keys = list(self._by_session.get(session_id, ()))
        for key in keys:
            self._remove(key, reason)
        return len(keys)

    def drop_partitions(self, partitions: set[int] | frozenset[int], reason: str) -> int:
        keys = [k for k, s in self._scopes.items() if s.partition in partitions]
        for key in keys:
            self._remove(key, reason)
        return len(keys)

    def expire(self, now: float | None = None) -> int:
        """Drop scopes idle longer than ``scope_ttl_s`` (the oldest are first in LRU order)."""
        if now is None:
            now = self._clock()
        limit = now - self.scope_ttl_s
        dropped = 0
        while self._scopes:
            key, state = next(iter(self._scopes.items()))
            if state.last_touch > limit:
                break
            self._remove(key, "ttl", notify=False)
            dropped += 1
        if dropped and self._on_evict is not None:
            self._on_evict("ttl", dropped)
        return dropped

    def _remove(self, key: ScopeKey, reason: str, *, notify: bool = True) -> None:
        del self._scopes[key]
        keys = self._by_session.get(key.session_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_session[key.session_id]
        if notify and self._on_evict is not None:
            self._on_evict(reason, 1)
