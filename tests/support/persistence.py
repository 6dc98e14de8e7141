"""Running the persistence service in tests, and streams of events to feed it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentstream.consumers.persistence import Store
from agentstream.consumers.persistence.service import SERVICE, PersistenceSettings
from agentstream.consumers.runtime import EventConsumer
from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings
from support.runtime import running_consumer
from support.samples import SAMPLE_DATA

TYPES = sorted(SAMPLE_DATA)


def settings_for(kafka: KafkaSettings, store: str, **overrides: Any) -> PersistenceSettings:
    """Settings on ``kafka``'s broker and topics, tuned for quick tests."""
    fields: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "topic_prefix": kafka.topic_prefix,
        "store": store,
        "linger_ms": 1,
        "commit_interval_ms": 100,
        "batch_max_records": 200,
        "batch_max_wait_ms": 20,
        "store_retry_backoff_ms": 20,
        "store_retry_max_backoff_ms": 200,
    }
    return PersistenceSettings(**{**fields, **overrides})


def stream(count: int, *, sessions: int = 20, prefix: str = "s") -> list[Event]:
    """``count`` events of every type, spread over ``sessions`` sessions, per-session seq."""
    return [
        Event(
            type=TYPES[i % len(TYPES)],
            session_id=f"{prefix}{i % sessions}",
            agent_id=f"agent-{i % 3}",
            seq=i,
            source="pod-1",
            data=dict(SAMPLE_DATA[TYPES[i % len(TYPES)]]),
        )
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def persistence(settings: PersistenceSettings) -> AsyncIterator[tuple[EventConsumer, Store]]:
    consumer = EventConsumer(settings, service=SERVICE.name)
    async with SERVICE.setup(consumer, settings) as store, running_consumer(consumer):
        assert isinstance(store, Store)
        yield consumer, store


def metric(consumer: EventConsumer, name: str) -> float:
    return consumer.registry.get_sample_value(name) or 0.0


async def count_is(store: Store, n: int) -> bool:
    return await store.count() == n


class TcpProxy:
    """A loopback TCP forwarder that a test stops (every connection cut, new ones refused)
    and starts again on the same port: a database that goes away and comes back."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
