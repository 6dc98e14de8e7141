"""OTLP/HTTP protobuf export: a bounded queue, batches, retries with backoff, counted drops.

``submit(traces)`` queues traces and returns a future that resolves to ``True`` once the
endpoint accepted them, ``False`` once they were dropped. One worker task takes whole traces
from the queue (up to ``batch_spans`` spans, after waiting up to ``linger`` for more), POSTs
them, and retries what the OTLP spec calls retryable (connection errors, timeouts, 429, 502,
503, 504; ``Retry-After`` honoured) with exponential backoff and jitter. What cannot be
delivered is dropped and counted, never raised: the endpoint being down costs memory only up
to ``queue_spans`` spans, then new traces are dropped (``queue_full``).

The POST itself runs ``urllib`` in a worker thread: no HTTP client dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from agentstream.consumers.runtime.http import post, poster, redirect_hint
from agentstream.consumers.runtime.retry import backoff_seconds
from agentstream.schemas.errors import describe
from agentstream.schemas.throttle import ThrottledLog

from .metrics import TracingMetrics
from .otlp import encode
from .settings import ExportTarget
from .spans import Trace

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
USER_AGENT = "agentstream-tracing/0.1"


@dataclass(frozen=True, slots=True)
class ExportPolicy:
    batch_spans: int = 512
    linger_s: float = 0.0
    queue_spans: int = 20_000
    max_retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0


@dataclass(slots=True)
class _Item:
    trace: Trace
    future: asyncio.Future[bool]
    spans: int = field(init=False)

    def __post_init__(self) -> None:
        self.spans = len(self.trace.spans)


@dataclass(frozen=True, slots=True)
class PostResult:
    """What one POST gave: ``status`` 0 means no HTTP answer (connection error, timeout)."""

    status: int
    body: bytes = b""
    retry_after_s: float | None = None
    error: str = ""


class OtlpHttpExporter:
    def __init__(
        self, target: ExportTarget, metrics: TracingMetrics, policy: ExportPolicy | None = None
    ) -> None:
        self.target = target
        self.metrics = metrics
        self.policy = policy or ExportPolicy()
        self._queue: deque[_Item] = deque()
        self._queued_spans = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[_Item] = []
        self._closing = False
        self._failures = ThrottledLog(log, unit="spans dropped")
        self._opener = poster(target.ssl_context())

    @property
    def queued_spans(self) -> int:
        return self._queued_spans

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="otlp-exporter")

    def submit(self, traces: Sequence[Trace]) -> list[asyncio.Future[bool]]:
        """Queue ``traces`` for export; each future resolves True (delivered) or False."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bool]] = []
        for trace in traces:
            item = _Item(trace, loop.create_future())
            futures.append(item.future)
            if self._closing:
                self._drop([item], "shutdown")
                continue
            if self._queued_spans + item.spans > self.policy.queue_spans:
                self._failures(
                    "export",
                    f"tracing export: {self._queued_spans:,} spans wait for {self.target.shown} "
                    f"(export_queue_spans {self.policy.queue_spans:,}): new traces are dropped",
                    amount=item.spans,
                )
                self._drop([item], "queue_full")
                continue
            self._queue.append(item)
            self._queued_spans += item.spans
        self._wakeup.set()
        return futures

    async def export(self, traces: Sequence[Trace], *, wait_s: float) -> bool:
        """Queue ``traces`` and wait up to ``wait_s`` for all of them to be delivered.

        ``True`` when all were delivered in time. On ``False`` the ones still queued stay
        queued (their delivery goes on in the background)."""
        futures = self.submit(traces)
        if not futures or wait_s <= 0:
            return not futures
        done, _ = await asyncio.wait(futures, timeout=wait_s)
        return len(done) == len(futures) and all(f.result() for f in done)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued within ``timeout_s``; drop (and count) the rest."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        dropped = self._drop([*self._inflight, *self._queue], "shutdown")  # skips resolved ones
        if dropped:
            log.warning(
                "tracing export: %d spans not delivered to %s by shutdown were dropped",
                dropped,
                self.target.shown,
            )
        self._failures.flush("export", "tracing export: at shutdown")
        self._inflight = []
        self._queue.clear()
        self._queued_spans = 0

    # --- the worker -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if (
                not self._closing
                and self._queued_spans < self.policy.batch_spans
                and self.policy.linger_s > 0
            ):
                await asyncio.sleep(self.policy.linger_s)
            batch = self._take_batch()
            self._inflight = batch
            try:
                await self._deliver(batch)
            except Exception:  # never let the worker die: drop the batch, count it
                log.exception("tracing export: unexpected error, %d traces dropped", len(batch))
                self._drop(batch, "export_failed")
            self._inflight = []

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        spans = 0
        while self._queue:
            item = self._queue[0]
            if batch and spans + item.spans > self.policy.batch_spans:
                break
            self._queue.popleft()
            self._queued_spans -= item.spans
            spans += item.spans
            batch.append(item)
        return batch

    async def _deliver(self, batch: list[_Item]) -> None:
        body = encode(
            [item.trace for item in batch],
            service_name=self.target.service_name,
            resource=self.target.resource,
        )
        if self.target.compression == "gzip":
            body = gzip.compress(body)
        attempt = 0
        while True:
            result = await asyncio.to_thread(self._post, body)
            if 200 <= result.status < 300:
                self._failures.recovered(
                    "export", f"tracing export: {self.target.shown} accepts spans again"
                )
                self._delivered(batch, result.body)
                return
            self.metrics.export_failures.inc()
            retryable = result.status == 0 or result.status in RETRYABLE_STATUS
            if not retryable:
                log.error(
                    "tracing export: %s answered %s (not retryable), %d spans dropped: %s",
                    self.target.shown,
                    result.error or result.status,
                    sum(i.spans for i in batch),
                    result.body[:300].decode(errors="replace"),
                )
                self._drop(batch, "rejected")
                return
            if attempt >= self.policy.max_retries or self._closing:
                spans = sum(i.spans for i in batch)
                tries = attempt + 1
                self._failures(
                    "export",
                    f"tracing export: {self.target.shown}: {spans} spans dropped after "
                    f"{tries} {'attempt' if tries == 1 else 'attempts'} "
                    f"(last: {result.error or f'HTTP {result.status}'})",
                    amount=spans,
                )
                self._drop(batch, "export_failed")
                return
            if attempt == 0:  # said once; an answer that was only late makes a copy (upserted)
                failed = result.error or f"HTTP {result.status}"
                self._failures(
                    "export",
                    f"tracing export: {self.target.shown}: {failed}; retrying (a request that "
                    "timed out may have arrived: the endpoint gets those spans again)",
                )
            attempt += 1
            delay = backoff_seconds(
                attempt,
                round(self.policy.backoff_s * 1000),
                round(self.policy.max_backoff_s * 1000),
            )
            if result.retry_after_s is not None:
                delay = min(self.policy.max_backoff_s, max(delay, result.retry_after_s))
            await asyncio.sleep(delay)

    def _post(self, body: bytes) -> PostResult:
        headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": USER_AGENT,
            **self.target.headers,
        }
        if self.target.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        request = urllib.request.Request(
            self.target.endpoint, data=body, headers=headers, method="POST"
        )
        try:
            status, body = post(request, self.target.timeout_s, self._opener)
            return PostResult(status=status, body=body)
        except urllib.error.HTTPError as exc:
            payload = b""
            with contextlib.suppress(Exception):
                payload = exc.read()
            return PostResult(
                status=exc.code,
                body=payload,
                retry_after_s=_retry_after(exc.headers.get("Retry-After") if exc.headers else None),
                error=f"HTTP {exc.code}{redirect_hint(exc)}",
            )
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            return PostResult(status=0, error=describe(exc))

    # --- outcomes ---------------------------------------------------------------------------

    def _delivered(self, batch: list[_Item], body: bytes) -> None:
        rejected = _rejected_spans(body)
        spans = sum(item.spans for item in batch)
        self.metrics.spans_exported.inc(spans - rejected)
        if rejected:
            log.warning("tracing export: the endpoint rejected %d of %d spans", rejected, spans)
            self.metrics.dropped_spans.labels(reason="rejected").inc(rejected)
        for item in batch:
            outcome = "complete" if item.trace.complete else "incomplete"
            self.metrics.traces_exported.labels(outcome=outcome).inc()
            if not item.future.done():
                item.future.set_result(True)

    def _drop(self, items: list[_Item], reason: str) -> int:
        """Count and resolve the items not resolved yet; how many spans they held."""
        pending = [item for item in items if not item.future.done()]
        spans = sum(item.spans for item in pending)
        if spans:
            self.metrics.dropped_spans.labels(reason=reason).inc(spans)
        for item in pending:
            item.future.set_result(False)
        return spans


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _rejected_spans(body: bytes) -> int:
    """``partial_success.rejected_spans`` of an ``ExportTraceServiceResponse`` (0 if none)."""
    if not body:
        return 0
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(body)
    except Exception:  # not a protobuf answer (some receivers answer JSON or nothing)
        return 0
    return int(response.partial_success.rejected_spans)
