"""Webhook delivery against a local HTTP server: bodies, retries, permanent failures, drops."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentstream.consumers.loops.webhook import Outcome, WebhookNotifier, webhook_body
from agentstream.schemas import Event
from agentstream.schemas.errors import ConfigurationError


class Receiver:
    """A local HTTP server answering with the queued status codes (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = collections.deque(statuses or [])
        self.bodies: list[Any] = []
        self.attempts = 0
        self.gets = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                receiver.attempts += 1
                status = receiver.statuses.popleft() if receiver.statuses else 200
                if status == 200:
                    receiver.bodies.append(body)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "https://hooks.example/hook/s3cret-token")
                self.end_headers()

            def do_GET(self) -> None:  # as many servers do for a URL that also takes POSTs
                receiver.gets += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver_factory() -> Iterator[type[Receiver]]:
    started: list[Receiver] = []

    class Tracked(Receiver):
        def __init__(self, statuses: list[int] | None = None) -> None:
            super().__init__(statuses)
            self.thread.start()
            started.append(self)

    yield Tracked
    for receiver in started:
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.thread.join(timeout=5)


def block_alert() -> Event:
    return Event(
        type="audit.tool_loop_block",
        agent_id="support-bot",
        session_id="sess-1",
        source="agentstream-loops",
        data={
            "tool_name": "web_search",
            "pattern": "same_call",
            "call_count": 5,
            "severity_level": "critical",
            "metadata": {"details": "Tool loop detected (same_call): web_search called 5 times"},
        },
    )


async def deliver(notifier: WebhookNotifier, *alerts: Event) -> None:
    await notifier.start()
    try:
        for alert in alerts:
            notifier.notify(alert)
    finally:
        await notifier.stop(timeout_s=10)


async def test_json_body_is_the_alert_event(receiver_factory: type[Receiver]) -> None:
    receiver = receiver_factory()
    outcomes: list[Outcome] = []
    alert = block_alert()
    await deliver(WebhookNotifier(receiver.url, on_outcome=outcomes.append), alert)
    assert outcomes == ["delivered"]
    assert receiver.bodies == [json.loads(json.dumps(alert.to_dict()))]


async def test_slack_body_is_text(receiver_factory: type[Receiver]) -> None:
    receiver = receiver_factory()
    await deliver(WebhookNotifier(receiver.url, fmt="slack"), block_alert())
    (body,) = receiver.bodies
    assert set(body) == {"text"}
    assert "BLOCK" in body["text"] and "support-bot" in body["text"]
    assert "web_search called 5 times" in body["text"]


async def test_server_errors_are_retried_then_counted(receiver_factory: type[Receiver]) -> None:
    receiver = receiver_factory([500, 503])
    outcomes: list[Outcome] = []
    notifier = WebhookNotifier(receiver.url, retries=3, backoff_s=0.01, on_outcome=outcomes.append)
    await deliver(notifier, block_alert())
    assert outcomes == ["delivered"] and receiver.attempts == 3

    failing = receiver_factory([500] * 10)
    outcomes.clear()
    notifier = WebhookNotifier(failing.url, retries=2, backoff_s=0.01, on_outcome=outcomes.append)
    await deliver(notifier, block_alert())
    assert outcomes == ["failed"] and failing.attempts == 3


async def test_retry_delays_grow_then_stay_under_the_cap(
    receiver_factory: type[Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = receiver_factory([500] * 20)
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("agentstream.consumers.loops.webhook.asyncio.sleep", recorded)
    outcomes: list[Outcome] = []
    notifier = WebhookNotifier(
        failing.url, retries=12, backoff_s=0.1, max_backoff_s=2.0, on_outcome=outcomes.append
    )
    await deliver(notifier, block_alert())
    assert outcomes == ["failed"] and failing.attempts == 13
    assert len(slept) == 12
    assert 0.05 <= slept[0] <= 0.1  # equal jitter: between half and all of the base
    assert all(delay <= 2.0 for delay in slept)
    assert all(delay >= 1.0 for delay in slept[5:])  # 0.1 * 2**5 is past the cap


async def test_client_errors_are_not_retried(receiver_factory: type[Receiver]) -> None:
    receiver = receiver_factory([404])
    outcomes: list[Outcome] = []
    notifier = WebhookNotifier(receiver.url, retries=3, backoff_s=0.01, on_outcome=outcomes.append)
    await deliver(notifier, block_alert())
    assert outcomes == ["failed"] and receiver.attempts == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_a_failure_that_names_the_new_address(
    receiver_factory: type[Receiver], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    # urllib would follow 301/302/303 with a GET without the alert: a 200 to it is no delivery
    receiver = receiver_factory([status])
    outcomes: list[Outcome] = []
    notifier = WebhookNotifier(receiver.url, retries=3, backoff_s=0.01, on_outcome=outcomes.append)
    await deliver(notifier, block_alert())
    assert outcomes == ["failed"]
    assert receiver.attempts == 1 and receiver.gets == 0 and not receiver.bodies
    assert "a redirect to https://hooks.example/…" in caplog.text and "set the URL" in caplog.text
    assert "s3cret-token" not in caplog.text  # the webhook URL is a secret, its new one too


async def test_log_lines_show_the_webhooks_host_not_its_token(
    receiver_factory: type[Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    receiver = receiver_factory([500, 500])
    url = receiver.url.replace("/hook", "/services/T0/B0/s3cret-token")
    notifier = WebhookNotifier(url, retries=1, backoff_s=0.01)
    await deliver(notifier, block_alert())
    host = url.split("/")[2]
    assert f"not delivered to http://{host}/… after 2 attempts" in caplog.text
    assert "s3cret-token" not in caplog.text


async def test_unreachable_url_fails_without_blocking_notify() -> None:
    outcomes: list[Outcome] = []
    notifier = WebhookNotifier(
        "http://127.0.0.1:9/hook",
        retries=1,
        backoff_s=0.01,
        timeout_s=1,
        on_outcome=outcomes.append,
    )
    await deliver(notifier, block_alert())
    assert outcomes == ["failed"]


async def test_a_full_queue_drops_and_counts(receiver_factory: type[Receiver]) -> None:
    receiver = receiver_factory()
    outcomes: list[Outcome] = []
    notifier = WebhookNotifier(receiver.url, max_queue=2, on_outcome=outcomes.append)
    # Not started: nothing drains the queue, so the third alert finds it full.
    for _ in range(3):
        notifier.notify(block_alert())
    assert outcomes == ["dropped"]
    await notifier.start()
    await notifier.stop(timeout_s=10)
    assert collections.Counter(outcomes) == {"dropped": 1, "delivered": 2}


def test_body_formats() -> None:
    alert = block_alert()
    assert webhook_body(alert, "json")["type"] == "audit.tool_loop_block"
    for url in ("ftp://example.com", "notaurl", "http://", "http://host:port/x"):
        with pytest.raises(ConfigurationError, match="webhook URL: expected an http"):
            WebhookNotifier(url)


async def test_an_answer_that_is_not_http_fails_the_alert_and_the_worker_goes_on(
    receiver_factory: type[Receiver],
) -> None:
    # http.client raises HTTPException (BadStatusLine), not an OSError: it killed the worker,
    # every later alert stayed queued and stop() raised it
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    outcomes: list[Outcome] = []
    try:
        notifier = WebhookNotifier(
            f"http://127.0.0.1:{port}/hook", retries=1, backoff_s=0.01, on_outcome=outcomes.append
        )
        await deliver(notifier, block_alert(), block_alert())
    finally:
        server.close()
        await server.wait_closed()
    assert outcomes == ["failed", "failed"]
