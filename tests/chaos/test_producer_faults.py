"""Faults under the producer: a broker outage during steady load (spool, then delivery, with the
persistence service consuming through the same outage) and a full spool disk (drop policy: the
loss is counted by ``agentstream_producer_events_dropped_total``, never silent)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from support.chaos import FAST_GROUP_ENV, Figures, Row, read_all, size, sqlite_rows
from support.chaos import traffic as make_traffic
from support.proxy import TcpProxy
from support.runtime import ServiceProcess, wait_until

from agentstream.consumers.broker import EmbeddedBroker, free_port
from agentstream.producer.publisher import SENDER_THREAD_PREFIX, KafkaPublisher
from agentstream.schemas import decode_record
from agentstream.schemas.admin import TopicSpec, ensure_topics
from agentstream.schemas.settings import KafkaSettings

OUTAGE_SECONDS = size(2, 10)
RATE = size(300, 1_000)  # events/s offered during the whole run


def dropped(registry: CollectorRegistry) -> float:
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "agentstream_producer_events_dropped"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


async def test_broker_outage_during_steady_load_loses_nothing(
    tmp_path: Path, broker_factory: type[EmbeddedBroker]
) -> None:
    # Every client reaches the broker through a forwarder on the advertised address; the outage
    # closes it and every connection (the embedded broker would come back empty if restarted).
    figures = Figures(
        "broker-outage",
        f"Broker unreachable for {OUTAGE_SECONDS} s during steady load ({RATE} events/s)",
        "nothing lost: the producer spools to disk and delivers in order; services resume",
    )
    address = free_port()
    broker = broker_factory(advertised_port=address)
    broker.start()
    forwarder = TcpProxy(address, broker.port).start()
    publisher: KafkaPublisher | None = None
    publisher_errors = [0]

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR and record.threadName.startswith(
                SENDER_THREAD_PREFIX
            ):
                publisher_errors[0] += 1

    counting = Count()
    logging.getLogger("aiokafka").addHandler(counting)
    try:
        await broker.wait_ready()
        settings = KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers, topic_prefix="chaos-outage", linger_ms=1
        )
        await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
        registry = CollectorRegistry()
        publisher = KafkaPublisher(
            settings, spool_dir=tmp_path / "spool", registry=registry, redact=None
        )
        events = make_traffic(size(10, 150)).events
        db = tmp_path / "store.db"
        with ServiceProcess(
            "persistence", settings, "--store", f"sqlite:///{db}", env=FAST_GROUP_ENV
        ) as service:
            await service.wait_ready()
            per_tick = max(1, RATE // 100)
            started = time.monotonic()
            outage = (len(events) / RATE - OUTAGE_SECONDS) / 2  # the outage sits mid-stream
            down = False
            slowest = 0.0
            for i in range(0, len(events), per_tick):
                elapsed = time.monotonic() - started
                if not down and elapsed >= outage:
                    forwarder.stop()
                    down, cut_at = True, time.monotonic()
                if down and forwarder is not None and time.monotonic() - cut_at >= OUTAGE_SECONDS:
                    forwarder = TcpProxy(address, broker.port).start()
                    down = False
                    cut_at = float("inf")
                for event in events[i : i + per_tick]:
                    t = time.perf_counter()
                    publisher.publish(event)
                    slowest = max(slowest, time.perf_counter() - t)
                await asyncio.sleep(max(0.0, started + (i + per_tick) / RATE - time.monotonic()))
            if down:
                forwarder = TcpProxy(address, broker.port).start()
            assert await asyncio.to_thread(publisher.flush, 60), publisher.stats()
            stats = publisher.stats()
            sent_ids = {e.event_id for e in events}
            await wait_until(
                lambda: (
                    len(sent_ids & {r[0] for r in sqlite_rows(db)}) == len(sent_ids)
                    if db.exists()
                    else False
                ),
                timeout=60,
                what="every event stored",
            )
            service_client_errors = service.log().count(" ERROR aiokafka")
            await service.stop()
        rows = sqlite_rows(db)
        ids = [r[0] for r in rows]
        on_topic = [
            decode_record(r.value, r.headers).event_id
            for r in await read_all(settings, settings.routing().events)
        ]
    finally:
        logging.getLogger("aiokafka").removeHandler(counting)
        if publisher is not None:
            await asyncio.to_thread(publisher.close, 5)
        forwarder.stop()
    figures.rows.append(
        Row("producer → Kafka", len(events), stored=len(set(on_topic) & sent_ids),
            lost=len(sent_ids - set(on_topic)), duplicated=len(on_topic) - len(set(on_topic)),
            note=f"{stats.spooled} events went through the disk spool; "
                 f"slowest publish() {slowest * 1000:.1f} ms")
    )  # fmt: skip
    figures.rows.append(
        Row("persistence service", len(events), stored=len(set(ids) & sent_ids),
            lost=len(sent_ids - set(ids)), duplicated=len(ids) - len(set(ids)))
    )  # fmt: skip
    figures.details = {
        "dropped": dropped(registry),
        "spooled": stats.spooled,
        "aiokafka ERROR lines (service, publisher)": (service_client_errors, publisher_errors[0]),
    }
    figures.write()
    # aiokafka logs each reconnect attempt: about 50 lines a second per process unheld.
    assert service_client_errors <= 40 and publisher_errors[0] <= 40, figures.details
    assert stats.spooled > 0, "the outage should have gone through the spool"
    assert dropped(registry) == 0
    assert sent_ids <= set(on_topic) and sent_ids <= set(ids)
    assert len(ids) == len(set(ids))


async def test_full_spool_disk_counts_every_drop(
    tmp_path: Path, broker_factory: type[EmbeddedBroker]
) -> None:
    figures = Figures(
        "spool-full",
        "Broker unreachable, spool disk full (64 KiB, drop policy)",
        "no promise of delivery beyond the spool: every drop is counted "
        "(agentstream_producer_events_dropped_total) and logged, never silent",
    )
    address = free_port()
    broker = broker_factory(advertised_port=address)
    broker.start()
    forwarder = TcpProxy(address, broker.port).start()
    await broker.wait_ready()
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers, topic_prefix="chaos-spool", linger_ms=1
    )
    await ensure_topics(settings.admin_options(), settings.routing(), TopicSpec(partitions=4))
    forwarder.stop()  # the broker's address goes dark before the first event
    registry = CollectorRegistry()
    events = make_traffic(size(40, 200)).events
    publisher = KafkaPublisher(
        settings,
        spool_dir=tmp_path / "spool",
        spool_max_bytes=64 * 1024,  # a tiny disk
        max_queue_events=100,
        overflow="drop",
        registry=registry,
        redact=None,
    )
    try:
        for event in events:  # nobody answers on the address: memory, then spool, then drops
            publisher.publish(event)
        lost = dropped(registry)
        forwarder = TcpProxy(address, broker.port).start()
        assert await asyncio.to_thread(publisher.flush, 60), publisher.stats()
        stats = publisher.stats()
        records = await read_all(settings, settings.routing().events)
    finally:
        await asyncio.to_thread(publisher.close, 5)
        forwarder.stop()
    delivered = [decode_record(r.value, r.headers).event_id for r in records]
    sent_ids = {e.event_id for e in events}
    figures.rows.append(
        Row("producer → Kafka", len(events), stored=len(set(delivered) & sent_ids),
            lost=len(sent_ids - set(delivered)), duplicated=len(delivered) - len(set(delivered)),
            lost_counted=int(dropped(registry)),
            note=f"dropped and counted: {dropped(registry):.0f} ({dict(stats.dropped)})")
    )  # fmt: skip
    figures.details = {"dropped_counter": dropped(registry), "spooled": stats.spooled}
    figures.write()
    assert lost > 0, "the tiny spool should have overflowed"
    assert dropped(registry) == lost
    assert len(sent_ids - set(delivered)) == lost  # every loss counted, none silent
