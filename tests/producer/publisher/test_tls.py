"""TLS for real: stunnel terminates TLS on loopback in front of the embedded broker, which
advertises the TLS port. The publisher verifies the self-signed chain and delivers; a publisher
trusting another CA is refused, with an error that says why."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from support.samples import sample_event

from agentstream.consumers.broker import EmbeddedBroker, free_port
from agentstream.producer.publisher import KafkaPublisher
from agentstream.schemas.admin import TopicSpec, ensure_topics, start_client, wait_for_broker
from agentstream.schemas.codec import decode_record
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")


@pytest.fixture
def tls_broker(
    tmp_path: Path, broker_factory: type[EmbeddedBroker], tls_files: Any
) -> Iterator[str]:
    """Bootstrap address of a TLS endpoint (stunnel) in front of a private embedded broker."""
    if STUNNEL is None:
        pytest.skip("stunnel4 is not installed (the Makefile's APT_PACKAGES lists it)")
    tls_port = free_port()
    broker = broker_factory(advertised_port=tls_port)
    broker.start()
    config = tmp_path / "stunnel.conf"
    config.write_text(
        "foreground = yes\npid =\n"
        f"[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{broker.port}\n"
        f"cert = {tls_files.cert}\nkey = {tls_files.key}\n"
    )
    stunnel = subprocess.Popen(
        [STUNNEL, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield f"127.0.0.1:{tls_port}"
    finally:
        stunnel.terminate()
        stunnel.wait(10)


def tls_settings(bootstrap: str, cafile: Path, prefix: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        security_protocol="SSL",
        ssl_cafile=str(cafile),
        topic_prefix=prefix,
        linger_ms=1,
    )


async def test_publisher_verifies_the_broker_certificate_and_delivers(
    tls_broker: str,
    tls_files: Any,
    unique_name: str,
    consume: Callable[..., Awaitable[list[Any]]],
) -> None:
    settings = tls_settings(tls_broker, tls_files.ca, unique_name)
    await wait_for_broker(settings.admin_options(), timeout=30)  # a metadata request over TLS
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=2))
    sent = []
    publisher = KafkaPublisher(settings, redact=None)
    try:
        for i in range(30):
            event = sample_event("tool.called", i)
            event.session_id = f"tls-{i % 4}"
            publisher.publish(event)
            sent.append(event.event_id)
        assert await asyncio.to_thread(publisher.flush, 30)
    finally:
        await asyncio.to_thread(publisher.close, 5)
    records = await consume(settings, settings.routing().events, 30)
    assert sorted(decode_record(r.value, r.headers).event_id for r in records) == sorted(sent)


async def test_a_publisher_trusting_another_ca_is_refused_with_a_clear_error(
    tls_broker: str, tls_files: Any, unique_name: str
) -> None:
    good = tls_settings(tls_broker, tls_files.ca, unique_name)
    await wait_for_broker(good.admin_options(), timeout=30)  # the endpoint itself works
    settings = tls_settings(tls_broker, tls_files.other_ca, unique_name)
    publisher = KafkaPublisher(settings, redact=None)
    try:
        publisher.publish(sample_event("tool.called", 1))
        assert not await asyncio.to_thread(publisher.flush, 3)
        error = publisher.last_error or ""
        assert "CERTIFICATE_VERIFY_FAILED" in error
        assert f"cannot connect to Kafka at {tls_broker} (SSL)" in error
        assert "check ssl_cafile" in error and str(tls_files.other_ca) in error
        assert publisher.stats().delivered == 0
    finally:
        await asyncio.to_thread(publisher.close, 0.1)


async def test_a_service_trusting_another_ca_is_told_at_once_not_left_waiting(
    tls_broker: str, tls_files: Any, unique_name: str
) -> None:
    """A service's first wait for the broker: before, 60 s, then "none answered"."""
    good = tls_settings(tls_broker, tls_files.ca, unique_name)
    await wait_for_broker(good.admin_options(), timeout=30)
    settings = tls_settings(tls_broker, tls_files.other_ca, unique_name)
    with pytest.raises(ConfigurationError) as refused:
        await wait_for_broker(settings.admin_options(), timeout=60)
    text = str(refused.value)
    assert f"the TLS handshake with {tls_broker} failed" in text
    assert "CERTIFICATE_VERIFY_FAILED" in text
    # Without the path at hand (options only), the CA the client trusted is named.
    assert "AGENTSTREAM_SSL_CAFILE=a file with the CAs agentstream test other CA" in text


async def test_a_client_without_tls_at_a_tls_listener_is_told_so(
    tls_broker: str, tls_files: Any, unique_name: str
) -> None:
    """Before, "no broker answers" after the whole wait: the TLS endpoint closes the
    connection on a plaintext request."""
    await wait_for_broker(tls_settings(tls_broker, tls_files.ca, unique_name).admin_options())
    plain = KafkaSettings(bootstrap_servers=tls_broker)
    with pytest.raises(ConfigurationError) as refused:
        await wait_for_broker(plain.admin_options(), timeout=60)
    text = str(refused.value)
    assert f"the endpoint at {tls_broker} speaks TLS" in text
    assert "AGENTSTREAM_SECURITY_PROTOCOL=SSL" in text


async def test_a_tls_client_at_a_plaintext_listener_is_told_so(
    kafka_settings: KafkaSettings, tls_files: Any, unique_name: str
) -> None:
    """Apache Kafka closes the connection on a TLS handshake; the embedded broker waits for
    the rest of what it takes for a request. Either way the handshake never ends."""
    settings = tls_settings(kafka_settings.bootstrap_servers, tls_files.ca, unique_name)
    with pytest.raises(ConfigurationError) as refused:
        await wait_for_broker(settings.admin_options(), timeout=60)
    text = str(refused.value)
    assert f"the endpoint at {kafka_settings.bootstrap_servers} speaks Kafka without TLS" in text
    assert "AGENTSTREAM_SECURITY_PROTOCOL=PLAINTEXT" in text


async def test_a_tls_client_started_at_a_plaintext_listener_is_told_so_in_seconds(
    kafka_settings: KafkaSettings, tls_files: Any, unique_name: str
) -> None:
    """Commands that start a client without waiting for the broker first (`tail`, `dlq`) said
    it after aiokafka's whole request timeout (45 s), not at once."""
    settings = tls_settings(kafka_settings.bootstrap_servers, tls_files.ca, unique_name)
    # aiokafka's start() would wait this long: past the test's timeout
    settings = settings.model_copy(update={"request_timeout_ms": 3_600_000})
    consumer = AIOKafkaConsumer(**settings.consumer_options())
    with pytest.raises(ConfigurationError, match="speaks Kafka without TLS"):
        await start_client(consumer, settings.client_options())
