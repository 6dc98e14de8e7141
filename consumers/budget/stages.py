"""The two stages of the budget service, each on its own consumer group.

``SessionStage`` reads the events topic. Per partition it keeps the session scopes of the
sessions on that partition, and forwards every counted event's charge to the repartition
topic, keyed by the agent's and the user's day scope. ``DayStage`` reads the repartition
topic and keeps the agent and user day scopes of its partitions: each day is summed on
exactly one partition, whatever partitions the sessions were on.

Durability, per handled batch of one partition (the runtime commits the input offsets only
after the handler returned):

1. apply the records to the in-memory scopes (a scope skips a record at or below the
   source offset it applied last: replays never count twice);
2. (sessions) send the charges to the repartition topic, in order, and wait for the acks;
3. write the touched scopes to the changelog partition, with the signals they earned in
   their ``pending`` outbox, and wait for the acks;
4. publish the pending signals (alerts, and pause directives if asked), in order, wait for
   the acks, clear the outboxes and write those scopes again.

A crash between 3 and 4 leaves signals pending in the changelog: the next owner looks for
their deterministic ids on the alerts topic and sends only the missing ones. So each
warning and exceedance is published once, and totals are exact, across kill -9.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TypeVar

import msgspec
from aiokafka.structs import TopicPartition

from agentstream.consumers.runtime import Record
from agentstream.consumers.runtime.eventtime import EventTime
from agentstream.consumers.runtime.placement import SessionPlacement
from agentstream.consumers.runtime.replay import high_watermarks
from agentstream.consumers.runtime.retry import backoff_seconds
from agentstream.schemas import Event, encode_event, event_headers
from agentstream.schemas.errors import AgentstreamError, ConfigurationError
from agentstream.schemas.settings import KafkaSettings

from .accounting import (
    SIGNAL_NAMESPACE,
    Charge,
    Context,
    Ledger,
    Level,
    ScopeKind,
    ScopeState,
    Signal,
    day_scopes,
    scope_kind,
)
from .changelog import ChangelogWriter, find_event_ids, read_partition_states
from .metrics import BudgetMetrics
from .signals import SOURCE, pause_directive, signal_event

log = logging.getLogger("agentstream.consumers.budget")

USAGE_TYPE = "budget.usage"
"""Type of the repartition records (internal to the budget service)."""

T = TypeVar("T")

Publish = Callable[[list[tuple[str, Event]]], Awaitable[None]]
"""Publish ``(topic, event)`` pairs in the order given; return once all are acknowledged."""
OutRecord = tuple[str, bytes, bytes, list[tuple[str, bytes]]]
"""``(topic, key, value, headers)``."""


class UsageDelta(msgspec.Struct, frozen=True, kw_only=True):
    """The ``data`` of a repartition record: one event's charge for one day scope."""

    scope: str
    owner: str
    source_partition: int
    source_offset: int
    charge: Charge


def usage_event(
    event: Event, scope: str, owner: str, charge: Charge, partition: int, offset: int
) -> Event:
    """The repartition record of ``event``'s charge for ``scope``. Its id is derived from the
    scope and the source position, so a replayed record is recognisably the same."""
    return Event(
        event_id=str(uuid.uuid5(SIGNAL_NAMESPACE, f"usage|{scope}|{partition}|{offset}")),
        type=USAGE_TYPE,
        timestamp=event.timestamp,
        session_id=event.session_id,
        agent_id=event.agent_id,
        user_id=event.user_id,
        turn_id=event.turn_id,
        source=SOURCE,
        data=msgspec.to_builtins(
            UsageDelta(
                scope=scope,
                owner=owner,
                source_partition=partition,
                source_offset=offset,
                charge=charge,
            )
        ),
    )


class Stage:
    """Scopes of the partitions a consumer owns, and the protocol that makes them durable."""

    name = "stage"
    kinds: frozenset[ScopeKind] = frozenset()

    def __init__(
        self,
        *,
        settings: KafkaSettings,
        repartition_topic: str,
        ledger: Ledger,
        writer: ChangelogWriter,
        metrics: BudgetMetrics,
        publish: Publish,
        pause_on_exceeded: bool = False,
        pause_max_age_s: float = 600.0,
        session_idle: timedelta = timedelta(hours=24),
        keep_days: int = 2,
        evict_every_s: float = 60.0,
        persist_attempts: int | None = None,
    ) -> None:
        self.settings = settings
        self.repartition_topic = repartition_topic
        self.routing = settings.routing()
        self.ledger = ledger
        self.writer = writer
        self.metrics = metrics
        self.publish = publish
        self.pause_on_exceeded = pause_on_exceeded
        self.pause_max_age_s = pause_max_age_s
        self.session_idle = session_idle
        self.keep_days = keep_days
        self.evict_every_s = evict_every_s
        self.persist_attempts = persist_attempts
        self._next_evict = time.monotonic() + evict_every_s
        self.partitions: dict[int, set[str]] = {}
        """Owned partitions → the scopes held for each."""
        self._held: Counter[ScopeKind] = Counter()  # the scopes in partitions, by kind (gauge)
        self._dirty: dict[int, set[str]] = {}
        self._retained: dict[int, tuple[dict[str, ScopeState], int]] = {}
        """Revoked partitions: their scopes and our last changelog offset there."""
        self._written: dict[int, int] = {}
        self._outbox: dict[int, list[OutRecord]] = {}
        """Records to acknowledge before the next changelog write (sessions: repartition)."""

    # --- topics this stage reads ------------------------------------------------------------

    def input_partitions(self, tps: Iterable[TopicPartition]) -> list[int]:
        raise NotImplementedError

    # --- assignment -----------------------------------------------------------------------

    async def assigned(self, tps: frozenset[TopicPartition]) -> None:
        """Restore the scopes of newly assigned partitions before their records flow: one
        read of their changelog partitions (from our last write where we still hold a
        snapshot, from the beginning elsewhere)."""
        partitions = self.input_partitions(tps)
        if not partitions:
            return
        started = time.perf_counter()
        retained = {p: self._retained.pop(p) for p in partitions if p in self._retained}
        # Eager rebalancing hands over the whole new assignment at once: snapshots of
        # partitions that went elsewhere are of no more use (they would only be read past).
        self._retained.clear()
        start = {p: last + 1 for p, (_, last) in retained.items()}
        # The runtime holds the partitions' records until this returns; returning without
        # the state would count from zero, so a failing read is retried, never skipped.
        try:
            changed = await self._retry(
                f"restoring partitions {partitions}",
                lambda: read_partition_states(self.settings, partitions, start=start),
            )
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"{self.name} stage: {exc}. Were partitions added to the topics the budget "
                "service reads? Its changelog and repartition topics must have as many "
                "partitions as the events topic: add theirs to match and restart (sessions "
                "that moved to a new partition count from zero)"
            ) from None
        for partition in partitions:
            scopes = retained[partition][0] if partition in retained else {}
            await self._restore(partition, scopes, changed.get(partition, {}))
        await self._forget_offsets_past_the_log(partitions)
        self.metrics.restore_seconds.labels(self.name).observe(time.perf_counter() - started)
        self._update_gauge()

    async def _restore(
        self,
        partition: int,
        scopes: dict[str, ScopeState],
        changed: dict[str, ScopeState | None],
    ) -> None:
        read = 0
        for key, state in changed.items():
            if scope_kind(key) not in self.kinds:
                continue
            read += 1
            if state is None:
                scopes.pop(key, None)
            else:
                scopes[key] = state
        self.metrics.restored_scopes.labels(self.name).inc(read)
        self._count(self.partitions.get(partition, ()), -1)
        held = self.partitions[partition] = set()
        pending: list[ScopeState] = []
        for state in scopes.values():
            self.ledger.put(state)
            held.add(state.scope)
            if state.pending:
                pending.append(state)
        self._count(held, 1)
        if pending:
            await self._retry(
                f"resolving the pending signals of partition {partition}",
                lambda: self._resolve_pending(partition, pending),
            )
        log.info(
            "%s stage: partition %d restored: %d scopes (%d changed in the changelog)",
            self.name,
            partition,
            len(held),
            read,
        )

    async def _forget_offsets_past_the_log(self, partitions: list[int]) -> None:
        """Scopes keep the last events-topic offset they applied per partition, so that a
        replay is not counted twice. An offset at or past its partition's high watermark is
        no replay: the events topic was created again (or truncated) since. Such offsets are
        forgotten, with an error line, so that the new records count; kept, every record of
        the new log below them was taken for a replay (a session went on past its limits
        unseen)."""
        held = [
            (partition, state)
            for partition in partitions
            for scope in self.partitions.get(partition, ())
            if (state := self.ledger.get(scope)) is not None and state.offsets
        ]
        sources = {int(key) for _, state in held for key in state.offsets}
        if not sources:
            return
        events = self.routing.events
        tps = [TopicPartition(events, p) for p in sorted(sources)]
        ends = await self._retry(
            f"reading the end offsets of {events}",
            lambda: high_watermarks(self.settings, tps, listed_fallback=False),
        )
        end_of = {tp.partition: end for tp, end in ends.items()}
        forgotten: Counter[int] = Counter()
        for partition, state in held:
            for key, last in list(state.offsets.items()):
                end = end_of.get(int(key))
                if end is not None and last >= end:
                    del state.offsets[key]
                    forgotten[int(key)] += 1
                    self._dirty.setdefault(partition, set()).add(state.scope)
        if forgotten:
            log.error(
                "%s stage: %d scopes had applied offsets of %s past the end of the log (by "
                "partition: %s): the topic was created again or truncated; those offsets are "
                "forgotten and its records count as new ones",
                self.name,
                sum(forgotten.values()),
                events,
                dict(sorted(forgotten.items())),
            )

    async def _resolve_pending(self, partition: int, states: list[ScopeState]) -> None:
        """Signals a crashed owner decided but may not have published: publish the missing."""
        wanted = {s.event_id for state in states for s in state.pending}
        published = await find_event_ids(self.settings, self.routing.alerts, wanted)
        log.info(
            "%s stage: partition %d had %d pending signals, %d already published",
            self.name,
            partition,
            len(wanted),
            len(published),
        )
        signals = [s for state in states for s in state.pending]
        missing = [s for s in signals if s.event_id not in published]
        directives = [
            (self.routing.control, pause_directive(s))
            for s in signals
            if s.event_id in published and self._pauses(s)
        ]
        await self._publish(missing, extra=directives)  # directives: idempotent, sent again
        for state in states:
            state.pending.clear()
        await self._write(partition, states, [])

    async def revoked(self, tps: frozenset[TopicPartition]) -> None:
        """Keep the scopes of revoked partitions aside: if we get them back, only the
        changelog records written after ours need reading."""
        for partition in self.input_partitions(tps):
            scopes = self.partitions.pop(partition, set())
            self._count(scopes, -1)
            if self._dirty.get(partition):
                try:
                    await self._persist(partition)
                except Exception:
                    log.exception(
                        "%s stage: partition %d: final persist failed", self.name, partition
                    )
            held = {s: st for s in scopes if (st := self.ledger.get(s)) is not None}
            for scope in scopes:
                self.ledger.drop(scope)
            last = self._written.pop(partition, None)
            if last is not None and not self._dirty.pop(partition, None):
                self._retained[partition] = (held, last)
            else:
                self._dirty.pop(partition, None)
        self._update_gauge()

    # --- the durable step -----------------------------------------------------------------

    def touch(self, partition: int, state: ScopeState) -> None:
        held = self.partitions.setdefault(partition, set())
        if state.scope not in held:
            held.add(state.scope)
            self._held[scope_kind(state.scope)] += 1
        self._dirty.setdefault(partition, set()).add(state.scope)

    async def before_write(self, partition: int) -> None:
        """Hook: what must be acknowledged before the changelog records it (sessions:
        the repartition records)."""

    async def _persist_until_done(self, partition: int) -> None:
        """:meth:`_persist`, retried while Kafka refuses (forever unless ``persist_attempts``):
        a stateful stage must not let the runtime dead-letter and commit records it counted
        but did not make durable; it holds its partition (fetching pauses) instead."""
        await self._retry(
            f"persisting partition {partition}",
            lambda: self._persist(partition),
            attempts=self.persist_attempts,
        )

    async def _retry(
        self, what: str, action: Callable[[], Awaitable[T]], *, attempts: int | None = None
    ) -> T:
        """``await action()`` until it succeeds, with the runtime's exponential backoff
        (from 0.2 s, up to 5 s)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await action()
            except Exception as exc:
                if attempts is not None and attempt >= attempts:
                    raise
                if isinstance(exc, AgentstreamError) and not exc.retriable:
                    raise  # a configuration problem: no retry can help
                delay = backoff_seconds(attempt, 200, 5_000)
                log.warning(
                    "%s stage: %s failed (attempt %d), retrying in %.1f s: %r",
                    self.name,
                    what,
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)

    async def _persist(self, partition: int) -> None:
        self._maybe_evict()
        await self.before_write(partition)
        dirty = self._dirty.pop(partition, set())
        if not dirty:
            return
        try:
            states = [s for scope in dirty if (s := self.ledger.get(scope)) is not None]
            gone = [scope for scope in dirty if self.ledger.get(scope) is None]
            await self._write(partition, states, gone)
        except BaseException:
            self._dirty.setdefault(partition, set()).update(dirty)
            raise
        with_signals = [s for s in states if s.pending]
        if not with_signals:
            return
        try:
            await self._publish([s for state in with_signals for s in state.pending])
            for state in with_signals:
                state.pending.clear()
            await self._write(partition, with_signals, [])
        except BaseException:
            # Still pending (in memory and in the changelog): the next persist retries them.
            self._dirty.setdefault(partition, set()).update(s.scope for s in with_signals)
            raise

    async def _write(self, partition: int, states: list[ScopeState], gone: list[str]) -> None:
        last = await self.writer.write(partition, states, gone)
        if last is not None:
            self._written[partition] = max(self._written.get(partition, -1), last)
            self.metrics.changelog_records.labels(self.name).inc(len(states) + len(gone))

    def _pauses(self, signal: Signal) -> bool:
        """Whether ``signal`` earns a pause directive: an exceedance, with ``pause_on_exceeded``,
        caused by an event at most ``pause_max_age_s`` old (older: a backlog being caught up,
        whose agent has moved on; counted, not sent)."""
        if not self.pause_on_exceeded or signal.level is not Level.EXCEEDED:
            return False
        max_age_ms = self.pause_max_age_s * 1000
        now_ms = self.ledger.clock().timestamp() * 1000
        if max_age_ms and signal.ts_ms and now_ms - signal.ts_ms > max_age_ms:  # 0: unknown
            self.metrics.stale_directives.inc()
            return False
        return True

    async def _publish(
        self, signals: list[Signal], *, extra: list[tuple[str, Event]] | None = None
    ) -> None:
        """Publish the alerts of ``signals`` (and pause directives), in order, all acked."""
        events = list(extra or ())
        for signal in signals:
            events.append((self.routing.alerts, signal_event(signal)))
            if self._pauses(signal):
                events.append((self.routing.control, pause_directive(signal)))
        if not events:
            return
        await self.publish(events)
        for signal in signals:
            self.metrics.signalled(signal)
            log.info(
                "%s %s of %s: %s of %s",
                signal.event_type,
                signal.dimension.value,
                signal.scope,
                signal.used,
                signal.limit,
            )

    def _maybe_evict(self) -> None:
        now = time.monotonic()
        if now < self._next_evict:
            return
        self._next_evict = now + self.evict_every_s
        for scope in self.ledger.evict(session_idle=self.session_idle, keep_days=self.keep_days):
            for partition, scopes in self.partitions.items():
                if scope in scopes:
                    scopes.discard(scope)
                    self._held[scope_kind(scope)] -= 1
                    self._dirty.setdefault(partition, set()).add(scope)  # → tombstone
                    break
        self._update_gauge()

    def _count(self, scopes: Iterable[str], sign: int) -> None:
        held = self._held
        for scope in scopes:
            held[scope_kind(scope)] += sign

    def _update_gauge(self) -> None:
        """Per batch: from the counts kept as scopes come and go (counting every scope held
        took 266 ms a batch with 400,000 sessions held)."""
        for kind in self.kinds:
            self.metrics.tracked_scopes.labels(kind.value).set(self._held[kind])


class SessionStage(Stage):
    """Sessions, on the events topic's partitions."""

    name = "sessions"
    kinds = frozenset({ScopeKind.SESSION})
    placement: SessionPlacement | None = None
    """Checks that each session's events come where its key puts them (the service sets it)."""
    event_time: EventTime | None = None
    """Times an event by its record when its own timestamp is far off (the service sets it):
    wall time, days and signals follow the time it gives."""

    def input_partitions(self, tps: Iterable[TopicPartition]) -> list[int]:
        events = self.routing.events
        return sorted(tp.partition for tp in tps if tp.topic == events)

    async def handle(self, records: list[Record]) -> None:
        """Batch handler: records of one partition, in offset order."""
        if not records or records[0].topic != self.routing.events:
            return  # tokens, alerts and control topics: nothing to count there
        partition = records[0].partition
        ledger, metrics, encoding = self.ledger, self.metrics, self.settings.encoding
        outbox = self._outbox.setdefault(partition, [])
        placement, event_time = self.placement, self.event_time
        for record in records:
            event = record.event if event_time is None else event_time.event(record)
            if placement is not None:
                placement.check(record)
            charge, state, _ = ledger.apply_session(event, partition, record.offset)
            if state is not None:
                self.touch(partition, state)
            elif event.session_id:
                metrics.replayed.labels(self.name).inc()
                continue
            if charge is None:
                continue
            metrics.charged(charge)
            for scope, owner in day_scopes(event):
                delta = usage_event(event, scope, owner, charge, partition, record.offset)
                outbox.append(
                    (
                        self.repartition_topic,
                        scope.encode(),
                        encode_event(delta, encoding),
                        event_headers(delta, encoding),
                    )
                )
        await self._persist_until_done(partition)
        self._update_gauge()

    async def before_write(self, partition: int) -> None:
        outbox = self._outbox.get(partition)
        if outbox:
            await self.writer.send_ordered(outbox)
            outbox.clear()

    async def revoked(self, tps: frozenset[TopicPartition]) -> None:
        await super().revoked(tps)
        for partition in self.input_partitions(tps):
            lost = self._outbox.pop(partition, None)
            if lost:
                log.error(
                    "sessions stage: partition %d revoked with %d repartition records unsent; "
                    "the next owner replays their events only if their offsets were not committed",
                    partition,
                    len(lost),
                )


class DayStage(Stage):
    """Agent and user days, on the repartition topic's partitions."""

    name = "days"
    kinds = frozenset({ScopeKind.AGENT, ScopeKind.USER})

    def input_partitions(self, tps: Iterable[TopicPartition]) -> list[int]:
        topic = self.repartition_topic
        return sorted(tp.partition for tp in tps if tp.topic == topic)

    async def handle(self, records: list[Record]) -> None:
        if not records or records[0].topic != self.repartition_topic:
            return
        partition = records[0].partition
        for record in records:
            event = record.event
            try:
                delta = msgspec.convert(event.data, UsageDelta)
            except msgspec.ValidationError as exc:
                self.metrics.invalid.inc()
                log.error("unreadable repartition record at %s, skipped: %s", record.location, exc)
                continue
            state, _ = self.ledger.apply_day(
                delta.scope,
                delta.charge,
                owner=delta.owner,
                context=Context.of(event),
                partition=delta.source_partition,
                offset=delta.source_offset,
            )
            if state is None:
                self.metrics.replayed.labels(self.name).inc()
            else:
                self.touch(partition, state)
        await self._persist_until_done(partition)
        self._update_gauge()
