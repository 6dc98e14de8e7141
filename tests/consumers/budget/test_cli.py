"""``agentstream budget show``: usage against limits, from the changelog topic."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from agentstream.consumers.budget.accounting import ScopeState
from agentstream.consumers.budget.changelog import ChangelogWriter, ensure_budget_topics
from agentstream.consumers.budget.config import BudgetConfig, Limits
from agentstream.consumers.cli.budget import render_table, usage_rows
from agentstream.schemas.settings import KafkaSettings


async def show(settings: KafkaSettings, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentstream.consumers.cli",
        "budget",
        "show",
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--topic-prefix",
        settings.topic_prefix,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_show_prints_usage_against_limits(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    config = tmp_path / "budget.toml"
    config.write_text("[session]\ntokens = 1000\n[agent_day]\ntokens = 5000\n")
    await ensure_budget_topics(kafka_settings)
    writer = ChangelogWriter(kafka_settings)
    await writer.start()
    try:
        session = ScopeState(
            scope="session:s-1",
            agent_id="a",
            user_id="u",
            tokens=850,
            rounds=3,
            signals={"tokens": 1},
        )
        other = ScopeState(scope="session:s-2", agent_id="a", tokens=5)
        day = ScopeState(scope="agent:a:2026-11-21", agent_id="a", tokens=2500)
        old = ScopeState(scope="agent:a:2026-11-20", agent_id="a", tokens=1)
        await writer.write(0, [session, day, old])
        await writer.write(1, [other])
        await writer.write(1, [], ["session:s-2"])  # evicted: a tombstone
    finally:
        await writer.stop()

    code, out, _ = await show(kafka_settings, "--session", "s-1", "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["SCOPE", "DIMENSION", "USED", "LIMIT", "%", "SIGNAL"]
    assert "session:s-1  tokens" in out
    tokens = next(line for line in lines if " tokens " in line)
    assert tokens.split() == ["session:s-1", "tokens", "850", "1,000", "85.0", "warning"]
    rounds = next(line for line in lines if " rounds " in line)
    assert rounds.split() == ["session:s-1", "rounds", "3", "10", "30.0"]

    code, out, _ = await show(
        kafka_settings, "--agent", "a", "--day", "2026-11-21", "--json", "--config", str(config)
    )
    assert code == 0
    rows = json.loads(out)
    assert [r["scope"] for r in rows] == ["agent:a:2026-11-21"]
    assert rows[0]["dimensions"]["tokens"] == {
        "used": 2500,
        "limit": 5000.0,
        "percent": 50.0,
        "signal": None,
    }

    code, out, err = await show(kafka_settings, "--session", "s-2")
    assert code == 1
    assert out == ""
    assert "no budget state matches" in err


def test_rows_leave_out_wall_time_of_days_and_unlimited_dimensions_show_a_dash() -> None:
    config = BudgetConfig(session=Limits(tokens=100), agent_day=Limits())
    day = usage_rows(ScopeState(scope="agent:a:2026-11-21", agent_id="a", tool_calls=3), config)
    assert "wall_time_s" not in day["dimensions"]
    assert day["dimensions"]["tool_calls"]["limit"] is None
    table = render_table([day])
    row = next(line for line in table.splitlines() if "tool_calls" in line)
    assert row.split() == ["agent:a:2026-11-21", "tool_calls", "3", "-", "-"]


def test_service_options_map_to_settings() -> None:
    from agentstream.consumers.budget.service import SERVICE, BudgetSettings
    from agentstream.consumers.runtime.runner import settings_from_options

    settings = settings_from_options(
        SERVICE, ["--warning-fraction", "0.5", "--pause-on-exceeded", "--pause-max-age-s", "0"]
    )
    assert isinstance(settings, BudgetSettings)
    assert settings.budget_warning_fraction == 0.5
    assert settings.budget_pause_on_exceeded is True
    assert settings.budget_pause_max_age_s == 0
