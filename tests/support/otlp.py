"""A minimal OTLP/HTTP receiver for the tracing service's exporter, in a thread of the test
(or benchmark) process: answers 200 to every POST, counts the requests and, when asked, keeps
(trace id, span id) of every exported span."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OtlpSink:
    """Listening on a free port from construction (``url``) until :meth:`close`."""

    def __init__(self, *, keep_spans: bool = False) -> None:
        self.requests = 0
        self.spans: list[tuple[bytes, bytes]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                spans = sink._spans_of(body) if keep_spans else []
                with sink.lock:
                    sink.requests += 1
                    sink.spans.extend(spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _spans_of(body: bytes) -> list[tuple[bytes, bytes]]:
        # the tracing extra's dependency: imported only by the users that keep spans
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        return [
            (span.trace_id, span.span_id)
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
