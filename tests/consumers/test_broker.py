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


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("nosuch.invalid", "expected a host name or address to listen on, got 'nosuch.invalid'"),
        ("192.0.2.1", "expected an address of this machine to listen on, got '192.0.2.1'"),
    ],
)
def test_a_host_to_listen_on_that_is_wrong_is_said_so_not_a_taken_port(
    host: str, expected: str
) -> None:
    """Both were reported as "the port is taken"."""
    with pytest.raises(ConfigurationError, match=expected):  # a free port on that host
        EmbeddedBroker(host=host)
    broker = EmbeddedBroker(19_999, host=host)
    with pytest.raises(ConfigurationError, match=expected):
        broker.start()
    assert broker.pid is None


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_is_refused_with_the_reason(host: str) -> None:
    """It failed as "Address family for hostname not supported", or the broker exited with
    code 2 (unbracketed), or its clients could not resolve the address it advertised."""
    with pytest.raises(ConfigurationError, match="cannot advertise an IPv6 address"):
        EmbeddedBroker(host=host)
