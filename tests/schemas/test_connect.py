"""What clients say when a broker refuses their settings, against a real embedded broker that
requires SASL (``--authentication``). It has no users (the embedded broker keeps them in its
memory storage and creates them only for an authenticated client), so every credential is
refused, as Apache Kafka refuses a wrong password. The TLS refusal is tested in
``tests/producer/publisher/test_tls.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.runtime import ServiceProcess
from support.samples import sample_event

from agentstream.consumers.broker import EmbeddedBroker, free_port
from agentstream.producer.publisher import KafkaPublisher
from agentstream.schemas.admin import TopicSpec, ensure_topics, wait_for_broker
from agentstream.schemas.connect import UnreachableBrokersError, refusal
from agentstream.schemas.errors import BrokerUnavailableError, ConfigurationError
from agentstream.schemas.settings import KafkaSettings

PASSWORD = "wonderland-7f3a"


def sasl_settings(bootstrap: str, mechanism: str, **extra: Any) -> KafkaSettings:
    """SASL_PLAINTEXT settings as alice (a user the ``sasl_broker`` does not know)."""
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_plain_username="alice",
        sasl_plain_password=PASSWORD,
        **extra,
    )


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_refused_credentials_are_a_configuration_error_at_once(
    sasl_broker: str, mechanism: str
) -> None:
    """Before, a service waited 60 s and then said no broker answered (aiokafka's "Unable to
    bootstrap"), or died of aiokafka's ``KeyError: 'v'`` (SCRAM)."""
    settings = sasl_settings(sasl_broker, mechanism)
    with pytest.raises(ConfigurationError) as refused:  # a wait would end in BrokerUnavailable
        await wait_for_broker(settings.admin_options(), timeout=60)
    text = str(refused.value)
    assert f"the broker at {sasl_broker} refused SASL authentication as 'alice'" in text
    assert f"with {mechanism}" in text and "AGENTSTREAM_SASL_PLAIN_PASSWORD" in text
    assert PASSWORD not in text
    # Every client start says the same (the CLI's topic creation here).
    with pytest.raises(ConfigurationError, match="refused SASL authentication"):
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec())


async def test_a_client_without_sasl_is_told_the_broker_expects_it(sasl_broker: str) -> None:
    settings = KafkaSettings(bootstrap_servers=sasl_broker)
    with pytest.raises(ConfigurationError) as refused:
        await wait_for_broker(settings.admin_options(), timeout=60)
    assert "closed the connection on a request without authentication" in str(refused.value)
    assert "AGENTSTREAM_SECURITY_PROTOCOL=SASL_PLAINTEXT" in str(refused.value)


async def test_nothing_listening_is_an_outage_not_a_refusal() -> None:
    settings = sasl_settings(f"127.0.0.1:{free_port()}", "SCRAM-SHA-512")
    assert await refusal(settings.admin_options()) is None
    assert (
        await refusal(KafkaSettings(bootstrap_servers=settings.bootstrap_servers).admin_options())
        is None
    )


async def test_a_wait_for_a_broker_that_never_answers_ends_at_its_deadline() -> None:
    """Something accepts connections and never answers (a hung broker, a host dropping the
    replies). Before, each attempt and the look at why it failed took their own timeouts
    (2 s and 5 s): a wait of 1 s ended after 7 s."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(BrokerUnavailableError, match="within 1 s"):
            await wait_for_broker({"bootstrap_servers": f"127.0.0.1:{port}"}, timeout=1.0)
        assert loop.time() - started < 3.5
    finally:
        server.close()
        await server.wait_closed()


async def test_a_service_exits_with_the_refusal_in_one_line(
    sasl_broker: str, unique_name: str
) -> None:
    settings = sasl_settings(sasl_broker, "SCRAM-SHA-512", topic_prefix=unique_name)
    env = {
        "AGENTSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "AGENTSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
        "AGENTSTREAM_SASL_PLAIN_USERNAME": "alice",
        "AGENTSTREAM_SASL_PLAIN_PASSWORD": PASSWORD,
    }
    with ServiceProcess("metrics", settings, env=env) as service:
        code = await service.wait(30)
        log = service.log()
    assert code == 2, log
    assert "agentstream: the broker at" in log and "refused SASL authentication" in log
    assert "Traceback" not in log and PASSWORD not in log


async def test_the_publisher_keeps_the_events_and_says_why_it_cannot_deliver(
    sasl_broker: str,
) -> None:
    """A pod does not stop on a refusal (credentials get fixed while it runs): the events
    wait, and ``last_error`` (and the log) say what the broker refused."""
    publisher = KafkaPublisher(sasl_settings(sasl_broker, "SCRAM-SHA-256"), redact=None)
    try:
        publisher.publish(sample_event("tool.called", 1))
        assert not await asyncio.to_thread(publisher.flush, 3)
        error = publisher.last_error or ""
        assert f"cannot connect to Kafka at {sasl_broker} (SASL_PLAINTEXT)" in error
        assert "refused SASL authentication as 'alice' with SCRAM-SHA-256" in error
        assert PASSWORD not in error
        assert publisher.stats().delivered == 0
    finally:
        await asyncio.to_thread(publisher.close, 0.1)


@pytest.fixture
async def misadvertised_broker(broker_factory: type[EmbeddedBroker]) -> str:
    """A broker that answers on its port but advertises a host name nobody can resolve (as a
    broker in a container advertising its container name to clients outside)."""

    class Misadvertised(broker_factory):  # type: ignore[valid-type,misc]
        def command(self) -> list[str]:
            command = super().command()
            command[command.index("--advertised-listener-url") + 1] = "tcp://kafka.invalid:9092"
            return command

    broker = Misadvertised()
    broker.start()
    await broker.wait_listening()
    return f"{broker.host}:{broker.port}"


async def test_a_broker_advertising_an_unreachable_address_is_named(
    misadvertised_broker: str, unique_name: str
) -> None:
    """Before, a wait for the broker ended in "expected a Kafka broker answering metadata
    requests" at the address that did answer, with aiokafka's ``NodeNotReadyError``."""
    settings = KafkaSettings(bootstrap_servers=misadvertised_broker, topic_prefix=unique_name)
    # Waited for (a new broker's name may not resolve yet), then said.
    with pytest.raises(UnreachableBrokersError) as refused:
        await wait_for_broker(settings.admin_options(), timeout=3)
    text = str(refused.value)
    assert f"the broker at {misadvertised_broker} answers, but not one broker" in text
    assert "kafka.invalid:9092" in text and "advertised.listeners" in text
    with pytest.raises(ConfigurationError, match=r"kafka\.invalid:9092"):
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec())
    publisher = KafkaPublisher(settings.model_copy(update={"request_timeout_ms": 2_000}))
    try:
        publisher.publish(sample_event("tool.called", 1))
        assert not await asyncio.to_thread(publisher.flush, 5)
        error = publisher.last_error or ""
        assert "no metadata for topic" in error and "kafka.invalid:9092" in error
    finally:
        await asyncio.to_thread(publisher.close, 0.1)
