"""Fixtures for the tracing tests: an in-process OTLP/HTTP receiver, and the MLflow peer."""

from __future__ import annotations

import contextlib
import gzip
import os
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support.tls import TlsFiles


@dataclass
class Receiver:
    """Answers ``POST /v1/traces`` with the scripted statuses (then 200; a 3xx points to
    ``/v1/traces/``) and keeps what came; answers any GET with 200."""

    url: str
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    attempts: int = 0
    gets: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[object]:
        with self.lock:
            return [
                span
                for request in self.requests
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]


@contextlib.contextmanager
def serving_receiver(
    tls: TlsFiles | None = None, *, client_ca: Path | None = None
) -> Iterator[Receiver]:
    """A :class:`Receiver` on a free loopback port; over https with ``tls`` (its server
    certificate), asking for a client certificate signed by ``client_ca`` when given."""
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                receiver.attempts += 1
                status = receiver.script.pop(0) if receiver.script else 200
                if status == 200:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver.requests.append(request)
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0")
            if 300 <= status < 400:
                self.send_header("Location", "/v1/traces/")
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # as many servers do for a URL that also takes POSTs
            with receiver.lock:
                receiver.gets += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert, tls.key)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/v1/traces"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def otlp_receiver() -> Iterator[Receiver]:
    with serving_receiver() as receiver:
        yield receiver


def peers_dir() -> Path:
    default = Path.home() / ".cache" / "agentstream" / "peers"
    return Path(os.environ.get("AGENTSTREAM_TEST_PEERS_DIR", default))


@pytest.fixture(scope="session")
def mlflow_python() -> Path:
    """The python of the MLflow peer venv (``tests/peers/ensure_venv.sh mlflow 'mlflow==3.17.*'``).

    Missing: the test is skipped, unless ``AGENTSTREAM_REQUIRE_PEERS=1`` (CI), where it fails."""
    python = peers_dir() / "mlflow" / "bin" / "python"
    mlflow = peers_dir() / "mlflow" / "bin" / "mlflow"
    if not (python.exists() and mlflow.exists()):
        reason = (
            f"the MLflow peer venv is missing at {python.parent.parent}: "
            "run tests/peers/ensure_venv.sh mlflow 'mlflow==3.17.*'"
        )
        if os.environ.get("AGENTSTREAM_REQUIRE_PEERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return python
