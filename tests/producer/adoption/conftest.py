"""Fixtures for the adoption tests: the real Xerxes (its own venv), a place that exposes
agentstream to it, a Corail-shaped bus, and an in-memory publisher for unit tests.

The Corail model below is a faithful minimal re-implementation of Corail's ``EventBus`` and
``Event`` from the seed document (``seed-systems.md`` part B): an ``EventType`` enum, an
``Event`` dataclass with a UTC ``datetime`` and empty envelope ids, and a bus that records
history first, runs exact-type then ``"*"`` handlers with ``gather``, and logs (never raises)
a failing handler. Corail itself is not on PyPI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import subprocess
import threading
import types
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import agentstream.producer
import agentstream.schemas
from agentstream.schemas import Event

XERXES_REQUIREMENTS = (
    "xerxes-agent==0.2.5",
    "msgspec>=0.18",
    "aiokafka>=0.13,<0.15",
    "pydantic-settings>=2.7",
    "prometheus-client>=0.20",
)
"""The Xerxes peer venv: Xerxes itself plus what ``pip install agentstream`` brings into a pod
(the script imports agentstream from a PYTHONPATH directory, its dependencies from the venv)."""

PEER_MODULES = ("xerxes", "msgspec", "aiokafka", "pydantic_settings", "prometheus_client")


def peers_dir() -> Path:
    default = Path.home() / ".cache" / "agentstream" / "peers"
    return Path(os.environ.get("AGENTSTREAM_TEST_PEERS_DIR", default))


@pytest.fixture(scope="session")
def xerxes_python() -> Path:
    """The python of the Xerxes peer venv, with agentstream's runtime dependencies.

    Missing: the test is skipped, unless ``AGENTSTREAM_REQUIRE_PEERS=1`` (CI), where it fails."""
    python = peers_dir() / "xerxes" / "bin" / "python"
    build = "tests/peers/ensure_venv.sh xerxes " + " ".join(f"'{r}'" for r in XERXES_REQUIREMENTS)
    reason = ""
    if not python.exists():
        reason = f"the Xerxes peer venv is missing at {python.parent.parent}: run {build}"
    else:
        probe = subprocess.run(
            [
                str(python),
                "-c",
                "import importlib.util, sys; "
                f"missing = [m for m in {PEER_MODULES!r} if importlib.util.find_spec(m) is None]; "
                "print(' '.join(missing)); sys.exit(1 if missing else 0)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode != 0:
            reason = (
                f"the Xerxes peer venv at {python.parent.parent} lacks "
                f"{probe.stdout.strip() or probe.stderr.strip()}: run {build}"
            )
    if reason:
        if os.environ.get("AGENTSTREAM_REQUIRE_PEERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return python


@pytest.fixture(scope="session")
def agentstream_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory to put on the peer's PYTHONPATH: ``agentstream/{schemas,producer}`` link
    to the very packages this test process imports (the installed wheel under ``make test``,
    the source folders in ``.venv-dev``). Nothing is installed into the peer venv."""
    site = tmp_path_factory.mktemp("agentstream-site")
    package = site / "agentstream"
    package.mkdir()
    for module in (agentstream.schemas, agentstream.producer):
        assert module.__file__ is not None
        (package / module.__name__.rsplit(".", 1)[1]).symlink_to(Path(module.__file__).parent)
    return site


# --- an in-memory publisher (unit tests only; integration tests use KafkaPublisher) ---------


class RecordingPublisher:
    def __init__(self, *, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.flushes = 0
        self.fail = fail
        self._lock = threading.Lock()

    def publish(self, event: Event) -> None:
        if self.fail:
            raise RuntimeError("publisher is broken")
        with self._lock:
            self.events.append(event)

    def flush(self, timeout: float | None = None) -> bool:
        self.flushes += 1
        return True

    def close(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def recording() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def broken_publisher() -> RecordingPublisher:
    """A publisher whose ``publish`` raises (as KafkaPublisher does after a fatal error)."""
    return RecordingPublisher(fail=True)


# --- Corail, as the seed document describes it ----------------------------------------------


class CorailEventType(enum.Enum):
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_RESPONSE = "message.response"
    THINKING_STARTED = "thinking.started"
    THINKING_COMPLETED = "thinking.completed"
    LLM_CALL_STARTED = "llm.call.started"
    LLM_CALL_COMPLETED = "llm.call.completed"
    LLM_TOKEN = "llm.token"
    TOOL_CALLED = "tool.called"
    TOOL_RESULT = "tool.result"
    TOOL_ERROR = "tool.error"
    GUARD_INPUT_CHECKED = "guard.input.checked"
    GUARD_OUTPUT_CHECKED = "guard.output.checked"
    GUARD_BLOCKED = "guard.blocked"
    MEMORY_RETRIEVED = "memory.retrieved"
    MEMORY_UPDATED = "memory.updated"
    MEMORY_STORED = "memory.stored"
    MEMORY_RECALLED = "memory.recalled"
    RETRIEVAL_SEARCHED = "retrieval.searched"
    RETRIEVAL_RESULTS = "retrieval.results"
    BUDGET_WARNING = "budget.warning"
    BUDGET_EXCEEDED = "budget.exceeded"
    AGENT_STARTED = "agent.started"
    AGENT_STOPPED = "agent.stopped"
    AGENT_ERROR = "agent.error"
    TURN_STARTED = "turn.started"
    TURN_ENDED = "turn.ended"
    SESSION_CREATED = "session.created"
    SESSION_ENDED = "session.ended"
    PLAN_CREATED = "plan.created"
    PLAN_STEP_STARTED = "plan.step.started"
    PLAN_STEP_COMPLETED = "plan.step.completed"
    PLAN_STEP_FAILED = "plan.step.failed"
    PLAN_COMPLETED = "plan.completed"
    CORRECTION_ATTEMPTED = "correction.attempted"
    CONFIG_UPDATED = "control.config.updated"  # Corail's names for its control types
    TOOLS_RELOAD_REQUESTED = "control.tools.reload"
    KBS_RELOAD_REQUESTED = "control.kbs.reload"
    AGENT_PAUSED = "control.agent.paused"
    AGENT_RESUMED = "control.agent.resumed"


class CorailStopReason(enum.StrEnum):
    END_TURN = "end_turn"
    MAX_ROUNDS = "max_rounds"
    TOKEN_BUDGET = "token_budget"
    TOOL_ERROR = "tool_error"
    GUARD_BLOCKED = "guard_blocked"
    USER_ABORTED = "user_aborted"


@dataclasses.dataclass
class CorailEvent:
    type: CorailEventType
    timestamp: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))
    agent_id: str = ""
    user_id: str = ""
    session_id: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "timestamp": self.timestamp.isoformat(),
            "agent_id": self.agent_id,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "data": self.data,
        }


CorailHandler = Callable[[CorailEvent], Awaitable[None]]
corail_logger = logging.getLogger("corail.events.bus")


class CorailEventBus:
    def __init__(self) -> None:
        self._handlers: dict[Any, list[CorailHandler]] = {}
        self._history: deque[CorailEvent] = deque(maxlen=1000)

    def subscribe(self, event_type: CorailEventType | str, handler: CorailHandler) -> None:
        self._handlers.setdefault(event_type, []).append(handler)

    def unsubscribe(self, event_type: CorailEventType | str, handler: CorailHandler) -> None:
        handlers = self._handlers.get(event_type, [])
        if handler in handlers:
            handlers.remove(handler)

    @property
    def subscriber_count(self) -> int:
        return sum(len(h) for h in self._handlers.values())

    @property
    def history(self) -> list[CorailEvent]:
        return list(reversed(self._history))

    def clear_history(self) -> None:
        self._history.clear()

    async def emit(self, event: CorailEvent) -> None:
        self._history.append(event)
        handlers = [*self._handlers.get(event.type, []), *self._handlers.get("*", [])]
        if handlers:
            await asyncio.gather(*(self._safe_call(h, event) for h in handlers))

    def emit_sync(self, event: CorailEvent) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._history.append(event)
            return
        loop.create_task(self.emit(event))  # noqa: RUF006 - Corail keeps no reference either

    async def _safe_call(self, handler: CorailHandler, event: CorailEvent) -> None:
        try:
            await handler(event)
        except Exception:
            name = getattr(handler, "__name__", repr(handler))
            corail_logger.exception("handler %s failed for %s", name, event.type.value)


@pytest.fixture
def corail() -> types.SimpleNamespace:
    """Corail's ``corail.events`` names: ``EventBus``, ``Event``, ``EventType``, ``StopReason``."""
    return types.SimpleNamespace(
        EventBus=CorailEventBus,
        Event=CorailEvent,
        EventType=CorailEventType,
        StopReason=CorailStopReason,
    )


@pytest.fixture
def peer_env(agentstream_site: Path) -> dict[str, str]:
    """The environment for a peer script: agentstream on PYTHONPATH, nothing else leaking in
    from this process's venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = str(agentstream_site)
    env["PYTHONUNBUFFERED"] = "1"
    return env
