"""One small HTTP server per service process: ``/metrics``, ``/healthz``, ``/readyz``.

Plain asyncio (no extra dependency); each request is answered and the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("agentstream.consumers.runtime.http")


def http_url_problem(url: str, *, secret: bool = False) -> str | None:
    """What is wrong with ``url`` as the address of an HTTP endpoint we POST to (an OTLP
    collector, a webhook), or None: it needs an http or https scheme and a host. With
    ``secret`` the message shows the URL as :func:`url_shown` does, else as
    :func:`endpoint_shown` does."""
    shown = url_shown(url) if secret else endpoint_shown(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"expected an http:// or https:// URL, got {shown!r} ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL with a host, got {shown!r}"
    return None


def url_shown(url: str) -> str:
    """A URL that is a credential (a Slack, Teams or Discord webhook: its path is the token)
    as messages show it: scheme and host, the rest as ``…``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if not parts.scheme or not parts.netloc:  # no URL: what would be its host, at most
        head, slash, _ = url.partition("/")
        head = head.rpartition("@")[2]
        return f"{head}/…" if slash else head
    host = parts.netloc.rpartition("@")[2]
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{rest}"


def endpoint_shown(url: str) -> str:
    """An endpoint's URL (an OTLP collector's) as messages show it: without the credentials a
    URL may carry (``user:password@``, the query string, the fragment); its path is kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if not parts.scheme or not parts.netloc:
        return url_shown(url)
    host = parts.netloc.rpartition("@")[2]
    rest = "?…" if (parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{parts.path}{rest}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the default error handler then raises HTTPError with the 3xx status


_POSTER = urllib.request.build_opener(_NoRedirects)


def poster(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """What :func:`post` posts with: redirects not followed, and ``context`` for https (a CA
    bundle, a client certificate; None: the system's trust store)."""
    if context is None:
        return _POSTER
    return urllib.request.build_opener(_NoRedirects, urllib.request.HTTPSHandler(context=context))


def post(
    request: urllib.request.Request,
    timeout_s: float,
    opener: urllib.request.OpenerDirector = _POSTER,
) -> tuple[int, bytes]:
    """POST ``request``: status and body of a 2xx answer. Like ``urlopen`` except for
    redirects, which raise ``HTTPError`` like any other non-2xx answer: urllib follows a 301,
    302 or 303 with a GET without the body, and a 200 to that GET would pass for a delivery
    (an ingress sending http to https does this)."""
    with opener.open(request, timeout=timeout_s) as response:
        return response.status, response.read()


def redirect_hint(exc: BaseException, *, secret: bool = False) -> str:
    """For a redirect (an ``HTTPError`` with a 3xx status): where to, and that the URL must
    be changed; else ''. With ``secret`` the new address is shown as :func:`url_shown` does
    (a redirect from http to https keeps the token in the path)."""
    if not isinstance(exc, urllib.error.HTTPError) or not 300 <= exc.code < 400:
        return ""
    location = exc.headers.get("Location") if exc.headers else None
    if location and secret:
        location = url_shown(location)
    return (
        f" (a redirect to {location or 'an address not given'}: a POST is not re-sent on a "
        "redirect, set the URL to the final address)"
    )


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class ServiceHTTPServer:
    """``/metrics`` (Prometheus text of ``registry``), ``/healthz`` (200 while ``healthy()``),
    ``/readyz`` (200 once ``ready()``, 503 before)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        request_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self._port = port
        self._request_timeout = request_timeout_s
        self._registry = registry
        self._healthy = healthy
        self._ready = ready
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        log.info("serving /metrics, /healthz, /readyz on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a request."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            ok = self._healthy()
            return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"consumer loop stopped\n"
        if path == "/readyz":
            ok = self._ready()
            return (200 if ok else 503), "text/plain", b"ready\n" if ok else b"no partitions yet\n"
        return 404, "text/plain", b"try /metrics, /healthz or /readyz\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_head(reader), self._request_timeout)
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                return
            status, content_type, body = self.respond(parts[0], parts[1])
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if parts[0] == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # too slow (the whole request head has one deadline), or gone
        except Exception:
            log.exception("HTTP request failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The request line; the header lines after it are read and ignored. Empty for a line
    past the reader's 64 KiB: no scrape, answered by closing."""
    try:
        request = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
    except ValueError:
        return b""
    return request
