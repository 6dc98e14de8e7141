"""Fixtures of the fault-injection suite."""

from __future__ import annotations

import pytest
from support.chaos import FAST_GROUP_ENV


@pytest.fixture
def group_env(broker_kind: str) -> dict[str, str]:
    """Environment for service processes so a killed member is noticed quickly: a 2 s session
    on the embedded broker; Apache Kafka refuses sessions under its
    ``group.min.session.timeout.ms`` (6 s by default), so 6 s there."""
    if broker_kind == "embedded":
        return FAST_GROUP_ENV
    return {"AGENTSTREAM_SESSION_TIMEOUT_MS": "6000", "AGENTSTREAM_HEARTBEAT_INTERVAL_MS": "1000"}
