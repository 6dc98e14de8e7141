"""The simulated pods: each agent plays its planned sessions through the public producer API
only (``KafkaPublisher``, ``EventBus`` + ``scope``, ``AuditEmitter`` + ``KafkaCollector``).

Pacing: the plan's delays are simulated milliseconds; they are scaled by one factor so that
all agents together emit about ``rate`` events/s (relative latencies stay realistic: an LLM
call still lasts longer than a tool call). When the run stops (``duration`` elapsed or
:meth:`Demo.stop`), sessions in flight are finished without waiting, so every session
that started is complete and the manifest says exactly what was published.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from agentstream.producer import (
    AuditEmitter,
    Event,
    EventBus,
    EventType,
    KafkaCollector,
    KafkaPublisher,
    StopReason,
    event_scope,
)
from agentstream.schemas.settings import KafkaSettings

from .record import RecordingPublisher
from .scenario import (
    PlannedSession,
    agent_family,
    agent_id,
    agent_sessions,
    mean_step_delay_ms,
)


@dataclass
class SessionRecord:
    session: PlannedSession  # its steps dropped once played: a long run plays many thousands
    session_id: str
    planned_events: int = 0  # how many steps it had
    events: int = 0
    paused: bool = False  # stopped early by a control directive (--obey-control)


@dataclass
class DemoSummary:
    run_id: str
    seed: int
    agents: int
    rate: float
    time_scale: float
    elapsed_s: float = 0.0
    sessions: list[SessionRecord] = field(default_factory=list)
    events: int = 0
    delivered: int = 0
    dropped: int = 0
    flushed: bool = False
    obey_control: bool = False
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    @property
    def looping(self) -> list[SessionRecord]:
        return [s for s in self.sessions if s.session.loops]

    @property
    def paused(self) -> int:
        return sum(s.paused for s in self.sessions)

    @property
    def budget_busting(self) -> list[SessionRecord]:
        return [s for s in self.sessions if s.session.busts_budget]

    def lines(self) -> list[str]:
        families = Counter(s.session.family for s in self.sessions)
        return [
            f"demo run {self.run_id} (seed {self.seed}): {len(self.sessions)} sessions "
            f"({families['corail']} Corail, {families['calute']} Calute) by {self.agents} agents "
            f"in {self.elapsed_s:.1f} s",
            f"events: {self.events} published, {self.delivered} acknowledged by Kafka, "
            f"{self.dropped} dropped{'' if self.flushed else ' (flush timed out)'}",
            f"looping sessions: {len(self.looping)}; budget-busting sessions: "
            f"{len(self.budget_busting)}",
            *(
                [f"sessions stopped by a pause directive: {self.paused}"]
                if self.obey_control
                else []
            ),
            *(
                []
                if self.flushed and not self.dropped
                else [f"not delivered: {self.dropped_by_reason}; last error: {self.last_error}"]
            ),
        ]

    def manifest(self) -> dict[str, Any]:
        """The manifest but ``published`` (written after it: :meth:`Demo.write_manifest`)."""
        return {
            "run_id": self.run_id,
            "seed": self.seed,
            "agents": self.agents,
            "rate": self.rate,
            "time_scale": self.time_scale,
            "elapsed_s": round(self.elapsed_s, 3),
            "events": self.events,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "flushed": self.flushed,
            "obey_control": self.obey_control,
            "sessions": [
                {
                    "session_id": s.session_id,
                    "key": s.session.key,
                    "agent_id": s.session.agent_id,
                    "family": s.session.family,
                    "user_id": s.session.user_id,
                    "kind": s.session.kind,
                    "events": s.events,
                    "paused": s.paused,
                }
                for s in self.sessions
            ],
        }


class Demo:
    """``agents`` simulated pods in one process. Each pod has its own ``EventBus`` (Corail)
    or one ``AuditEmitter`` per session (Calute); they share one ``KafkaPublisher``, as the
    components of one real pod do, so the demo costs one producer connection."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        agents: int,
        rate: float,
        seed: int,
        duration: float | None,
        run_id: str | None = None,
        obey_control: bool = False,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if agents < 1 or rate <= 0:
            raise ValueError(f"expected agents >= 1 and rate > 0, got {agents} and {rate}")
        self.settings = settings
        self.agents = agents
        self.rate = rate
        self.seed = seed
        self.duration = duration
        self.run_id = run_id or secrets.token_hex(3)
        # all agents together: agents / (mean delay * scale) events/s = rate * 1.2, and the
        # limiter in _pace trims that to ``rate`` (bursts wait, lulls are not made up)
        mean_s = mean_step_delay_ms(seed, agents) / 1000
        self.time_scale = agents / (1.2 * rate * mean_s) if mean_s > 0 else 0.0
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()  # a second stop: no waiting for the flush either
        self._next_slot = 0.0  # loop time of the next event allowed by ``rate``
        self.summary = DemoSummary(self.run_id, seed, agents, rate, self.time_scale)
        self.summary.obey_control = obey_control
        self._recorder: RecordingPublisher | None = None
        self._registry = registry  # the publisher's metrics, as a pod exposes them

    @property
    def published(self) -> list[tuple[str, str, str]]:
        """``(event_id, type, session_id)`` of every event published, in order."""
        return list(self._recorder.items()) if self._recorder is not None else []

    def stop(self) -> None:
        """Stop starting sessions; finish those in flight without waiting. A second call
        (a second Ctrl-C) gives up waiting for the flush: what is undelivered is dropped."""
        if self._stop.is_set():
            if not self._abort.is_set():
                print("demo: not waiting for the flush any more", flush=True)
            self._abort.set()
        else:  # called on a signal (the --duration timer sets _stop itself)
            print("demo: stopping: finishing sessions, flushing (again to give up)", flush=True)
        self._stop.set()

    async def run(self) -> DemoSummary:
        publisher = KafkaPublisher(self.settings, registry=self._registry)
        recorder = self._recorder = RecordingPublisher(publisher)
        started = time.monotonic()
        try:
            timer = (
                asyncio.get_running_loop().call_later(self.duration, self._stop.set)
                if self.duration is not None
                else None
            )
            await asyncio.gather(*(self._agent(i, recorder) for i in range(self.agents)))
            if timer is not None:
                timer.cancel()
        finally:
            self.summary.flushed = await self._flush(publisher)
            publisher.close(timeout=0.0 if self._abort.is_set() else 5.0)
            stats = publisher.stats()
            self.summary.elapsed_s = time.monotonic() - started
            self.summary.events = len(recorder)
            per_session = recorder.per_session()
            for record in self.summary.sessions:
                record.events = per_session[record.session_id]
            self.summary.delivered = stats.delivered
            self.summary.dropped = sum(stats.dropped.values()) + stats.failed
            self.summary.dropped_by_reason = {**stats.dropped, "failed": stats.failed}
            self.summary.last_error = stats.last_error
        return self.summary

    async def _flush(self, publisher: KafkaPublisher, timeout_s: float = 30.0) -> bool:
        """``publisher.flush(timeout_s)`` in slices, so that a second stop ends it at once
        (then False)."""
        deadline = time.monotonic() + timeout_s
        while not self._abort.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if await asyncio.to_thread(publisher.flush, min(left, 0.25)):
                return True
        return False

    def write_manifest(self, path: Path) -> None:
        """The summary, its sessions, and ``published``: ``[event_id, type, session_id]`` of
        every event, written one by one (a long run publishes millions)."""
        head = json.dumps(self.summary.manifest(), indent=1)
        assert head.endswith("\n}")
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.write(head[:-2] + ',\n "published": [')
            items = self._recorder.items() if self._recorder is not None else iter(())
            for i, item in enumerate(items):
                out.write(("," if i else "") + "\n  " + json.dumps(item))
            out.write("\n ]\n}\n")
        tmp.replace(path)

    # --- one pod ----------------------------------------------------------------------------

    async def _agent(self, index: int, publisher: RecordingPublisher) -> None:
        sessions = agent_sessions(self.seed, index)
        corail = agent_family(index) == "corail"
        bus = EventBus(publisher, agent_id=agent_id(index)) if corail else None
        paused: set[str] = set()
        if bus is not None and self.summary.obey_control:
            # the pod's guard, as in the producer notes: a paused session makes no more calls
            bus.subscribe(EventType.CONTROL_AGENT_PAUSED, lambda e: paused.add(e.session_id))
            bus.subscribe(EventType.CONTROL_AGENT_RESUMED, lambda e: paused.discard(e.session_id))
            await bus.enable_control(self.settings)
        try:
            for planned in itertools.takewhile(lambda _: not self._stop.is_set(), sessions):
                record = SessionRecord(
                    planned, planned.session_id(self.run_id), planned_events=len(planned.steps)
                )
                self.summary.sessions.append(record)
                if bus is not None:
                    await self._corail(bus, planned, record, paused)
                else:
                    await self._calute(publisher, planned)
                record.session = replace(planned, steps=())
        finally:
            if bus is not None:
                await bus.close()  # stops its control listener, if any

    async def _pace(self, delay_ms: int) -> None:
        """Wait the step's scaled delay, then for the next slot of the overall rate (no
        wait at all once stopping)."""
        if delay_ms > 0 and not self._stop.is_set():
            await self._wait(delay_ms * self.time_scale / 1000)
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1 / self.rate
        if slot > now and not self._stop.is_set():
            await self._wait(slot - now)
        else:
            await asyncio.sleep(0)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _corail(
        self, bus: EventBus, planned: PlannedSession, record: SessionRecord, paused: set[str]
    ) -> None:
        session_id = planned.session_id(self.run_id)
        last_round = 0
        for step in planned.steps:
            await self._pace(step.delay_ms)
            with bus.scope(
                session_id=session_id,
                user_id=planned.user_id,
                turn_id=planned.turn_id(self.run_id, step.turn),
            ):
                if step.action in _GUARDED and session_id in paused:
                    # paused by a service: no new user turn, round or tool call
                    record.paused = True
                    if step.action != EventType.MESSAGE_RECEIVED:  # a turn is open: end it
                        data = {"round": last_round, "stop_reason": StopReason.USER_ABORTED}
                        await bus.emit(Event(type=EventType.TURN_ENDED, data=data))
                    return
                if step.action == EventType.TURN_STARTED:
                    last_round = int(step.fields["round"])
                await bus.emit(Event(type=step.action, data=dict(step.fields)))

    async def _calute(self, publisher: RecordingPublisher, planned: PlannedSession) -> None:
        session_id = planned.session_id(self.run_id)
        emitter = AuditEmitter(KafkaCollector(publisher, agent_id=planned.agent_id), session_id)
        for step in planned.steps:
            await self._pace(step.delay_ms)
            ids = {"agent_id": planned.agent_id, "turn_id": planned.turn_id(self.run_id, step.turn)}
            with event_scope(user_id=planned.user_id):
                _CALUTE_CALLS[step.action](emitter, {**step.fields, **ids})


# Where a paused Corail pod stops (--obey-control): before each user turn, round, tool call.
_GUARDED = frozenset({EventType.MESSAGE_RECEIVED, EventType.TURN_STARTED, EventType.TOOL_CALLED})

CaluteCall = Callable[[AuditEmitter, dict[str, Any]], None]


def _calls() -> dict[str, CaluteCall]:
    """The emitter methods a Calute step may name (nothing else is callable by a plan)."""

    def turn_start(e: AuditEmitter, f: dict[str, Any]) -> None:
        e.emit_turn_start(agent_id=f["agent_id"], turn_id=f["turn_id"], prompt=f["prompt"])

    def turn_end(e: AuditEmitter, f: dict[str, Any]) -> None:
        e.emit_turn_end(f["agent_id"], f["turn_id"], f["content"], f["fc_count"])

    def policy(e: AuditEmitter, f: dict[str, Any]) -> None:
        e.emit_tool_policy_decision(
            f["tool_name"], f["agent_id"], f["action"], f["source"], turn_id=f["turn_id"]
        )

    def sandbox(e: AuditEmitter, f: dict[str, Any]) -> None:
        e.emit_sandbox_decision(
            f["tool_name"],
            f["context"],
            f["reason"],
            f["backend_type"],
            f["agent_id"],
            f["turn_id"],
        )

    def attempt(e: AuditEmitter, f: dict[str, Any]) -> None:
        e.emit_tool_call_attempt(f["tool_name"], f["args"], f["agent_id"], f["turn_id"])

    def complete(e: AuditEmitter, f: dict[str, Any]) -> None:
        e.emit_tool_call_complete(
            f["tool_name"], f["status"], f["duration_ms"], f["result"], f["agent_id"], f["turn_id"]
        )

    def failure(e: AuditEmitter, f: dict[str, Any]) -> None:
        e.emit_tool_call_failure(
            f["tool_name"], f["error_type"], f["error_msg"], f["agent_id"], f["turn_id"]
        )

    return {
        "emit_turn_start": turn_start,
        "emit_turn_end": turn_end,
        "emit_tool_policy_decision": policy,
        "emit_sandbox_decision": sandbox,
        "emit_tool_call_attempt": attempt,
        "emit_tool_call_complete": complete,
        "emit_tool_call_failure": failure,
    }


_CALUTE_CALLS = _calls()
