"""Loop-detection thresholds: Calute's defaults, overridable globally and per agent.

A TOML file (``--config PATH`` / ``AGENTSTREAM_LOOPS_CONFIG``)::

    [loops]
    max_calls = 25
    same_call_warning = 3
    same_call_critical = 5
    pingpong_warning = 4
    pingpong_critical = 6

    [loops.agents."research-agent"]   # only the keys given differ from [loops]
    same_call_warning = 5
    same_call_critical = 8

A threshold of 0 disables that level (``max_calls = 0`` turns the call cap off).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentstream.schemas.errors import ConfigurationError

PINGPONG_WINDOW = 4
"""Calute's ping-pong gate: the last 4 calls hold at most 2 names and alternate."""


@dataclass(frozen=True, slots=True)
class LoopThresholds:
    """When each rule fires. Calute's defaults; 0 disables a level."""

    max_calls: int = 25
    same_call_warning: int = 3
    same_call_critical: int = 5
    pingpong_warning: int = 4
    pingpong_critical: int = 6

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(
                    f"expected loop threshold {f.name} to be an integer >= 0, got {value!r}"
                )
        for rule in ("same_call", "pingpong"):
            warning = getattr(self, f"{rule}_warning")
            critical = getattr(self, f"{rule}_critical")
            if warning and critical and warning > critical:
                raise ConfigurationError(
                    f"expected {rule}_warning <= {rule}_critical, got {warning} > {critical}"
                )

    def replace(self, **changes: int) -> LoopThresholds:
        return dataclasses.replace(self, **changes)


THRESHOLD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LoopThresholds))


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Global thresholds and per-agent overrides (each a complete :class:`LoopThresholds`)."""

    defaults: LoopThresholds = LoopThresholds()
    agents: Mapping[str, LoopThresholds] = field(default_factory=dict)

    def for_agent(self, agent_id: str) -> LoopThresholds:
        return self.agents.get(agent_id, self.defaults)

    @classmethod
    def from_mapping(
        cls,
        loops: Mapping[str, Any],
        *,
        base: LoopThresholds | None = None,
        where: str = "[loops]",
    ) -> LoopConfig:
        """Build from the ``[loops]`` table: threshold keys plus an ``agents`` sub-table."""
        known = {*THRESHOLD_NAMES, "agents"}
        unknown = sorted(set(loops) - known)
        if unknown:
            raise ConfigurationError(
                f"expected keys among {sorted(known)} in {where}, got unknown {unknown}"
            )
        changes = {k: v for k, v in loops.items() if k != "agents"}
        defaults = _thresholds(base or LoopThresholds(), changes, where)
        agents_table = loops.get("agents", {})
        if not isinstance(agents_table, Mapping):
            raise ConfigurationError(f"expected {where}.agents to be a table, got {agents_table!r}")
        agents: dict[str, LoopThresholds] = {}
        for agent_id, overrides in agents_table.items():
            # "[loops.agents.x] of path" (a file), "loop settings.agents.x" (the environment)
            table = (
                where.replace("[loops]", f"[loops.agents.{agent_id}]", 1)
                if "[loops]" in where
                else f"{where}.agents.{agent_id}"
            )
            if not isinstance(overrides, Mapping):
                raise ConfigurationError(f"expected {table} to be a table, got {overrides!r}")
            bad = sorted(set(overrides) - set(THRESHOLD_NAMES))
            if bad:
                raise ConfigurationError(
                    f"expected keys among {list(THRESHOLD_NAMES)} in {table}, got unknown {bad}"
                )
            agents[str(agent_id)] = _thresholds(defaults, dict(overrides), table)
        return cls(defaults=defaults, agents=agents)

    @classmethod
    def build(
        cls,
        path: str | Path | None = None,
        *,
        overrides: Mapping[str, int] | None = None,
        agents: Mapping[str, Mapping[str, int]] | None = None,
    ) -> LoopConfig:
        """The file's ``[loops]`` table (if any), then global ``overrides`` and per-agent
        ``agents`` overrides on top (settings from the environment or the command line).

        Per-agent entries inherit every global value they do not set, overrides included.
        """
        table: dict[str, Any] = dict(load_table(path)) if path is not None else {}
        table.update(overrides or {})
        merged_agents: dict[str, dict[str, Any]] = {
            str(k): dict(v) if isinstance(v, Mapping) else v
            for k, v in dict(table.get("agents", {})).items()
        }
        for agent_id, changes in (agents or {}).items():
            merged_agents.setdefault(agent_id, {}).update(changes)
        if merged_agents:
            table["agents"] = merged_agents
        where = f"[loops] of {path}" if path is not None else "loop settings"
        return cls.from_mapping(table, where=where)


def _thresholds(base: LoopThresholds, changes: dict[str, Any], where: str) -> LoopThresholds:
    """``base`` with ``changes``; a value refused is said with where it was set."""
    try:
        return base.replace(**changes)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} in {where}") from None


def load_table(path: str | Path) -> Mapping[str, Any]:
    """A TOML file's ``[loops]`` table (an empty file: Calute's defaults). Anything else at
    the top of the file is refused, as unknown keys are inside the table."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8
        raise ConfigurationError(
            f"expected a readable TOML loop configuration at {path}, got: {exc}"
        ) from None
    unknown = sorted(set(document) - {"loops"})
    if unknown:  # a typo such as [loop] would otherwise leave Calute's defaults in force
        raise ConfigurationError(f"expected only a [loops] table in {path}, got unknown {unknown}")
    loops = document.get("loops", {})
    if not isinstance(loops, Mapping):
        raise ConfigurationError(f"expected [loops] in {path} to be a table, got {loops!r}")
    return loops
