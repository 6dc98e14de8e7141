"""The broker harness picks a real broker in the order DEVELOPERS.md fixes, and always stops
what it started."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from support.kafka import docker_engine_answers, real_broker

from agentstream.consumers.broker import free_port


def test_an_external_cluster_wins(monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str) -> None:
    monkeypatch.setenv("AGENTSTREAM_TEST_BOOTSTRAP", kafka_bootstrap)
    with real_broker() as (bootstrap, kind):
        assert (bootstrap, kind) == (kafka_bootstrap, "external")


def test_without_docker_the_embedded_broker_starts_and_is_always_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTSTREAM_TEST_BOOTSTRAP", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")  # nothing listens
    seen: list[tuple[str, int]] = []

    def fail_inside() -> None:
        with real_broker() as (bootstrap, kind):
            seen.append((kind, _broker_pid(bootstrap)))
            raise RuntimeError("test failure")

    with pytest.raises(RuntimeError, match="test failure"):
        fail_inside()
    [(kind, pid)] = seen
    assert kind == "embedded"
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z", "the broker was left running"


def _broker_pid(bootstrap: str) -> int:
    port = bootstrap.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "broker" in cmdline and f"127.0.0.1:{port}" in cmdline:
                return int(proc.name)
    raise AssertionError(f"no broker process listens on {bootstrap}")


def test_docker_detection_asks_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    class Ping(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Ping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.server_port}")
        assert docker_engine_answers()
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_port()}")
        assert not docker_engine_answers()
    finally:
        server.shutdown()
        server.server_close()
