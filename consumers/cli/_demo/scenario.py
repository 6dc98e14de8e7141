"""The demo's scenario: a pure function from a seed to the sessions each simulated agent plays.

Agents alternate between the two seed runtimes: even indexes are Corail-style pods (EventBus
events), odd ones Calute-style pods (AuditEmitter calls). Each agent plays an endless,
seed-determined series of sessions; every session has a :data:`Kind`:

``normal``
    1-3 user turns, LLM calls with token usage, tool calls with latencies and failures,
    guard checks (some blocked), retrieval. Stays below every loop and budget threshold of
    the services' defaults: no tool name twice in a row, no ``A B A`` alternation, at most 7
    rounds and well under 80,000 tokens per session.
``loop_same``
    one turn calls the same tool with the same arguments 5-6 times in a row (the loops
    service blocks at 5).
``loop_pingpong``
    one turn alternates two tools ``A B A B A B`` (blocked at 6).
``budget_tokens`` (Corail only)
    LLM calls with large contexts until the session passes 100,000 tokens; the pod's own
    runtime then reports ``budget.exceeded`` and ends the turn with ``token_budget``.
``budget_rounds`` (Corail only)
    one turn of 10 rounds, ended with ``max_rounds``.

The plan fixes everything but ids and timestamps: the session id is ``<run id>-<key>``, the
run id being chosen when the demo runs, so two runs with one seed play the same sessions
without mixing them in one store.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["corail", "calute"]
Kind = Literal["normal", "loop_same", "loop_pingpong", "budget_tokens", "budget_rounds"]

LOOP_KINDS: frozenset[str] = frozenset({"loop_same", "loop_pingpong"})
BUDGET_KINDS: frozenset[str] = frozenset({"budget_tokens", "budget_rounds"})

# One deck per family, shuffled per agent and per pass: in every 10 sessions of an agent,
# Corail pods play 2 loops and 2 budget-busters, Calute pods 3 loops.
_DECKS: dict[Family, tuple[Kind, ...]] = {
    "corail": (
        *(("normal",) * 6),
        "loop_same",
        "loop_pingpong",
        "budget_tokens",
        "budget_rounds",
    ),
    "calute": (*(("normal",) * 7), "loop_same", "loop_same", "loop_pingpong"),
}

MAX_NORMAL_ROUNDS = 7  # per session: the budget service warns at 8 of 10
TOKEN_LIMIT = 100_000  # Corail's (and the budget service's) default session limit
CORAIL_ROLES = ("support", "billing", "travel", "onboarding")
CALUTE_ROLES = ("research", "devops", "analyst", "coder")
MODELS = ("claude-sonnet-4", "gpt-4o", "gpt-4o-mini", "claude-haiku-3.5")

_TOOLS: dict[str, tuple[str, ...]] = {
    "web_search": ("kafka consumer lag", "retry budget", "opentelemetry spans", "refund policy"),
    "fetch_url": (
        "https://docs.example.com/faq",
        "https://status.example.com",
        "https://kb.example.com/42",
    ),
    "sql_query": ("SELECT count(*) FROM orders", "SELECT * FROM invoices LIMIT 5"),
    "calculator": ("17 * 23", "(1200 - 350) / 12", "2 ** 16"),
    "get_weather": ("Paris", "Lyon", "Berlin", "Oslo"),
    "read_file": ("README.md", "config/app.yaml", "logs/app.log"),
    "send_email": ("ops@example.com", "billing@example.com"),
    "run_shell": ("ls -la", "df -h", "git status"),
}
_ARG_NAMES = {
    "web_search": "query",
    "fetch_url": "url",
    "sql_query": "query",
    "calculator": "expression",
    "get_weather": "city",
    "read_file": "path",
    "send_email": "to",
    "run_shell": "command",
}
_ERRORS = (
    ("TimeoutError", "upstream did not answer within 5 s"),
    ("HTTPError", "503 Service Unavailable"),
    ("PermissionError", "access denied by the sandbox"),
    ("ValueError", "malformed arguments"),
)
_PROMPTS = (
    "Where is my order #{n}?",
    "Can you summarise yesterday's incidents?",
    "Book me a train to {city} on Friday.",
    "Why was I charged twice this month?",
    "What changed in release 3.{n}?",
    "Find the root cause of the failing deploy.",
)
_CITIES = ("Paris", "Lyon", "Berlin", "Oslo", "Madrid")


@dataclass(frozen=True)
class Step:
    """One thing the pod does, ``delay_ms`` (simulated) after the session's previous step.

    Corail steps: ``action`` is the event type and ``fields`` the event's ``data``.
    Calute steps: ``action`` is the ``AuditEmitter`` method and ``fields`` its keyword
    arguments (agent and turn ids are added by the pod).
    """

    delay_ms: int
    action: str
    turn: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedSession:
    agent: int
    agent_id: str
    family: Family
    number: int  # the agent's n-th session, from 0
    user_id: str
    kind: Kind
    steps: tuple[Step, ...]

    @property
    def key(self) -> str:
        return f"a{self.agent}-s{self.number:04d}"

    @property
    def loops(self) -> bool:
        return self.kind in LOOP_KINDS

    @property
    def busts_budget(self) -> bool:
        return self.kind in BUDGET_KINDS

    def session_id(self, run_id: str) -> str:
        return f"{run_id}-{self.key}"

    def turn_id(self, run_id: str, turn: int) -> str:
        return f"{self.session_id(run_id)}-t{turn}"


def agent_family(agent: int) -> Family:
    return "corail" if agent % 2 == 0 else "calute"


def agent_id(agent: int) -> str:
    roles = CORAIL_ROLES if agent_family(agent) == "corail" else CALUTE_ROLES
    return f"{agent_family(agent)}-{roles[(agent // 2) % len(roles)]}-{agent}"


def agent_sessions(seed: int, agent: int) -> Iterator[PlannedSession]:
    """The endless series of sessions agent ``agent`` plays for ``seed``."""
    rng = random.Random(f"agentstream-demo/{seed}/{agent}")
    family = agent_family(agent)
    aid = agent_id(agent)
    number = 0
    while True:
        deck = list(_DECKS[family])
        rng.shuffle(deck)
        for kind in deck:
            planner = _Planner(rng, family, first=number == 0)
            steps = planner.session(kind)
            user = f"user-{rng.randrange(1, 41):02d}"
            yield PlannedSession(agent, aid, family, number, user, kind, steps)
            number += 1


def plan(seed: int, agents: int, sessions_per_agent: int) -> list[PlannedSession]:
    """The first ``sessions_per_agent`` sessions of each of ``agents`` agents."""
    return [
        session
        for agent in range(agents)
        for session in itertools.islice(agent_sessions(seed, agent), sessions_per_agent)
    ]


def mean_step_delay_ms(seed: int, agents: int, sample: int = 20) -> float:
    """Average simulated time between two steps of a session (over a sample of the plan)."""
    steps = [step for session in plan(seed, agents, sample) for step in session.steps]
    return sum(step.delay_ms for step in steps) / max(1, len(steps))


class _Planner:
    """Builds one session's steps from the agent's random stream."""

    def __init__(self, rng: random.Random, family: Family, *, first: bool) -> None:
        self.rng = rng
        self.family = family
        self.steps: list[Step] = []
        self.turn = 0
        self.call = 0
        self.model = rng.choice(MODELS)
        # users arrive spread out; an agent's first session starts within 3 s
        self.pending_delay = rng.randint(0, 3_000) if first else rng.randint(500, 6_000)

    # --- helpers ------------------------------------------------------------------------------

    def add(self, delay_ms: int, action: str, /, **fields: Any) -> None:
        self.steps.append(Step(self.pending_delay + delay_ms, action, self.turn, fields))
        self.pending_delay = 0

    def prompt(self) -> str:
        template = self.rng.choice(_PROMPTS)
        return template.format(n=self.rng.randint(10, 99), city=self.rng.choice(_CITIES))

    def tool_latency(self) -> int:
        return int(min(8_000, self.rng.lognormvariate(5.3, 0.8)))  # median ~200 ms

    def llm_latency(self, output_tokens: int) -> int:
        return self.rng.randint(250, 700) + int(output_tokens * self.rng.uniform(8, 20))

    def think_time(self) -> int:
        return self.rng.randint(2_000, 9_000)

    def tools(self, count: int) -> list[str]:
        """``count`` tool names, never the same twice in a row nor ``A B A``."""
        chosen: list[str] = []
        for _ in range(count):
            options = [name for name in _TOOLS if name not in chosen[-2:]]
            chosen.append(self.rng.choice(options))
        return chosen

    def args(self, tool: str) -> dict[str, Any]:
        return {_ARG_NAMES[tool]: self.rng.choice(_TOOLS[tool])}

    def call_id(self) -> str:
        self.call += 1
        return f"call_{self.call}"

    # --- sessions -----------------------------------------------------------------------------

    def session(self, kind: Kind) -> tuple[Step, ...]:
        if self.family == "corail":
            self.corail_session(kind)
        else:
            self.calute_session(kind)
        return tuple(self.steps)

    # --- Corail: EventBus events --------------------------------------------------------------

    def corail_session(self, kind: Kind) -> None:
        if kind == "normal":
            rounds_left = MAX_NORMAL_ROUNDS
            for t in range(self.rng.randint(1, 3)):
                if rounds_left <= 0:
                    break
                rounds_left -= self.corail_turn(t, max_rounds=min(3, rounds_left))
        elif kind == "loop_same":
            repeats = self.rng.randint(5, 6)
            first = 0
            if repeats == 5:
                self.corail_turn(0, max_rounds=1)
                first = 1
            tool = self.rng.choice(("web_search", "fetch_url", "sql_query"))
            args = self.args(tool)
            self.corail_turn(first, scripted=[(tool, args)] * repeats)
        elif kind == "loop_pingpong":
            a, b = self.rng.sample(("web_search", "fetch_url", "read_file", "sql_query"), 2)
            script = [(name, self.args(name)) for name in (a, b) * 3]
            self.corail_turn(0, scripted=script)
        elif kind == "budget_tokens":
            self.corail_turn(0, max_rounds=1)
            self.corail_turn(1, huge_context=True)
        else:  # budget_rounds
            script = [(name, self.args(name)) for name in self.tools(9)]
            self.corail_turn(0, scripted=script, stop_at_ten=True)

    def corail_turn(
        self,
        t: int,
        *,
        max_rounds: int = 3,
        scripted: list[tuple[str, dict[str, Any]]] | None = None,
        huge_context: bool = False,
        stop_at_ten: bool = False,
    ) -> int:
        """One user turn; returns the rounds it used."""
        self.turn = t
        if t > 0:
            self.pending_delay += self.think_time()
        self.add(0, "message.received", content=self.prompt())
        blocked = scripted is None and not huge_context and self.rng.random() < 0.08
        self.add(
            self.rng.randint(5, 40),
            "guard.input.checked",
            guard="prompt_injection",
            direction="input",
            allowed=not blocked,
            reason="instruction override attempt" if blocked else "",
        )
        if blocked:
            self.add(
                1,
                "guard.blocked",
                direction="input",
                reason="prompt injection",
                guard="prompt_injection",
            )
            self.add(2, "message.response", content="Sorry, I can't help with that request.")
            self.add(1, "turn.ended", round=0, stop_reason="guard_blocked")
            return 0
        if scripted is None and (huge_context or self.rng.random() < 0.35):
            query = self.rng.choice(_TOOLS["web_search"])
            self.add(self.rng.randint(5, 30), "retrieval.searched", query=query)
            self.add(self.rng.randint(30, 250), "retrieval.results", count=self.rng.randint(0, 12))
        if scripted is not None:
            calls = scripted
            rounds = len(calls) + 1
        elif huge_context:
            calls = [(name, self.args(name)) for name in self.tools(6)]
            rounds = 7
        else:
            rounds = self.rng.randint(1, max_rounds)
            calls = [(name, self.args(name)) for name in self.tools(rounds - 1)]
        context = self.rng.randint(600, 2_500)
        session_tokens = 0
        for r in range(rounds):
            last = r == rounds - 1
            if huge_context:
                input_tokens = self.rng.randint(28_000, 42_000)
            else:
                input_tokens = context + r * self.rng.randint(150, 500)
            output_tokens = self.rng.randint(20, 120) if not last else self.rng.randint(80, 600)
            self.add(self.rng.randint(1, 20), "turn.started", round=r)
            self.add(1, "llm.call.started", round=r, model=self.model)
            self.add(
                self.llm_latency(output_tokens),
                "llm.call.completed",
                round=r,
                stop_reason="end_turn" if last else "tool_use",
                model=self.model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
            session_tokens += input_tokens + output_tokens
            if huge_context and session_tokens > TOKEN_LIMIT:
                self.add(1, "budget.exceeded", tokens_used=session_tokens)
                self.add(1, "turn.ended", round=r, stop_reason="token_budget")
                return r + 1
            if stop_at_ten and r == 9:
                self.add(1, "turn.ended", round=r, stop_reason="max_rounds")
                return r + 1
            if last:
                break
            name, args = calls[r]
            self.corail_tool(name, args)
        self.add(
            self.rng.randint(5, 30),
            "guard.output.checked",
            guard="pii",
            direction="output",
            allowed=True,
            reason="",
        )
        self.add(1, "message.response", content=self.answer())
        self.add(1, "turn.ended", round=rounds - 1, stop_reason="end_turn")
        return rounds

    def corail_tool(self, name: str, args: dict[str, Any]) -> None:
        call_id = self.call_id()
        self.add(self.rng.randint(1, 15), "tool.called", name=name, args=args, call_id=call_id)
        for attempt in range(3):
            if self.rng.random() >= 0.12:
                output = f"{name} returned {self.rng.randint(1, 40)} items"
                self.add(
                    self.tool_latency(),
                    "tool.result",
                    name=name,
                    output=output,
                    sources=None,
                    call_id=call_id,
                )
                return
            _, message = self.rng.choice(_ERRORS)
            self.add(
                self.tool_latency(),
                "tool.error",
                name=name,
                error=message,
                attempt=attempt,
                call_id=call_id,
            )

    def answer(self) -> str:
        return self.rng.choice(
            (
                "Here is what I found.",
                "Done: the ticket is updated.",
                "The refund was issued; you'll see it in 3-5 days.",
                "I couldn't find a definitive answer; here are the closest matches.",
            )
        )

    # --- Calute: AuditEmitter calls -----------------------------------------------------------

    def calute_session(self, kind: Kind) -> None:
        if kind == "loop_same":
            tool = self.rng.choice(("web_search", "run_shell", "read_file"))
            args = self.args(tool)
            self.calute_turn(0, scripted=[(tool, args)] * self.rng.randint(5, 7))
        elif kind == "loop_pingpong":
            a, b = self.rng.sample(("read_file", "run_shell", "web_search", "fetch_url"), 2)
            self.calute_turn(0, scripted=[(name, self.args(name)) for name in (a, b) * 3])
        else:
            for t in range(self.rng.randint(1, 3)):
                self.calute_turn(t)

    def calute_turn(
        self, t: int, *, scripted: list[tuple[str, dict[str, Any]]] | None = None
    ) -> None:
        self.turn = t
        if t > 0:
            self.pending_delay += self.think_time()
        self.add(0, "emit_turn_start", prompt=self.prompt())
        if scripted is None:
            scripted = [(name, self.args(name)) for name in self.tools(self.rng.randint(0, 4))]
            looping = False
        else:
            looping = True
        done = 0
        for name, args in scripted:
            self.add(
                self.llm_latency(self.rng.randint(20, 120)),
                "emit_tool_policy_decision",
                tool_name=name,
                action="allow" if looping or self.rng.random() >= 0.08 else "deny",
                source="policy.yaml",
            )
            if self.steps[-1].fields["action"] == "deny":
                continue
            if name == "run_shell":
                self.add(
                    1,
                    "emit_sandbox_decision",
                    tool_name=name,
                    context=str(args["command"]),
                    reason="allowed by profile",
                    backend_type="docker",
                )
            self.add(
                1, "emit_tool_call_attempt", tool_name=name, args=json.dumps(args, sort_keys=True)
            )
            latency = self.tool_latency()
            if looping or self.rng.random() >= 0.12:
                result = f"{name}: {self.rng.randint(1, 40)} lines"
                self.add(
                    latency,
                    "emit_tool_call_complete",
                    tool_name=name,
                    status="success",
                    duration_ms=float(latency),
                    result=result,
                )
            else:
                error_type, message = self.rng.choice(_ERRORS)
                self.add(
                    latency,
                    "emit_tool_call_failure",
                    tool_name=name,
                    error_type=error_type,
                    error_msg=message,
                )
            done += 1
        self.add(
            self.llm_latency(self.rng.randint(80, 600)),
            "emit_turn_end",
            content=self.answer(),
            fc_count=done,
        )
