"""The checks themselves: they reject what they are there to reject."""

from __future__ import annotations

import pytest

from agentstream.consumers.metrics.settings import MetricsSettings
from agentstream.consumers.persistence.service import PersistenceSettings
from agentstream.consumers.tracing.settings import TracingSettings
from agentstream.schemas.settings import KafkaSettings

from .checks import check_process, env_names, unknown_variables


def test_variables_map_to_fields_or_their_aliases() -> None:
    assert env_names(PersistenceSettings)["AGENTSTREAM_STORE"] == "store"
    assert env_names(TracingSettings)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "otel_endpoint"
    assert env_names(TracingSettings)["AGENTSTREAM_OTLP_ENDPOINT"] == "otlp_endpoint"
    env = {"AGENTSTREAM_STORE": "sqlite:///x.db", "OTEL_SERVICE_NAME": "x", "PATH": "/bin"}
    assert unknown_variables(env, MetricsSettings) == ["AGENTSTREAM_STORE", "OTEL_SERVICE_NAME"]
    assert unknown_variables(env, PersistenceSettings) == ["OTEL_SERVICE_NAME"]
    assert unknown_variables(env, TracingSettings) == ["AGENTSTREAM_STORE"]
    assert unknown_variables({"AGENTSTREAM_HTTP_PORT": "1"}, KafkaSettings) == [
        "AGENTSTREAM_HTTP_PORT"
    ]


@pytest.mark.parametrize(
    ("argv", "env", "complaint"),
    [
        (["consume", "persistance"], {}, "expected `consume <service>`"),
        (["consume", "loops", "--no-such-option"], {}, "rejected"),
        (["topics", "delete"], {}, "rejected"),
        (["serve"], {}, "expected a command among"),
        (["consume", "metrics"], {"AGENTSTREAM_STORE": "x"}, "does not read"),
        (["consume", "metrics"], {"AGENTSTREAM_HTTP_PORT": "http"}, "invalid settings"),
        (["topics", "create"], {"AGENTSTREAM_SECURITY_PROTOCOL": "TLS"}, "invalid settings"),
    ],
)
def test_bad_processes_are_rejected(argv: list[str], env: dict[str, str], complaint: str) -> None:
    with pytest.raises((pytest.fail.Exception, AssertionError), match=complaint):
        check_process(argv, env, "here")


def test_a_good_process_passes_and_returns_its_settings() -> None:
    settings = check_process(
        ["consume", "persistence", "--retention-days", "7"],
        {"AGENTSTREAM_STORE": "postgresql://db/x", "AGENTSTREAM_HTTP_PORT": "9101"},
        "here",
    )
    assert isinstance(settings, PersistenceSettings)
    assert settings.retention_days == 7 and settings.http_port == 9101
