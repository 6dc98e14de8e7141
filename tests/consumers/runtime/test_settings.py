"""ServiceSettings: the bounds every service inherits, its own defaults included."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentstream.consumers.runtime.runner import import_services
from agentstream.consumers.runtime.settings import ServiceSettings


def _service_classes() -> list[type[ServiceSettings]]:
    import_services()
    found, pending = [], [ServiceSettings]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("agentstream."):  # not the tests' own subclasses
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("port", [-1, 65_536, 70_000])
def test_every_service_refuses_an_http_port_out_of_range(port: int) -> None:
    classes = _service_classes()
    assert {c.__name__ for c in classes} >= {"TracingSettings", "MetricsSettings"}
    for cls in classes:
        assert 0 <= cls().http_port <= 65_535
        with pytest.raises(ValidationError, match="http_port"):
            cls(http_port=port)


def test_a_negative_drain_timeout_is_refused() -> None:
    with pytest.raises(ValidationError, match="drain_timeout_ms"):
        ServiceSettings(drain_timeout_ms=-1)
