"""A loopback TCP proxy that tests stop and start again on the same port: a broker or a
database whose address goes dark (every connection cut, new ones refused) and comes back."""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target`` from its own thread and event loop,
    so synchronous and asynchronous tests alike can use it, optionally delaying every chunk by
    ``delay`` s. ``port=0`` takes a free port at the first ``start()`` and keeps it for the next
    ones. ``stop()`` closes the listener and cuts every connection; ``start()`` listens again."""

    def __init__(
        self, port: int, target: int, *, target_host: str = "127.0.0.1", delay: float = 0.0
    ) -> None:
        self.port = port
        self.target = (target_host, target)
        self.delay = delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._error: BaseException | None = None

    def start(self) -> TcpProxy:
        """Listen on ``port`` (a no-op when already listening); returns the proxy."""
        if self._thread is not None:
            return self
        started = threading.Event()
        self._error = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(started)), name="tcp-proxy", daemon=True
        )
        self._thread.start()
        if not started.wait(10) or self._error is not None:
            self._thread.join(10)
            self._loop = self._thread = None
            raise RuntimeError(f"proxy on port {self.port} did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Close the listener and every connection (a no-op when stopped)."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._loop = self._thread = None

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    async def _serve(self, started: threading.Event) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = server.sockets[0].getsockname()[1]
        except OSError as exc:
            self._error = exc
            started.set()
            return
        started.set()
        await self._stop.wait()
        server.close()
        # Connections accepted in the same round as the stop have a handler that has not run
        # yet: let it run to its first await, which tracks its writer, then close them all
        # (otherwise the loop's end cancels it first and its socket is left to the garbage
        # collector: a ResourceWarning in a later test).
        await asyncio.sleep(0)
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Tracked from the start: a connection accepted while stop() runs, still waiting for
        # its upstream, is closed too (it was left to the garbage collector: a ResourceWarning).
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer),
                self._pipe(up_reader, writer),
                return_exceptions=True,
            )
        except OSError:
            pass
        finally:
            for each in (writer, up_writer):
                if each is not None:
                    self._writers.discard(each)
                    if not each.transport.is_closing():  # a closing one flushes what it has
                        each.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65_536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
