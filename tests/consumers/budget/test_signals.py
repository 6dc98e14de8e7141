"""The events the budget service publishes, and its settings."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from agentstream.consumers.budget.accounting import Level, Signal
from agentstream.consumers.budget.config import Dimension, Limits
from agentstream.consumers.budget.service import SERVICE, BudgetSettings
from agentstream.consumers.budget.signals import pause_directive, signal_event
from agentstream.schemas import decode_event, encode_event
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.payloads import BudgetExceeded, BudgetWarning, ControlAgentPaused


def signal(dimension: Dimension, level: Level, used: float, limit: float) -> Signal:
    return Signal(
        scope="session:s-1",
        dimension=dimension,
        level=level,
        used=used,
        limit=limit,
        session_id="s-1",
        agent_id="agent-a",
        user_id="user-1",
        turn_id="t-1",
        ts_ms=1_763_766_000_000,
    )


def test_exceeded_carries_corail_keys_and_the_trigger_envelope() -> None:
    event = signal_event(signal(Dimension.TOKENS, Level.EXCEEDED, 100_250, 100_000))
    assert event.type == "budget.exceeded"
    payload = event.payload
    assert isinstance(payload, BudgetExceeded)
    assert (payload.scope, payload.dimension, payload.used, payload.limit) == (
        "session:s-1",
        "tokens",
        100_250,
        100_000,
    )
    assert payload.tokens_used == 100_250
    assert (event.session_id, event.agent_id, event.user_id, event.turn_id) == (
        "s-1",
        "agent-a",
        "user-1",
        "t-1",
    )
    assert event.source == "agentstream-budget"
    # Identical when re-sent (same id, same time): downstream deduplication works.
    again = signal_event(signal(Dimension.TOKENS, Level.EXCEEDED, 100_250, 100_000))
    assert encode_event(again) == encode_event(event)
    assert decode_event(encode_event(event)) == event


def test_warning_for_rounds_has_the_rounds_key() -> None:
    event = signal_event(signal(Dimension.ROUNDS, Level.WARNING, 8, 10))
    assert event.type == "budget.warning"
    assert isinstance(event.payload, BudgetWarning)
    assert event.data["rounds"] == 8
    assert "tokens_used" not in event.data


def test_pause_directive_names_the_agent_and_the_finding() -> None:
    exceeded = signal(Dimension.COST_USD, Level.EXCEEDED, 5.5, 5.0)
    directive = pause_directive(exceeded)
    assert directive.type == "control.agent.paused"
    assert isinstance(directive.payload, ControlAgentPaused)
    assert directive.agent_id == "agent-a"
    assert directive.session_id == "s-1"
    assert directive.data["service"] == "budget"
    assert directive.data["finding_id"] == signal_event(exceeded).event_id
    assert "cost_usd" in directive.data["reason"]
    assert directive.event_id != signal_event(exceeded).event_id


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[session]\ntokens = 5000\n[prices."m"]\noutput_per_million = 2\n')
    monkeypatch.setenv("AGENTSTREAM_BUDGET_CONFIG", str(path))
    monkeypatch.setenv("AGENTSTREAM_BUDGET_SESSION_ROUNDS", "3")
    monkeypatch.setenv("AGENTSTREAM_BUDGET_WARNING_FRACTION", "0.5")
    settings = BudgetSettings()
    assert settings.http_port == 9103
    config = settings.budget()
    assert config.session == Limits(tokens=5_000, rounds=3)
    assert config.warning_fraction == 0.5
    assert config.prices["m"].output_per_million == 2


def test_a_missing_or_unreadable_config_file_is_refused_by_the_preflight(tmp_path: Path) -> None:
    """The service's preflight, run at start before the broker is awaited, reads the file:
    the service waited for the broker first (forever when none answered), and only then said
    the file was wrong."""
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes(b"# caf\xe9\n")
    cases = {
        tmp_path / "nope.toml": r"nope\.toml, none exists",
        tmp_path: r"expected a readable budget config at .*Is a directory",
        not_utf8: r"expected TOML in the budget config .*latin1\.toml: 'utf-8' codec",
    }
    preflight = SERVICE.preflight
    assert preflight is not None
    for path, expected in cases.items():
        with pytest.raises(ConfigurationError, match=expected):
            preflight(BudgetSettings(budget_config=path))


def test_state_round_trips_through_the_changelog_codec() -> None:
    from agentstream.consumers.budget.accounting import ScopeState
    from agentstream.consumers.budget.changelog import decode_state, encode_state

    state = ScopeState(scope="session:s", tokens=5, signals={"tokens": 1})
    state.pending.append(signal(Dimension.TOKENS, Level.WARNING, 5, 6))
    assert decode_state(encode_state(state)) == state
    with pytest.raises(msgspec.DecodeError):
        decode_state(b"not json")
