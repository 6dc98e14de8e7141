"""EmbeddedBroker: what it says when it cannot start."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.schemas.errors import ConfigurationError


class _ExitsAtOnce(EmbeddedBroker):
    def command(self) -> list[str]:
        return ["false"]  # a broker binary that fails before it listens


async def test_a_broker_process_that_ends_is_reported_at_once_not_after_the_timeout() -> None:
    broker = _ExitsAtOnce()
    broker.start()
    try:
        with pytest.raises(ConfigurationError, match="exited with code 1 before it answered"):
            await asyncio.wait_for(broker.wait_ready(timeout=60), 20)
    finally:
        broker.stop()


def test_a_port_another_program_listens_on_is_refused_before_starting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = EmbeddedBroker(taken.getsockname()[1])
        with pytest.raises(ConfigurationError, match="expected a free port"):
            broker.start()
        assert broker.pid is None
