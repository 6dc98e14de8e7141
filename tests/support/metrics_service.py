"""For the metrics service's tests: synthetic fleet traffic (sessions of Corail and Calute
agents, stamped now), and the service run in-process, optionally serving /metrics.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from agentstream.consumers.broker import free_port
from agentstream.consumers.metrics.service import SERVICE
from agentstream.consumers.metrics.settings import MetricsSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event, new_event_id
from agentstream.schemas.settings import KafkaSettings
from support.runtime import running_consumer

AGENTS = ("planner", "researcher", "writer")
TOOLS = ("web_search", "calculator", "fetch_url")
MODELS = ("claude-sonnet", "claude-haiku")


@dataclass
class Traffic:
    """Events of a few sessions, and what the metrics should count from them."""

    events: list[Event] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)

    def by_type(self) -> Counter[str]:
        return Counter(e.type for e in self.events)

    def by_agent(self) -> Counter[str]:
        return Counter(e.agent_id for e in self.events)


@dataclass
class _Session:
    traffic: Traffic
    session: str
    agent: str
    base: datetime
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, type_: str, data: dict[str, Any], *, ms: int | None = None) -> None:
        seq = next(self.seq)
        self.traffic.events.append(
            Event(
                event_id=new_event_id(),
                type=type_,
                timestamp=self.base + timedelta(milliseconds=ms if ms is not None else seq * 10),
                agent_id=self.agent,
                user_id="user-1",
                session_id=self.session,
                turn_id=f"turn-{self.session}",
                seq=seq,
                source="pod-test",
                data=data,
            )
        )


def fleet_traffic(
    sessions: int = 6,
    *,
    loop_blocks: int = 1,
    budget_exceeded: int = 1,
    tag: str = "",
    first_turn: bool = True,
) -> Traffic:
    """``sessions`` sessions; each: a Corail turn with an LLM call, two tool calls (one
    failing), guard checks, and a Calute audit turn. The first ``loop_blocks`` and
    ``budget_exceeded`` sessions also hit a loop block and a token budget.

    Session ids are ``<tag>session-<i>``: called again with the same ``tag`` and
    ``first_turn=False`` it continues the same sessions (same agents, tools and models, hence
    the same partitions), as a later turn would."""
    traffic = Traffic()
    base = datetime.now(UTC) - timedelta(seconds=2)
    for s in range(sessions):
        session = f"{tag}session-{s}"
        model = MODELS[s % len(MODELS)]
        tool = TOOLS[s % len(TOOLS)]
        traffic.sessions.add(session)
        add = _Session(traffic, session, AGENTS[s % len(AGENTS)], base).add
        if first_turn:
            add("session.created", {})
        add("message.received", {"content": "hello"})
        add("guard.input.checked", {"guard": "pii", "direction": "input", "allowed": True})
        add("turn.started", {"round": 0})
        add("llm.call.started", {"round": 0, "model": model}, ms=100)
        add(
            "llm.call.completed",
            {
                "round": 0,
                "stop_reason": "tool_use",
                "model": model,
                "input_tokens": 500,
                "output_tokens": 40,
            },
            ms=900,
        )
        add("tool.called", {"name": tool, "args": {"q": "x"}, "call_id": "c1"}, ms=1000)
        add("tool.result", {"name": tool, "output": "ok", "call_id": "c1"}, ms=1250)
        add("tool.called", {"name": tool, "args": {"q": "y"}}, ms=1300)
        add("tool.error", {"name": tool, "error": "Timeout", "attempt": 0}, ms=1400)
        if s < budget_exceeded:
            add("budget.exceeded", {"tokens_used": 100_250}, ms=1450)
        add("guard.output.checked", {"guard": "tox", "direction": "output", "allowed": False})
        add("guard.blocked", {"direction": "output", "reason": "toxic", "guard": "tox"})
        add("turn.ended", {"round": 0, "stop_reason": "guard_blocked"}, ms=1500)
        add("message.response", {"content": "sorry"}, ms=1510)
        add("audit.turn_start", {"prompt_preview": "hi"}, ms=1520)
        add(
            "audit.tool_call_complete",
            {"tool_name": tool, "status": "success", "duration_ms": 75.0},
            ms=1530,
        )
        add("audit.tool_call_failure", {"tool_name": tool, "error_type": "ValueError"}, ms=1540)
        add(
            "audit.tool_loop_warning",
            {"tool_name": tool, "pattern": "same_call", "severity_level": "warning"},
            ms=1545,
        )
        if s < loop_blocks:
            add(
                "audit.tool_loop_block",
                {"tool_name": tool, "pattern": "same_call", "call_count": 5},
                ms=1550,
            )
        add("audit.turn_end", {"function_calls_count": 2}, ms=1560)
        add("llm.token", {"token": "Hi"}, ms=1570)
    return traffic


def looping_turn(session: str = "looping-session") -> list[Event]:
    """One turn calling the same tool with the same arguments six times (a same_call loop)."""
    traffic = Traffic()
    add = _Session(traffic, session, AGENTS[0], datetime.now(UTC)).add
    add("turn.started", {"round": 0})
    for _ in range(6):
        add("tool.called", {"name": TOOLS[0], "args": {"q": "again"}})
    return traffic.events


def service_alerts(traffic: Traffic) -> list[Event]:
    """What the budget and loops services publish on the alerts topic about ``traffic``."""
    session = sorted(traffic.sessions)[0]
    common: dict[str, Any] = {"agent_id": AGENTS[0], "session_id": session, "source": "svc"}
    return [
        Event(
            type="budget.warning",
            data={"scope": "session", "dimension": "tokens", "used": 80_000, "limit": 100_000},
            **common,
        ),
        Event(
            type="audit.tool_loop_block",
            data={"tool_name": TOOLS[0], "pattern": "pingpong", "call_count": 6},
            **common,
        ),
    ]


def metrics_settings(base: KafkaSettings, **overrides: Any) -> MetricsSettings:
    """MetricsSettings on ``base``'s broker and topics, tuned for quick tests."""
    fields: dict[str, Any] = {
        "bootstrap_servers": base.bootstrap_servers,
        "topic_prefix": base.topic_prefix,
        "linger_ms": 1,
        "commit_interval_ms": 100,
        "handler_retries": 1,
        "handler_retry_backoff_ms": 1,
        "batch_max_wait_ms": 20,
        "heartbeat_interval_ms": 300,  # a joining instance triggers a quicker rebalance
        **overrides,
    }
    return MetricsSettings(**fields)


@dataclass
class RunningMetrics:
    registry: CollectorRegistry
    consumer: EventConsumer
    address: str | None = None
    """host:port of /metrics when served."""


@contextlib.asynccontextmanager
async def metrics_service(
    settings: MetricsSettings, *, serve: bool = False
) -> AsyncIterator[RunningMetrics]:
    """The metrics service in-process, ready (partitions assigned); with ``serve``, its
    registry on /metrics of a free loopback port. Everything is stopped on exit."""
    registry = CollectorRegistry()
    consumer = EventConsumer(settings, service=SERVICE.name, registry=registry)
    async with SERVICE.setup(consumer, settings), running_consumer(consumer):
        if not serve:
            yield RunningMetrics(registry, consumer)
            return
        port = free_port()
        server, thread = start_http_server(port, "127.0.0.1", registry)
        try:
            yield RunningMetrics(registry, consumer, f"127.0.0.1:{port}")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
