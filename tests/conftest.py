"""Fixtures for every test: a real broker for the session, and per-test topics and groups."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest
from support.kafka import real_broker
from support.tls import TlsFiles, make_tls_files

from agentstream.consumers.broker import EmbeddedBroker
from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.settings import KafkaSettings


@pytest.fixture(scope="session")
def broker_kind_and_bootstrap() -> Iterator[tuple[str, str]]:
    with real_broker() as (bootstrap, kind):
        yield kind, bootstrap


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_kind_and_bootstrap: tuple[str, str]) -> str:
    """Bootstrap address of the session's real broker."""
    return broker_kind_and_bootstrap[1]


@pytest.fixture(scope="session")
def broker_kind(broker_kind_and_bootstrap: tuple[str, str]) -> str:
    """``external``, ``testcontainers`` or ``embedded`` (some Kafka features differ)."""
    return broker_kind_and_bootstrap[0]


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses (for topic prefixes and consumer groups)."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def kafka_settings(kafka_bootstrap: str, unique_name: str) -> KafkaSettings:
    """Settings pointing at the session broker, with this test's own freshly created topics."""
    settings = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=unique_name, linger_ms=1
    )
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
    return settings


@pytest.fixture
def broker_factory() -> Iterator[type[EmbeddedBroker]]:
    """Start private embedded brokers (for outage tests); all are stopped at teardown."""
    started: list[EmbeddedBroker] = []

    class _Tracked(EmbeddedBroker):
        def start(self) -> None:
            super().start()
            started.append(self)

    yield _Tracked
    for broker in started:
        broker.stop()


@pytest.fixture
async def sasl_broker(broker_factory: type[EmbeddedBroker]) -> str:
    """Bootstrap address of a private embedded broker that requires SASL authentication and
    knows no user (so it refuses every login, as Kafka refuses a wrong password),
    once it listens (``broker_factory`` stops it)."""

    class Authenticating(broker_factory):  # type: ignore[valid-type,misc]
        def command(self) -> list[str]:
            return [*super().command(), "--authentication"]

    broker = Authenticating()
    broker.start()
    await broker.wait_listening()
    return str(broker.bootstrap_servers)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    return make_tls_files(tmp_path_factory.mktemp("tls"))
