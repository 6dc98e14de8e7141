"""Optional webhook delivery of alerts, off the hot path.

Alerts are queued (bounded; a full queue drops the alert and counts it) and POSTed by one
background task with ``urllib`` in a worker thread, with a timeout and retries with
exponential backoff (jittered, capped at ``max_backoff_s``). Delivery never blocks or fails
the alert path: the alert is already on the alerts topic when it is queued here.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Literal

from agentstream.consumers.runtime.http import http_url_problem, post, redirect_hint, url_shown
from agentstream.consumers.runtime.retry import backoff_seconds
from agentstream.schemas import Event
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.throttle import ThrottledLog

log = logging.getLogger(__name__)

WebhookFormat = Literal["json", "slack"]
Outcome = Literal["delivered", "failed", "dropped"]


def webhook_body(alert: Event, fmt: WebhookFormat) -> dict[str, Any]:
    """The JSON body: the alert event itself, or Slack's ``{"text": ...}``."""
    if fmt == "slack":
        data = alert.data
        kind = "BLOCK" if alert.type.endswith("block") else "warning"
        details = data.get("metadata", {}).get("details") or data.get("pattern", "")
        return {
            "text": (
                f":rotating_light: Tool loop {kind} — agent `{alert.agent_id or '?'}` session "
                f"`{alert.session_id or '?'}` turn `{alert.turn_id or '-'}`: {details} "
                f"(alert {alert.event_id})"
            )
        }
    return alert.to_dict()


class WebhookNotifier:
    """POSTs alerts to ``url`` from a background task; ``notify`` never waits."""

    def __init__(
        self,
        url: str,
        *,
        fmt: WebhookFormat = "json",
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_queue: int = 1_000,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        problem = http_url_problem(url, secret=True)
        if problem is not None:
            raise ConfigurationError(f"webhook URL: {problem}")
        self.url = url
        self.shown = url_shown(url)
        """The URL as log lines show it: its path is often the token (Slack, Teams)."""
        self.fmt: WebhookFormat = fmt
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=max_queue)
        self._on_outcome = on_outcome
        self._task: asyncio.Task[None] | None = None
        self._failures = ThrottledLog(log, unit="alerts not delivered")
        self._overflow = ThrottledLog(log, unit="alerts dropped")

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loops-webhook")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            log.warning("webhook: %d alerts not delivered at shutdown", self._queue.qsize())
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def notify(self, alert: Event) -> None:
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self._overflow(
                "queue", f"webhook: queue full, alert {alert.event_id} not delivered", amount=1
            )
            self._outcome("dropped")

    def _outcome(self, outcome: Outcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def _run(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                await self._deliver(alert)
            except Exception:  # a bug must not stop every later alert
                log.exception("webhook: alert %s not delivered", alert.event_id)
                self._outcome("failed")
            finally:
                self._queue.task_done()

    async def _deliver(self, alert: Event) -> None:
        body = json.dumps(webhook_body(alert, self.fmt)).encode()
        base_ms, most_ms = round(self.backoff_s * 1000), round(self.max_backoff_s * 1000)
        for attempt in range(self.retries + 1):
            try:
                await asyncio.to_thread(self._post, body)
            except (OSError, http.client.HTTPException) as exc:  # URLError and HTTPError are
                # OSErrors; an answer that is not HTTP (BadStatusLine...) is an HTTPException
                status = exc.code if isinstance(exc, urllib.error.HTTPError) else 0
                permanent = 300 <= status < 500 and status not in (408, 429)
                if permanent or attempt == self.retries:
                    tries = attempt + 1
                    self._failures(
                        "deliver",
                        f"webhook: alert {alert.event_id} not delivered to {self.shown} after "
                        f"{tries} {'attempt' if tries == 1 else 'attempts'}: {exc}"
                        + redirect_hint(exc, secret=True),
                        amount=1,
                    )
                    self._outcome("failed")
                    return
                await asyncio.sleep(backoff_seconds(attempt + 1, base_ms, most_ms))
            else:
                self._failures.recovered("deliver", f"webhook: {self.shown} takes alerts again")
                self._outcome("delivered")
                return

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        post(request, self.timeout_s)
