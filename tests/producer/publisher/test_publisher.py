"""KafkaPublisher against a real broker: partitions, order, headers, metrics, overflow, errors."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY, CollectorRegistry
from support.samples import sample_event

from agentstream.consumers.broker import EmbeddedBroker, free_port
from agentstream.producer.publisher import KafkaPublisher, producer_kwargs
from agentstream.schemas import Event
from agentstream.schemas.codec import decode_record, header
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.partitioner import partition_for
from agentstream.schemas.settings import KafkaSettings

Consume = Callable[..., Awaitable[list[Any]]]
TYPES = ("tool.called", "tool.result", "llm.token", "message.received", "llm.token")


def events(n: int, sessions: int) -> list[Event]:
    out = []
    for i in range(n):
        event = sample_event(TYPES[i % len(TYPES)], i)
        event.session_id = f"session-{i % sessions:03d}"
        event.source = ""  # the publisher stamps its instance id
        out.append(event)
    return out


def deliver(settings: KafkaSettings, sent: list[Event], **options: Any) -> None:
    """Publish ``sent`` with a publisher of its own, every event acknowledged, then close it."""
    publisher = KafkaPublisher(settings, **options)
    try:
        for event in sent:
            publisher.publish(event)
        assert publisher.flush(30)
    finally:
        publisher.close(5)


def files_in(directory: Path) -> list[Path]:
    """The spool's segments and checkpoint (its lock file stays, see ``spool._lock``)."""
    return [p for p in directory.iterdir() if p.name != "lock"]


def dead_settings(**overrides: object) -> KafkaSettings:
    """Settings pointing at a loopback port nobody listens on."""
    return KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{free_port()}", topic_prefix="nobroker", **overrides
    )


async def test_sessions_keep_their_partition_and_order_with_keys_and_headers(
    kafka_settings: KafkaSettings, consume: Consume
) -> None:
    sent = events(1_000, sessions=25)
    deliver(kafka_settings, sent, redact=None, instance_id="pod-1")
    routing = kafka_settings.routing()
    records = await consume(kafka_settings, routing.events, 600)
    records += await consume(kafka_settings, routing.tokens, 400)
    assert len(records) == 1_000
    by_session: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        event = decode_record(record.value, record.headers)
        assert record.key == event.session_id.encode()
        assert record.partition == partition_for(record.key, 4)
        assert record.topic == routing.topic_for(event.type)
        assert header(record.headers, "ce_id") == event.event_id.encode()
        assert event.source == "pod-1"
        by_session[f"{record.topic}/{event.session_id}"].append(event.seq)
        partitions[event.session_id].add((record.topic, record.partition))
    assert {e.event_id for e in sent} == {
        decode_record(r.value, r.headers).event_id for r in records
    }
    for seqs in by_session.values():
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(len({t for t, _ in tps}) == len(tps) for tps in partitions.values())


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_compression_type_reaches_a_consumer(
    kafka_settings: KafkaSettings, consume: Consume, codec: str
) -> None:
    settings = kafka_settings.model_copy(update={"compression_type": codec})
    sent = [e for e in events(200, sessions=4) if e.type != "llm.token"]  # on events only
    deliver(settings, sent)
    records = await consume(settings, settings.routing().events, len(sent))
    ids = [decode_record(r.value, r.headers).event_id for r in records]
    assert sorted(ids) == sorted(e.event_id for e in sent)


async def test_data_is_redacted_before_it_leaves(
    kafka_settings: KafkaSettings, consume: Consume
) -> None:
    event = sample_event("tool.called", 1)
    event.session_id = "s-redact"
    event.data = {"name": "http", "args": {"api_key": "sk-live-1234567890abcdef"}}
    deliver(kafka_settings, [event])
    (record,) = await consume(kafka_settings, kafka_settings.routing().events, 1)
    assert b"sk-live-1234567890abcdef" not in record.value
    assert event.data["args"]["api_key"] == "sk-live-1234567890abcdef"  # caller's dict intact


async def test_metrics_land_on_the_injected_registry_only(kafka_settings: KafkaSettings) -> None:
    registry = CollectorRegistry()
    publisher = KafkaPublisher(kafka_settings, registry=registry, redact=None)
    try:
        for event in events(20, sessions=3):
            publisher.publish(event)
        assert publisher.flush(30)
    finally:
        publisher.close(5)
    routing = kafka_settings.routing()
    value = registry.get_sample_value
    assert value("agentstream_producer_events_emitted_total") == 20
    delivered = {
        topic: value("agentstream_producer_events_delivered_total", {"topic": topic})
        for topic in (routing.events, routing.tokens)
    }
    assert delivered == {routing.events: 12, routing.tokens: 8}
    assert value("agentstream_producer_delivery_latency_seconds_count") == 20
    assert value("agentstream_producer_delivery_latency_seconds_sum") > 0
    assert value("agentstream_producer_queue_depth") == 0
    assert value("agentstream_producer_events_dropped_total", {"reason": "queue_full"}) == 0
    assert REGISTRY.get_sample_value("agentstream_producer_events_emitted_total") is None


def test_full_memory_without_spool_drops_the_newest_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = KafkaPublisher(dead_settings(), max_queue_events=10, redact=None)
    try:
        slowest = 0.0
        with caplog.at_level(logging.WARNING, logger="agentstream.producer.publisher"):
            for event in events(15, sessions=2):
                start = time.perf_counter()
                publisher.publish(event)
                slowest = max(slowest, time.perf_counter() - start)
        stats = publisher.stats()
        assert stats.emitted == 15
        assert stats.dropped["queue_full"] == 5
        assert stats.in_memory == 10
        assert slowest < 0.25, f"publish() took {slowest * 1000:.1f} ms"  # no network wait
        assert "dropped the newest event (overflow=drop, reason=queue_full)" in caplog.text
        assert not publisher.flush(0.2)
    finally:
        publisher.close(0.1)
    assert publisher.stats().dropped["closed"] == 10  # said at close, not silently lost


def test_memory_is_bounded_in_bytes_too(caplog: pytest.LogCaptureFixture) -> None:
    """Large events (a tool's whole output on Corail's bus) filled memory up to the count
    bound alone: 100,000 events of 100 KB are 10 GB. The bytes bound holds them to
    ``max_queue_bytes`` plus the one record that crossed it, as librdkafka's does."""
    registry = CollectorRegistry()
    publisher = KafkaPublisher(
        dead_settings(), max_queue_bytes=100_000, registry=registry, redact=None
    )
    big = events(30, sessions=3)
    for event in big:
        event.data = {"output": "x" * 10_000}
    try:
        with caplog.at_level(logging.WARNING, logger="agentstream.producer.publisher"):
            for event in big:
                publisher.publish(event)
        stats = publisher.stats()
        assert stats.in_memory_bytes >= 100_000
        assert stats.in_memory_bytes < 100_000 + 11_000  # one event past the bound at most
        assert stats.dropped["queue_full"] == 30 - stats.in_memory > 0
        assert registry.get_sample_value("agentstream_producer_memory_bytes") == (
            stats.in_memory_bytes
        )
        assert "bytes of max_queue_bytes=100000, no spool_dir): dropped the newest" in caplog.text
    finally:
        publisher.close(0.1)


def test_memory_bytes_go_back_to_zero_once_delivered(kafka_settings: KafkaSettings) -> None:
    publisher = KafkaPublisher(kafka_settings, max_queue_bytes=50_000, redact=None)
    big = events(40, sessions=4)
    for event in big:
        event.data = {"output": "y" * 5_000}
    try:
        for event in big:  # past the bound: publish() makes room as acknowledgements come
            publisher.publish(event)
        assert publisher.flush(30)
        stats = publisher.stats()
        assert stats.in_memory_bytes == 0
        assert stats.delivered + stats.dropped["queue_full"] == 40
    finally:
        publisher.close(5)


def test_block_policy_waits_for_room_then_drops() -> None:
    publisher = KafkaPublisher(
        dead_settings(), max_queue_events=3, overflow="block", block_timeout_ms=300, redact=None
    )
    try:
        for event in events(3, sessions=1):
            publisher.publish(event)
        start = time.monotonic()
        publisher.publish(events(1, sessions=1)[0])
        waited = time.monotonic() - start
        assert 0.25 <= waited < 3
        assert publisher.stats().dropped["block_timeout"] == 1
    finally:
        publisher.close(0.1)


def test_block_policy_gets_room_as_the_broker_acknowledges(kafka_settings: KafkaSettings) -> None:
    publisher = KafkaPublisher(
        kafka_settings, max_queue_events=2, overflow="block", block_timeout_ms=10_000, redact=None
    )
    try:
        for event in events(60, sessions=4):
            publisher.publish(event)
        assert publisher.flush(30)
        stats = publisher.stats()
        assert stats.delivered == 60 and sum(stats.dropped.values()) == 0
    finally:
        publisher.close(5)


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    publisher = KafkaPublisher(
        dead_settings(),
        spool_dir=tmp_path,
        spool_max_bytes=8192,
        max_queue_events=20,
        redact=None,
    )
    try:
        for event in events(300, sessions=5):
            publisher.publish(event)
        deadline = time.monotonic() + 10
        while publisher.stats().spooled == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        for event in events(100, sessions=5):
            publisher.publish(event)
        stats = publisher.stats()
        assert stats.spooled > 0
        assert stats.dropped["spool_full"] > 0
        assert stats.spool_bytes <= 8192
        assert stats.emitted == 400
        assert stats.spooled + stats.dropped["spool_full"] + stats.in_memory == 400
    finally:
        publisher.close(0.1)


def test_undeliverable_input_is_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    publisher = KafkaPublisher(dead_settings(max_request_size=2_000), redact=None)
    try:
        big = sample_event("tool.result", 1)
        big.data = {"name": "read", "output": "x" * 5_000}
        weird = sample_event("tool.result", 2)
        weird.data = {"name": "read", "output": object()}
        with caplog.at_level(logging.WARNING, logger="agentstream.producer.publisher"):
            publisher.publish(big)
            publisher.publish(weird)
        stats = publisher.stats()
        assert stats.dropped["too_large"] == 1 and stats.dropped["unencodable"] == 0
        assert stats.in_memory == 1  # the object is sent as its str() (test_bad_envelopes)
        assert big.event_id in caplog.text and "max_request_size" in caplog.text
        assert f"event {weird.event_id} of type tool.result" in caplog.text
    finally:
        publisher.close(0.1)


def test_idempotence_is_passed_through_and_refused_clearly_without_init_producer_id(
    kafka_settings: KafkaSettings, broker_kind: str
) -> None:
    settings = kafka_settings.model_copy(update={"enable_idempotence": True})
    assert producer_kwargs(settings)["enable_idempotence"] is True
    publisher = KafkaPublisher(settings, redact=None)
    try:
        publisher.publish(events(1, sessions=1)[0])
        if broker_kind != "embedded":  # Apache Kafka: idempotent delivery works
            assert publisher.flush(30)
            return
        with pytest.raises(ConfigurationError, match="rejected InitProducerId"):
            publisher.flush(30)
        with pytest.raises(ConfigurationError, match="ENABLE_IDEMPOTENCE=false"):
            publisher.publish(events(1, sessions=1)[0])
    finally:
        publisher.close(1)


def test_options_the_client_refuses_fail_the_publisher_at_once(tmp_path: Path) -> None:
    unreadable = KafkaSettings(security_protocol="SSL", ssl_cafile=str(tmp_path / "none.pem"))
    with pytest.raises(ConfigurationError, match="expected ssl_cafile"):
        KafkaPublisher(unreadable)


def test_a_producer_the_client_cannot_build_stops_the_publisher_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever aiokafka's constructor refuses ends the sender's connecting for good, said by
    flush and publish (before, the connecting task died silently and flush only timed out)."""

    def refuse(**options: Any) -> None:
        raise ValueError("sasl_plain_username and sasl_plain_password required for PLAIN sasl")

    monkeypatch.setattr("agentstream.producer._sender.AIOKafkaProducer", refuse)
    publisher = KafkaPublisher(dead_settings(), redact=None)
    reason = "cannot create the Kafka producer: ValueError: sasl_plain_username"

    def publish_and_flush() -> None:  # whichever of the two comes after the failure raises
        publisher.publish(events(1, sessions=1)[0])
        publisher.flush(10)

    try:
        with pytest.raises(ConfigurationError, match=reason):
            publish_and_flush()
        with pytest.raises(ConfigurationError, match=reason):
            publisher.publish(events(1, sessions=1)[0])
    finally:
        publisher.close(1)


async def test_sasl_and_tls_settings_reach_the_aiokafka_producer(tls_files: Any) -> None:
    ca = tls_files.ca
    settings = KafkaSettings(
        bootstrap_servers="kafka.example:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="agent",
        sasl_plain_password="s3cret",  # type: ignore[arg-type]
        ssl_cafile=str(ca),
        compression_type="gzip",
    )
    kwargs = producer_kwargs(settings)
    assert kwargs["sasl_plain_password"] == "s3cret"
    producer = AIOKafkaProducer(**kwargs)
    try:
        client = producer.client
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "agent"
        assert client._sasl_plain_password == "s3cret"
        assert client._ssl_context is not None
        assert producer._compression_type == "gzip"
        assert kwargs["acks"] == "all"
    finally:
        await producer.stop()
    for protocol, mechanism in (("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256")):
        plain = KafkaSettings(
            security_protocol=protocol,  # type: ignore[arg-type]
            sasl_mechanism=mechanism,  # type: ignore[arg-type]
            sasl_plain_username="u",
            sasl_plain_password="p",  # type: ignore[arg-type]
        )
        kwargs = producer_kwargs(plain)
        assert kwargs["sasl_mechanism"] == mechanism and "ssl_context" not in kwargs
    assert "sasl_mechanism" not in producer_kwargs(KafkaSettings(security_protocol="SSL"))


async def test_spooled_events_are_delivered_in_order_once_a_broker_answers(
    tmp_path: Path,
    broker_factory: type[EmbeddedBroker],
    tcp_proxy: Callable[[int, int], Any],
    create_topics: Callable[[int, list[str], int], Awaitable[None]],
    consume: Consume,
) -> None:
    address = free_port()
    settings = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{address}", topic_prefix="late", linger_ms=1
    )
    sent = [e for e in events(300, sessions=7) if e.type != "llm.token"]
    publisher = KafkaPublisher(settings, spool_dir=tmp_path, redact=None)
    try:
        for event in sent:
            publisher.publish(event)
        deadline = time.monotonic() + 10
        while publisher.stats().spooled < len(sent) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert publisher.stats().spooled == len(sent)
        # The broker answers on the publisher's address only once its topics exist: the
        # embedded broker takes records for a topic it does not have yet, auto-created with
        # its own partition count (see test_outage.py).
        broker = broker_factory(advertised_port=address)
        broker.start()
        await create_topics(broker.port, settings.routing().all_topics(), 3)
        tcp_proxy(address, broker.port)
        assert publisher.flush(30)
        assert publisher.stats().queue_depth == 0
    finally:
        publisher.close(5)
    records = await consume(settings, settings.routing().events, len(sent))
    got = [decode_record(r.value, r.headers) for r in records]
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in sent)
    per_session: dict[str, list[int]] = defaultdict(list)
    for record, event in zip(records, got, strict=True):
        assert record.partition == partition_for(event.session_id.encode(), 3)
        per_session[event.session_id].append(event.seq)
    assert all(seqs == sorted(seqs) for seqs in per_session.values())
    assert files_in(tmp_path) == []  # everything acknowledged: nothing left on disk


def test_flush_after_close_answers_at_once() -> None:
    publisher = KafkaPublisher(dead_settings(), redact=None)
    publisher.publish(events(1, sessions=1)[0])
    publisher.close(0.1)
    publisher.close(0.1)  # idempotent
    start = time.monotonic()
    # given up for good (dropped, counted) as flush() says: nothing pending, and out of the
    # in-memory figures (they kept it, and flush() was False for good)
    assert publisher.flush() is True
    assert time.monotonic() - start < 1
    assert publisher.stats().in_memory == 0 and publisher.stats().in_memory_bytes == 0
    publisher.publish(events(1, sessions=1)[0])  # after close: counted, not raised
    assert publisher.stats().dropped["closed"] == 2


def test_an_event_larger_than_the_whole_spool_is_dropped_not_stuck(tmp_path: Path) -> None:
    publisher = KafkaPublisher(dead_settings(), spool_dir=tmp_path, spool_max_bytes=256)
    try:
        publisher.publish(events(1, sessions=1)[0])
        assert publisher.flush(5)  # given up for good, so nothing is pending
        stats = publisher.stats()
        assert stats.dropped["spool_full"] == 1 and stats.in_memory == 0
        assert stats.spooled == 0
    finally:
        publisher.close(0.1)


def test_publishers_sharing_a_spool_dir_each_take_a_slot_until_none_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agentstream.producer.spool.MAX_SLOTS", 2)
    first = KafkaPublisher(dead_settings(), spool_dir=tmp_path, redact=None)
    second = KafkaPublisher(dead_settings(), spool_dir=tmp_path, redact=None)
    try:
        assert second._spool is not None and second._spool.directory == tmp_path / "process-1"
        with pytest.raises(ConfigurationError, match=r"expected a free slot in the spool"):
            KafkaPublisher(dead_settings(), spool_dir=tmp_path, redact=None)
        first.publish(events(1, sessions=1)[0])  # the others are untouched
        assert first.stats().emitted == 1
    finally:
        first.close(0.1)
        second.close(0.1)
    again = KafkaPublisher(dead_settings(), spool_dir=tmp_path, redact=None)  # free again
    assert again._spool is not None and again._spool.directory == tmp_path
    again.close(0.1)


async def test_close_sends_the_batch_its_last_step_hands_out(
    kafka_settings: KafkaSettings, consume: Consume, caplog: pytest.LogCaptureFixture
) -> None:
    """Events waiting out the linger (one batch) when close(0) comes: the last step hands it
    out, and the shutdown took the producer away before that send ran (an AssertionError in
    it, 'Task exception was never retrieved', and the events dropped on a healthy broker)."""
    publisher = KafkaPublisher(kafka_settings.model_copy(update={"linger_ms": 2_000}), redact=None)
    sent = [Event(type="tool.called", session_id="s-1", data={"name": f"t{i}"}) for i in range(20)]
    try:
        publisher.publish(sent[0])
        assert await asyncio.to_thread(publisher.flush, 20)  # connected, metadata known
        for event in sent[1:]:
            publisher.publish(event)
        await asyncio.sleep(0.3)  # in their lanes, lingering
    finally:
        await asyncio.to_thread(publisher.close, 0)
    stats = publisher.stats()
    assert stats.delivered == 20 and not any(stats.dropped.values()), stats
    records = await consume(kafka_settings, kafka_settings.routing().events, 20)
    assert sorted(decode_record(r.value, r.headers).event_id for r in records) == sorted(
        e.event_id for e in sent
    )
    assert "AssertionError" not in caplog.text and "never retrieved" not in caplog.text


def test_a_flush_without_timeout_in_another_thread_returns_when_close_spools(
    tmp_path: Path,
) -> None:
    """The broker is down and close() spools what is left: a flush() waiting in another thread
    with no timeout waited for good (spooled events are not finished in this process)."""
    publisher = KafkaPublisher(dead_settings(), redact=None, spool_dir=tmp_path)
    for event in events(20, sessions=2):
        publisher.publish(event)
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(publisher.flush()), daemon=True)
    waiter.start()
    time.sleep(0.2)  # waiting
    publisher.close(0.5)
    waiter.join(15)
    assert outcome == [False]  # answered: the events are in the spool, not delivered
    assert publisher.stats().spooled == 20
