"""Scaffolding shared by the benchmarks: where results go, what the machine is, percentiles,
the resident memory of a process, an embedded broker for the run, and a fast producer of a
pre-built event list, traffic, an OTLP sink, and (from ``tests/support``) the service
subprocess. Imported by the scripts as ``from _common import ...`` (the scripts run
as ``python benchmarks/bench_<area>.py``, so this folder is on ``sys.path``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import timeit
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agentstream.consumers.broker import FETCH_MAX_WAIT_MS, EmbeddedBroker, broker_binary
from agentstream.schemas import Event, encode_event, event_headers, record_key
from agentstream.schemas.admin import wait_for_broker
from agentstream.schemas.settings import KafkaSettings

# The test suite's helpers (``tests/support``, importable as ``support``) run the services as
# subprocesses for the benchmarks too: ``ServiceProcess`` (start, /readyz, /metrics, close).
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.append(str(TESTS_DIR))
from support.otlp import OtlpSink as OtlpSink  # noqa: E402
from support.runtime import ServiceProcess as ServiceProcess  # noqa: E402
from support.runtime import http_get as http_get  # noqa: E402
from support.runtime import rss_bytes as rss_bytes  # noqa: E402
from support.samples import ForeignAuditEvent as ForeignAuditEvent  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"

# Every consumer of a benchmark, in this process (settings read the environment) and in the
# service subprocesses, waits for fetches as `agentstream up` does on the embedded broker,
# which holds each fetch for the whole fetch_max_wait_ms (see FETCH_MAX_WAIT_MS).
os.environ.setdefault("AGENTSTREAM_FETCH_MAX_WAIT_MS", str(FETCH_MAX_WAIT_MS))
T = TypeVar("T")


def like_a_service_process() -> None:
    """The garbage-collector policy ``agentstream consume`` sets at start (``tune_gc`` with
    the default ``gc_gen0_threshold``), for the benchmarks that run services in-process: they
    measure what a service process does, not an interpreter with Python's defaults."""
    from agentstream.consumers.runtime.runner import tune_gc
    from agentstream.consumers.runtime.settings import ServiceSettings

    tune_gc(ServiceSettings.model_fields["gc_gen0_threshold"].default)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (sorted or not); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def broker_version() -> str:
    """``tansu 0.6.0`` (the embedded broker's own answer), or why it is unknown."""
    try:
        done = subprocess.run(
            [broker_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() or done.stderr.strip() or "unknown"
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc.__class__.__name__})"


def speed_probe() -> float:
    """Microseconds for a fixed pure-Python workload (dict inserts, formatting, a generator
    sum; best of 5): how fast the machine runs Python at this moment, recorded at the start and
    the end of every run. Shared machines here have run the same code at half speed for tens of
    minutes with a load average that showed nothing; this figure shows it."""

    def work() -> int:
        table: dict[str, int] = {}
        for i in range(2000):
            table[f"k{i}"] = i * 3
        return sum(v for v in table.values() if v % 2)

    return round(min(timeit.repeat(work, number=5, repeat=5)) / 5 * 1e6, 1)


SPEED_AT_START = speed_probe()


def machine_info() -> dict[str, Any]:
    """The machine, versions and date a result was measured on (recorded with every result)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiokafka": _version("aiokafka"),
        "msgspec": _version("msgspec"),
        "confluent_kafka": _version("confluent-kafka"),
        "broker": f"embedded {broker_version()}",
        "load_average_1m": round(load[0], 2) if load else None,
        "speed_probe_us": {"start": SPEED_AT_START, "end": speed_probe()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_results(area: str, results: dict[str, Any]) -> Path:
    """``benchmarks/results/<area>.json`` with ``results`` and the machine under ``machine``."""
    path = RESULTS_DIR / f"{area}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**results, "machine": machine_info()}, indent=2) + "\n")
    return path


class RssSampler:
    """Samples the RSS of some processes every ``interval`` s in a background task; keeps the
    peak and the last value of each."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            rss = rss_bytes(pid)
            if rss is not None:
                self.last[name] = rss
                self.peak[name] = max(self.peak.get(name, 0), rss)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()


@contextlib.asynccontextmanager
async def embedded_broker() -> AsyncIterator[EmbeddedBroker]:
    """An embedded broker for the run, ready to answer; always stopped on exit."""
    broker = EmbeddedBroker()
    broker.start()
    try:
        await broker.wait_ready()
        await wait_for_broker({"bootstrap_servers": broker.bootstrap_servers})
        yield broker
    finally:
        broker.stop()


async def produce(
    settings: KafkaSettings,
    events: Sequence[Event],
    *,
    on_send: Callable[[Event], None] | None = None,
    linger_ms: int = 20,
    topic: str | None = None,
) -> None:
    """Send ``events`` (encoded, keyed and with headers as the publisher does) and wait for
    every acknowledgement: each to its type's topic, or all to ``topic`` when given.
    ``on_send`` runs just before each event is handed to the client."""
    producer = AIOKafkaProducer(
        **{**settings.producer_options(), "linger_ms": linger_ms, "max_batch_size": 262_144}
    )
    await producer.start()
    try:
        routing = settings.routing()
        futures = []
        for event in events:
            if on_send is not None:
                on_send(event)
            futures.append(
                await producer.send(
                    topic or routing.topic_for(event.type),
                    encode_event(event),
                    key=record_key(event),
                    headers=event_headers(event),
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def raw_getmany_rate(settings: KafkaSettings, topics: Sequence[str], count: int) -> float:
    """Events/s of a raw aiokafka ``getmany`` loop (no decoding, a fresh group) reading
    ``count`` records of ``topics``, from the first record received to the last: the ceiling
    of the client for a consumer benchmark."""
    consumer = AIOKafkaConsumer(
        *topics, **{**settings.consumer_options(), "group_id": f"raw-{uuid.uuid4().hex[:6]}"}
    )
    await consumer.start()
    try:
        seen, started = 0, None
        while seen < count:
            batches = await consumer.getmany(timeout_ms=200, max_records=2_000)
            for records in batches.values():
                if started is None:
                    started = time.perf_counter()
                seen += len(records)
        assert started is not None
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def produce_at_rate(
    settings: KafkaSettings, events: Sequence[Event], rate: int, *, tick: float = 0.01
) -> float:
    """Send ``events`` at ``rate`` events/s (in ticks of ``tick`` s) and wait for every
    acknowledgement. Each event's ``timestamp`` is set to the moment it is handed to the client
    (as an agent stamps it when it emits), so latencies measured from the event timestamp start
    there. Returns the achieved rate in events/s."""
    producer = AIOKafkaProducer(**{**settings.producer_options(), "linger_ms": 1})
    await producer.start()
    try:
        routing = settings.routing()
        per_tick = max(1, int(rate * tick))
        started = time.perf_counter()
        futures = []
        for i in range(0, len(events), per_tick):
            delay = started + (i // per_tick) * tick - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = datetime.now(UTC)
            for event in events[i : i + per_tick]:
                event.timestamp = now
                futures.append(
                    await producer.send(
                        routing.topic_for(event.type),
                        encode_event(event),
                        key=record_key(event),
                        headers=event_headers(event),
                    )
                )
        elapsed = time.perf_counter() - started
        await asyncio.gather(*futures)
        return len(events) / elapsed if elapsed > 0 else float("nan")
    finally:
        await producer.stop()


# --- the seeds' in-process baselines (re-implemented from the seed documentation) -------------


@dataclass
class CorailEvent:
    type: Any  # a string, or an enum member as Corail's own EventType
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    agent_id: str = ""
    user_id: str = ""
    session_id: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class CorailBus:
    """Corail's EventBus as documented: history first (the last 1,000 events), then the exact
    and ``*`` handlers concurrently, a failing one logged."""

    max_history = 1000

    def __init__(self) -> None:
        self._handlers: dict[Any, list[Callable[[CorailEvent], Awaitable[None]]]] = {}
        self._history: list[CorailEvent] = []

    def subscribe(self, key: Any, handler: Callable[[CorailEvent], Awaitable[None]]) -> None:
        self._handlers.setdefault(key, []).append(handler)

    async def emit(self, event: CorailEvent) -> None:
        self._history.append(event)
        if len(self._history) > self.max_history:
            self._history = self._history[-self.max_history :]
        handlers = self._handlers.get(event.type, []) + self._handlers.get("*", [])
        if handlers:
            await asyncio.gather(*(self._safe_call(h, event) for h in handlers))

    async def _safe_call(
        self, handler: Callable[[CorailEvent], Awaitable[None]], event: CorailEvent
    ) -> None:
        try:
            await handler(event)
        except Exception:
            logging.getLogger("corail").exception("handler failed")


TOOL_ARGS = {"query": "weather in paris today", "units": "metric", "max_results": 3}


class AuditEmitterBase:
    """What an ``AuditEmitter`` of Calute (and Xerxes) holds: a collector, the session id
    stamped on every event and the lock around ``collector.emit``; subclasses add the
    ``emit_*`` methods."""

    def __init__(self, collector: Any, session_id: str | None) -> None:
        self._collector = collector
        self._session_id = session_id
        self._lock = threading.Lock()


# --- per-call latency (the emit and adoption benchmarks) ----------------------------------------


@dataclass
class Row:
    """One case of a per-call latency table, in microseconds."""

    case: str
    kind: str
    n: int
    median_us: float
    p99_us: float
    mean_us: float


def summarise(case: str, kind: str, samples_ns: list[int]) -> Row:
    """The median, p99 and mean of ``samples_ns`` (nanoseconds) as a :class:`Row`."""
    samples = sorted(samples_ns)
    n = len(samples)
    return Row(
        case=case,
        kind=kind,
        n=n,
        median_us=statistics.median(samples) / 1000,
        p99_us=samples[min(n - 1, int(n * 0.99))] / 1000,
        mean_us=statistics.fmean(samples) / 1000,
    )


def print_rows(rows: Sequence[Row], *, case: str, kind: str, widths: tuple[int, int]) -> None:
    """A latency table: ``case`` and ``kind`` headings of ``widths``, then median, p99, mean."""
    c, k = widths
    print(f"{case:{c}} {kind:{k}} {'median us':>10} {'p99 us':>9} {'mean us':>9}")
    for r in rows:
        print(f"{r.case:{c}} {r.kind:{k}} {r.median_us:10.2f} {r.p99_us:9.2f} {r.mean_us:9.2f}")


def run_on_broker(bench: Callable[[str], Awaitable[T]]) -> T:
    """``asyncio.run(bench(bootstrap_servers))`` against an embedded broker started for it and
    always stopped."""

    async def run() -> T:
        async with embedded_broker() as broker:
            return await bench(broker.bootstrap_servers)

    return asyncio.run(run())


def time_sync(call: Callable[[int], object], n: int) -> list[int]:
    """Nanoseconds each of ``call(0)`` ... ``call(n - 1)`` took."""
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        call(i)
        out[i] = clock() - t0
    return out


# --- traffic and service processes -------------------------------------------------------------


def agent_turns(count: int, *, sessions: int = 200, calls: int = 5) -> list[Event]:
    """About ``count`` events of realistic agent turns (message, round, LLM call, ``calls`` tool
    calls, turn end), sessions interleaved turn by turn; one turn in ten loops on one tool."""
    events: list[Event] = []
    turn = 0
    while len(events) < count:
        session = turn % sessions
        envelope: dict[str, Any] = {
            "agent_id": f"agent-{session % 13}",
            "user_id": f"user-{session % 29}",
            "session_id": f"bench-{session:05d}",
            "turn_id": f"{turn:012x}",
        }
        looping = turn % 10 == 0
        events += [
            Event(type="message.received", data={"content": "What changed?"}, **envelope),
            Event(type="turn.started", data={"round": 0}, **envelope),
            Event(type="llm.call.started", data={"round": 0, "model": "m"}, **envelope),
            Event(
                type="llm.call.completed",
                data={
                    "round": 0,
                    "stop_reason": "tool_use",
                    "model": "m",
                    "input_tokens": 800,
                    "output_tokens": 60,
                },
                **envelope,
            ),
        ]
        for i in range(calls):
            args = {"q": "kafka"} if looping else {"q": "kafka", "page": i}
            events.append(
                Event(type="tool.called", data={"name": "search", "args": args}, **envelope)
            )
        events.append(
            Event(type="turn.ended", data={"round": 1, "stop_reason": "end_turn"}, **envelope)
        )
        turn += 1
    return events


async def committed_total(settings: KafkaSettings, group: str, topic: str, partitions: int) -> int:
    """Sum of the offsets ``group`` committed on ``topic`` (partitions named: the embedded broker
    fails a request for all of a group's partitions before its first commit)."""
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(group_id=group, **settings.consumer_options())
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            offset = await consumer.committed(TopicPartition(topic, p))
            total += offset if offset and offset > 0 else 0
        return total
    finally:
        await consumer.stop()
