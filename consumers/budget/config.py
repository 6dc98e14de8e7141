"""Budget limits and model prices, from a TOML file.

```toml
warning_fraction = 0.8          # budget.warning at 80 % of a limit

[session]                       # every session (Corail's defaults: 10 rounds, 100,000 tokens)
tokens = 100_000
rounds = 10
tool_calls = 200
cost_usd = 5.0
wall_time_s = 3600

[agent_day]                     # per agent per UTC day (all its sessions together)
tokens = 5_000_000

[user_day]                      # per user per UTC day
cost_usd = 20.0

[agents."agent-weather"]        # overrides for one agent
session = { tokens = 200_000 }
day = { tokens = 10_000_000 }

[users."user-42"]               # overrides for one user
session = { rounds = 20 }
day = { cost_usd = 50.0 }

[prices."claude-sonnet"]        # USD per million tokens
input_per_million = 3.0
output_per_million = 15.0
```

A dimension absent from a table has no limit (except the session defaults above, which
match Corail); ``0`` switches a limit off explicitly. When both the agent's and the user's
overrides name a session dimension, the smaller limit applies (both budgets hold).
"""

from __future__ import annotations

import enum
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agentstream.schemas.errors import ConfigurationError


class Dimension(enum.StrEnum):
    """What a budget counts."""

    TOKENS = "tokens"
    ROUNDS = "rounds"
    TOOL_CALLS = "tool_calls"
    COST_USD = "cost_usd"
    WALL_TIME_S = "wall_time_s"


DIMENSIONS: tuple[Dimension, ...] = tuple(Dimension)

CORAIL_MAX_ROUNDS = 10
CORAIL_MAX_TOKENS = 100_000


@dataclass(frozen=True)
class Limits:
    """A limit per dimension; ``None`` (or 0 in the file) means no limit."""

    tokens: float | None = None
    rounds: float | None = None
    tool_calls: float | None = None
    cost_usd: float | None = None
    wall_time_s: float | None = None

    def get(self, dimension: Dimension) -> float | None:
        value: float | None = getattr(self, dimension.value)
        return value if value else None

    def merged(self, override: Limits) -> Limits:
        """These limits with every dimension ``override`` names replaced."""
        changes = {d.value: getattr(override, d.value) for d in DIMENSIONS}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def named(self) -> set[Dimension]:
        """The dimensions these limits set (0, switched off, included)."""
        return {d for d in DIMENSIONS if getattr(self, d.value) is not None}

    def stricter(self, other: Limits) -> Limits:
        """Per dimension, the smaller of two limits (no limit counts as infinite)."""
        values: dict[str, float | None] = {}
        for d in DIMENSIONS:
            a, b = self.get(d), other.get(d)
            values[d.value] = b if a is None else a if b is None else min(a, b)
        return Limits(**values)

    def as_dict(self) -> dict[str, float]:
        return {d.value: v for d in DIMENSIONS if (v := self.get(d)) is not None}


CORAIL_SESSION_LIMITS = Limits(tokens=CORAIL_MAX_TOKENS, rounds=CORAIL_MAX_ROUNDS)


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / 1_000_000


@dataclass(frozen=True)
class Override:
    """An agent's or a user's own limits: for each of its sessions, and for its UTC day."""

    session: Limits = Limits()
    day: Limits = Limits()


@dataclass(frozen=True)
class BudgetConfig:
    """Limits per scope kind, overrides per agent and user, prices per model."""

    warning_fraction: float = 0.8
    session: Limits = CORAIL_SESSION_LIMITS
    agent_day: Limits = Limits()
    user_day: Limits = Limits()
    agents: Mapping[str, Override] = field(default_factory=dict)
    users: Mapping[str, Override] = field(default_factory=dict)
    prices: Mapping[str, Price] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.warning_fraction <= 1:
            raise ConfigurationError(
                f"expected warning_fraction in (0, 1], got {self.warning_fraction!r}"
            )

    def session_limits(self, agent_id: str, user_id: str) -> Limits:
        """The session defaults, with each dimension the agent's or the user's override names
        replaced; where both name one, the smaller limit (0, no limit, counts as infinite).
        A dimension one override names is never lowered by the other's defaults."""
        agent = self.agents.get(agent_id) if agent_id else None
        user = self.users.get(user_id) if user_id else None
        limits = self.session
        if agent is not None:
            limits = limits.merged(agent.session)
        if user is not None:
            limits = limits.merged(user.session)
            if agent is not None:  # both named it: the smaller
                both = agent.session.named() & user.session.named()
                smaller = agent.session.stricter(user.session)
                limits = replace(limits, **{d.value: smaller.get(d) or 0.0 for d in both})
        return limits

    def agent_day_limits(self, agent_id: str) -> Limits:
        override = self.agents.get(agent_id)
        return self.agent_day.merged(override.day) if override else self.agent_day

    def user_day_limits(self, user_id: str) -> Limits:
        override = self.users.get(user_id)
        return self.user_day.merged(override.day) if override else self.user_day

    def price(self, model: str | None) -> Price | None:
        return self.prices.get(model) if model else None


def load_config(path: str | Path | None, **overrides: Any) -> BudgetConfig:
    """Read the TOML file at ``path`` (none: Corail's defaults), then apply ``overrides``
    (``warning_fraction``, ``session`` Limits ... from env or the command line)."""
    config = BudgetConfig() if path is None else parse_config(_read(Path(path)), where=str(path))
    if "session" in overrides:
        overrides["session"] = config.session.merged(overrides["session"])
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigurationError(f"expected a budget config file at {path}, none exists") from None
    except OSError as exc:  # a directory, no permission
        raise ConfigurationError(f"expected a readable budget config at {path}: {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8
        raise ConfigurationError(f"expected TOML in the budget config {path}: {exc}") from None


_TOP_KEYS = {"warning_fraction", "session", "agent_day", "user_day", "agents", "users", "prices"}


def parse_config(raw: Mapping[str, Any], *, where: str = "<config>") -> BudgetConfig:
    """A :class:`BudgetConfig` from a parsed TOML document; unknown keys are errors (typos)."""
    _no_unknown(raw, _TOP_KEYS, where)
    fraction = raw.get("warning_fraction", 0.8)
    if not isinstance(fraction, int | float) or isinstance(fraction, bool):
        raise ConfigurationError(
            f"expected a number for warning_fraction in {where}, got {fraction!r}"
        )
    return BudgetConfig(
        warning_fraction=float(fraction),
        session=CORAIL_SESSION_LIMITS.merged(
            _limits(raw.get("session", {}), f"{where}: [session]")
        ),
        agent_day=_limits(raw.get("agent_day", {}), f"{where}: [agent_day]"),
        user_day=_limits(raw.get("user_day", {}), f"{where}: [user_day]"),
        agents=_overrides(raw.get("agents", {}), f"{where}: [agents]"),
        users=_overrides(raw.get("users", {}), f"{where}: [users]"),
        prices=_prices(raw.get("prices", {}), f"{where}: [prices]"),
    )


def _no_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(raw) - known
    if unknown:
        raise ConfigurationError(
            f"expected only keys {sorted(known)} in {where}, got unknown {sorted(unknown)}"
        )


def _table(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"expected a table at {where}, got {raw!r}")
    return raw


def _amount(value: Any) -> bool:
    """A limit or price: a finite number >= 0 (TOML's nan passed ``value < 0`` and switched the
    budget off silently; inf is no limit, which 0 says)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _limits(raw: Any, where: str) -> Limits:
    table = _table(raw, where)
    _no_unknown(table, {d.value for d in DIMENSIONS}, where)
    values: dict[str, float] = {}
    for key, value in table.items():
        if not _amount(value):
            raise ConfigurationError(f"expected a number >= 0 for {key} in {where}, got {value!r}")
        values[key] = float(value)
    # 0 is kept (not None) so that an override can switch a default limit off.
    return Limits(**values)


def _overrides(raw: Any, where: str) -> dict[str, Override]:
    result: dict[str, Override] = {}
    for name, body in _table(raw, where).items():
        table = _table(body, f"{where}.{name}")
        _no_unknown(table, {"session", "day"}, f"{where}.{name}")
        result[name] = Override(
            session=_limits(table.get("session", {}), f"{where}.{name}.session"),
            day=_limits(table.get("day", {}), f"{where}.{name}.day"),
        )
    return result


def _prices(raw: Any, where: str) -> dict[str, Price]:
    result: dict[str, Price] = {}
    for model, body in _table(raw, where).items():
        table = _table(body, f"{where}.{model}")
        _no_unknown(table, {"input_per_million", "output_per_million"}, f"{where}.{model}")
        values = {}
        for key, value in table.items():
            if not _amount(value):
                raise ConfigurationError(
                    f"expected a number >= 0 for {key} in {where}.{model}, got {value!r}"
                )
            values[key] = float(value)
        result[model] = Price(**values)
    return result
