"""Calling handlers: retries with backoff, control-flow exceptions, dead letters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from agentstream.schemas import DeadLetter, DecodeError, Event, SkipEvent
from agentstream.schemas.errors import AgentstreamError, BatchDeadLetter

from .deadletter import (
    H_VALUE_DROPPED,
    REASON_RETRIES_EXHAUSTED,
    REASON_UNDECODABLE,
    Failure,
    error_headers,
    original_headers,
)
from .metrics import DEAD_LETTERED, ConsumerMetrics
from .record import Record
from .retry import backoff_seconds
from .settings import ServiceSettings
from .subscriptions import Subscription

log = logging.getLogger("agentstream.consumers.runtime")

DLQ_MAX_BACKOFF_MS = 10_000
"""Longest wait between attempts to publish a dead letter (from ``retry_backoff_ms`` up)."""


class HandlerTimeoutError(AgentstreamError):
    """A handler call did not finish within its subscription's ``timeout_ms``: it was
    cancelled and counts as a failed attempt (retried, then dead-lettered)."""

    retriable = True


async def bounded(call: Awaitable[None], timeout_s: float, name: str, where: object) -> None:
    """Await ``call``, cancelling it past ``timeout_s`` (raises :class:`HandlerTimeoutError`)."""
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            await call
    except TimeoutError:
        if not deadline.expired():  # the handler's own TimeoutError: a failure like any other
            raise
        raise HandlerTimeoutError(
            f"expected handler {name} to finish within {timeout_s * 1000:.0f} ms on {where}, "
            "it did not and was cancelled"
        ) from None


class Dispatcher:
    """Runs one handler call to its end (success, skip, or a :class:`Failure`) and publishes
    dead letters until the broker acknowledges them."""

    def __init__(
        self,
        *,
        settings: ServiceSettings,
        service: str,
        group_id: str,
        dlq_topic: str,
        metrics: ConsumerMetrics,
        producer: Callable[[], AIOKafkaProducer],
    ) -> None:
        self.settings = settings
        self.service = service
        self.group_id = group_id
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self._producer = producer

    async def call(
        self, sub: Subscription, event: Event, record: Record | None, raw: Any
    ) -> Failure | None:
        """Run an event handler to its end (see :meth:`attempt`); the first call is inlined
        (and, for a lone handler without a timeout, inlined again in the partition worker).
        ``record`` is None when the handler does not take it; ``raw`` is the fetched record.
        The duration reaches the histogram with the worker's next count (``publish``)."""
        started = perf_counter()
        timeout = sub.timeout_s
        try:
            if timeout is None:
                await sub.call(event, record)
            else:
                await bounded(sub.call(event, record), timeout, sub.name, Where(raw))
        except Exception as exc:
            return await self.failed(sub, event, record, raw, exc, started)
        self.metrics.handler_duration(sub.name, perf_counter() - started)
        return None

    async def failed(
        self,
        sub: Subscription,
        event: Event,
        record: Record | None,
        raw: Any,
        exc: Exception,
        started: float,
    ) -> Failure | None:
        """After an event handler's first call (begun at ``started``) raised ``exc``: the
        retries of :meth:`call`. (The partition worker inlines the first call.)"""
        self.metrics.handler_duration(sub.name, perf_counter() - started)
        where, timeout = Where(raw), sub.timeout_s
        if timeout is None:
            return await self._after(sub.name, lambda: sub.call(event, record), where, exc)
        return await self._after(
            sub.name,
            lambda: bounded(sub.call(event, record), timeout, sub.name, where),
            where,
            exc,
        )

    async def attempt(
        self, name: str, call: Callable[[], Awaitable[None]], where: object
    ) -> Failure | None:
        """Call ``call`` until it returns, raises :class:`SkipEvent`, :class:`DeadLetter`,
        :class:`BatchDeadLetter` or a
        :class:`DecodeError` (bad input: never retried), or has failed ``1 + handler_retries``
        times. Returns the failure to dead-letter, if any."""
        metrics = self.metrics
        started = perf_counter()
        try:
            await call()
        except Exception as exc:
            metrics.handler_duration(name, perf_counter() - started)
            metrics.publish()
            return await self._after(name, call, where, exc)
        metrics.handler_duration(name, perf_counter() - started)
        metrics.publish()  # one call per batch: visible at once
        return None

    async def _after(
        self, name: str, call: Callable[[], Awaitable[None]], where: object, exc: Exception
    ) -> Failure | None:
        """The retry loop once the first call raised ``exc``."""
        settings, metrics = self.settings, self.metrics
        attempt = 1
        while True:
            if isinstance(exc, SkipEvent):
                return None
            if isinstance(exc, DeadLetter):
                return Failure(name, exc.reason or "dead letter requested", exc, attempt)
            if isinstance(exc, BatchDeadLetter):  # per record: see Failure.for_offset
                return Failure(name, "refused by the handler", exc, attempt)
            if isinstance(exc, DecodeError):  # e.g. ``event.payload`` of invalid data: final
                log.error("handler %s cannot decode %s, dead-lettering: %r", name, where, exc)
                return Failure(name, f"{REASON_UNDECODABLE}: {type(exc).__name__}", exc, attempt)
            if attempt > settings.handler_retries:
                log.error(
                    "handler %s failed on %s after %d attempts, dead-lettering: %r",
                    name,
                    where,
                    attempt,
                    exc,
                )
                return Failure(name, REASON_RETRIES_EXHAUSTED, exc, attempt)
            delay = backoff_seconds(
                attempt, settings.handler_retry_backoff_ms, settings.handler_retry_max_backoff_ms
            )
            log.warning(
                "handler %s failed on %s (attempt %d), retrying in %.3f s: %r",
                name,
                where,
                attempt,
                delay,
                exc,
            )
            self.metrics.retried(name)
            await asyncio.sleep(delay)
            attempt += 1
            started = perf_counter()
            try:
                await call()
            except Exception as error:
                exc = error
            else:
                metrics.handler_duration(name, perf_counter() - started)
                metrics.publish()
                return None
            metrics.handler_duration(name, perf_counter() - started)
            metrics.publish()

    async def dead_letter(self, raw: Any, failure: Failure, event_type: str | None) -> None:
        """Copy ``raw`` (an aiokafka ``ConsumerRecord``) to the DLQ with error headers.

        Returns only once the broker acknowledged it: until then the record stays unfinished
        (so uncommitted), and its partition's worker waits here (fetching of that partition
        pauses when its buffer fills). Cancelled by a revoke or shutdown past its bound.
        """
        headers = original_headers(raw.headers or ()) + error_headers(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            service=self.service,
            group_id=self.group_id,
            failure=failure,
        )
        attempt = 0
        value = raw.value
        while True:
            attempt += 1
            try:
                await self._producer().send_and_wait(
                    self.dlq_topic,
                    value,
                    key=raw.key,
                    headers=headers,
                    # the original's time, as Kafka Connect's dead letters keep it: services
                    # that check an event's time against its record's see the same after a replay
                    timestamp_ms=raw.timestamp if raw.timestamp >= 0 else None,
                )
            except Exception as exc:
                if isinstance(exc, MessageSizeTooLargeError) and value is not None:
                    # a record the topic took compressed, past the request limit uncompressed:
                    # no retry could send it, and its partition would wait for good
                    self._drop_value(raw, value, exc)
                    headers = [*headers, (H_VALUE_DROPPED, str(len(value)).encode())]
                    value = None
                    continue
                self.metrics.dead_letter_errors.inc()
                delay = backoff_seconds(
                    attempt, self.settings.retry_backoff_ms or 100, DLQ_MAX_BACKOFF_MS
                )
                log.error(
                    "could not publish the dead letter of %s[%d]@%d to %s (attempt %d), "
                    "retrying in %.3f s; the record stays uncommitted: %r",
                    raw.topic,
                    raw.partition,
                    raw.offset,
                    self.dlq_topic,
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
            else:
                self.metrics.record(event_type, DEAD_LETTERED)
                log.warning(
                    "dead-lettered %s[%d]@%d (handler %s: %s)",
                    raw.topic,
                    raw.partition,
                    raw.offset,
                    failure.handler,
                    failure.reason,
                )
                return

    @staticmethod
    def _drop_value(raw: Any, value: bytes, exc: BaseException) -> None:
        log.error(
            "the dead letter of %s[%d]@%d is too large to send (%d bytes: %r): it goes without "
            "its value (header %s); the original stays on its topic",
            raw.topic,
            raw.partition,
            raw.offset,
            len(value),
            exc,
            H_VALUE_DROPPED,
        )


class Where:
    """Where a fetched record came from, formatted only if a message needs it."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return f"{self.raw.topic}[{self.raw.partition}]@{self.raw.offset}"
