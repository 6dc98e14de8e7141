"""LoopSettings: thresholds from a TOML file, the environment and command-line options."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentstream.consumers.loops.config import LoopThresholds
from agentstream.consumers.loops.service import SERVICE, LoopSettings, add_arguments
from agentstream.consumers.runtime.runner import run_service
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import settings_error


def test_defaults_are_calutes_and_the_port_is_9102() -> None:
    settings = LoopSettings()
    assert settings.http_port == 9102
    assert settings.loop_config().defaults == LoopThresholds()
    assert SERVICE.name == "loops" and SERVICE.settings_class is LoopSettings


def test_environment_layers_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "loops.toml"
    path.write_text("[loops]\nsame_call_warning = 2\nsame_call_critical = 4\n")
    monkeypatch.setenv("AGENTSTREAM_LOOPS_CONFIG", str(path))
    monkeypatch.setenv("AGENTSTREAM_LOOP_SAME_CALL_CRITICAL", "7")
    monkeypatch.setenv("AGENTSTREAM_LOOP_AGENTS", '{"batch-agent": {"max_calls": 200}}')
    config = LoopSettings().loop_config()
    assert config.defaults == LoopThresholds(same_call_warning=2, same_call_critical=7)
    assert config.for_agent("batch-agent") == LoopThresholds(
        same_call_warning=2, same_call_critical=7, max_calls=200
    )


@pytest.mark.parametrize("value", ["true", "false", "2.5", '"3"'])
def test_per_agent_thresholds_in_the_environment_are_integers(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """JSON's true and false were taken for 1 and 0 (every call of the agent blocked, or a
    rule silently off), where the TOML file refuses them."""
    monkeypatch.setenv("AGENTSTREAM_LOOP_AGENTS", f'{{"alpha": {{"max_calls": {value}}}}}')
    with pytest.raises(ValidationError) as caught:
        LoopSettings()
    error = settings_error(caught.value)
    assert "loop_agents (AGENTSTREAM_LOOP_AGENTS) at alpha.max_calls: expected" in str(error)


def test_command_line_options_map_to_settings(tmp_path: Path) -> None:
    path = tmp_path / "loops.toml"
    path.write_text('[loops.agents."slow"]\npingpong_critical = 10\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--config",
            str(path),
            "--same-call-warning",
            "4",
            "--max-calls",
            "0",
            "--no-control",
            "--control-max-age-s",
            "30",
            "--webhook-url",
            "http://hooks.local/x",
            "--webhook-format",
            "slack",
        ]
    )
    given = {k: v for k, v in vars(args).items() if v is not None}
    settings = LoopSettings(**given)
    assert settings.control_directives is False and settings.control_max_age_s == 30
    assert settings.webhook_format == "slack"
    config = settings.loop_config()
    assert config.defaults == LoopThresholds(same_call_warning=4, max_calls=0)
    assert config.for_agent("slow").pingpong_critical == 10


def test_inconsistent_thresholds_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="same_call_warning <= same_call_critical"):
        LoopSettings(loop_same_call_warning=9).loop_config()


async def test_a_config_file_that_cannot_be_read_is_refused_before_the_broker_is_awaited(
    tmp_path: Path,
) -> None:
    """The service's preflight reads it at start: the service waited for the broker first
    (forever when none answered), and only then said the file was wrong."""
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes(b"[loops]\n# caf\xe9\n")
    for path, expected in {
        tmp_path / "nope.toml": "No such file",
        tmp_path: "Is a directory",
        not_utf8: "'utf-8' codec can't decode",
    }.items():
        settings = LoopSettings(loops_config=path, bootstrap_servers="127.0.0.1:1", http_port=0)
        with pytest.raises(ConfigurationError, match=f"TOML loop configuration at .*{expected}"):
            async with asyncio.timeout(5):  # no broker answers there
                await run_service(SERVICE, settings)


def test_a_webhook_url_that_cannot_be_posted_to_is_a_settings_error() -> None:
    # The URL is a secret (a Slack webhook's path is its token): the error shows its host.
    with pytest.raises(ValidationError) as caught:
        LoopSettings(webhook_url="hooks.slack.com/services/T0/B0/token")
    error = settings_error(caught.value)
    assert error is not None
    assert str(error) == (
        "invalid settings: webhook_url (AGENTSTREAM_WEBHOOK_URL): expected an http:// or "
        "https:// URL with a host, got 'hooks.slack.com/…'"
    )
    with pytest.raises(ValidationError) as caught:
        LoopSettings(webhook_url="ftp://hooks.local/token")
    assert "got 'ftp://hooks.local/…'" in str(settings_error(caught.value))
    settings = LoopSettings(webhook_url="https://hooks.local/token")
    assert settings.webhook_url is not None
    assert settings.webhook_url.get_secret_value() == "https://hooks.local/token"
    assert "token" not in repr(settings)


def test_the_services_own_kafka_defaults_keep_their_bounds() -> None:
    for option in ("fetch_max_wait_ms", "linger_ms"):
        with pytest.raises(ValidationError, match=option):
            LoopSettings(**{option: -1})


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[loops]\nsame_call_warning = "3"\n', "got '3' in [loops] of {path}"),
        (
            "[loops.agents.x]\nsame_call_warning = 9\n",
            "got 9 > 5 in [loops.agents.x] of {path}",
        ),
    ],
)
def test_a_threshold_refused_in_a_file_names_the_file_and_the_agent(
    tmp_path: Path, toml: str, expected: str
) -> None:
    """docs/loops.md: "a ConfigurationError naming the key and the file"; these named neither
    the file nor the agent."""
    from agentstream.consumers.loops.config import LoopConfig

    path = tmp_path / "loops.toml"
    path.write_text(toml)
    with pytest.raises(ConfigurationError) as refused:
        LoopConfig.build(path)
    assert str(refused.value).endswith(expected.format(path=path))
