"""MetricsSettings: environment, comma-separated allow-lists, the service's port and options."""

from __future__ import annotations

import argparse

import pytest

from agentstream.consumers.metrics import OTHER
from agentstream.consumers.metrics.service import SERVICE
from agentstream.consumers.metrics.settings import MetricsSettings


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MetricsSettings().http_port == 9104
    monkeypatch.setenv("AGENTSTREAM_AGENT_LABELS", "planner, writer,")
    monkeypatch.setenv("AGENTSTREAM_TOOL_LABEL_LIMIT", "1")
    settings = MetricsSettings()
    assert settings.agent_labels == ["planner", "writer"]
    agents = settings.agent_bound()
    assert [agents(a) for a in ("writer", "x", "planner")] == ["writer", OTHER, "planner"]
    tools = settings.tool_bound()
    assert [tools(t) for t in ("a", "b", "a")] == ["a", OTHER, "a"]
    # set but empty (a template's blank) was an allow-list of nothing: every model "other"
    monkeypatch.setenv("AGENTSTREAM_MODEL_LABELS", "")
    settings = MetricsSettings()
    assert settings.model_labels is None and settings.model_bound()("sonnet") == "sonnet"


def test_command_line_options_are_settings_fields() -> None:
    parser = argparse.ArgumentParser()
    assert SERVICE.add_arguments is not None
    SERVICE.add_arguments(parser)
    args = parser.parse_args(["--model-labels", "a,b", "--active-session-window-s", "60"])
    given = {k: v for k, v in vars(args).items() if v is not None}
    assert set(vars(args)) <= set(MetricsSettings.model_fields)
    settings = MetricsSettings(**given)
    assert settings.model_labels == ["a", "b"]
    assert settings.active_session_window_s == 60
    assert SERVICE.name == "metrics"
    assert SERVICE.settings_class is MetricsSettings


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="active_session_window_s"):
        MetricsSettings(active_session_window_s=0)
