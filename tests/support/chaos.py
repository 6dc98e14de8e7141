"""Helpers of the fault-injection suite (``tests/chaos``): its size, the traffic it sends, what
it reads back (end offsets, the SQLite store), and the figures each scenario records for
``docs/reliability.md``. The TCP forwarder whose address goes dark is ``support.proxy``."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings

FULL = os.environ.get("AGENTSTREAM_TEST_CHAOS", "").lower() == "full"
RESULTS_DIR = Path(
    os.environ.get(
        "AGENTSTREAM_TEST_CHAOS_RESULTS", Path(__file__).resolve().parents[1] / "chaos" / "results"
    )
)
CALLS_PER_TURN = 5
TURNS_PER_SESSION = (
    12  # rounds: past the default session limit of 10 (warning at 8, exceeded at 10)
)


# A killed member is noticed after the session timeout: short, so a kill costs seconds, not tens.
FAST_GROUP_ENV = {
    "AGENTSTREAM_SESSION_TIMEOUT_MS": "2000",
    "AGENTSTREAM_HEARTBEAT_INTERVAL_MS": "500",
}


def size(small: int, full: int) -> int:
    """``full`` with ``AGENTSTREAM_TEST_CHAOS=full`` (``make chaos``), else ``small``."""
    return full if FULL else small


def turn_events(session: int, turn: int) -> list[Event]:
    """One user turn: the message, a round, an LLM call, five tool calls, the turn's end. One
    turn in four loops (the same call five times: a loop warning at the 3rd, a block at the 5th)."""
    envelope: dict[str, Any] = {
        "agent_id": f"agent-{session % 5}",
        "user_id": f"user-{session % 7}",
        "session_id": f"chaos-{session:05d}",
        "turn_id": f"{session:06x}{turn:06x}",
    }
    looping = turn % 4 == 0
    events = [
        Event(type="message.received", data={"content": f"question {turn}"}, **envelope),
        Event(type="turn.started", data={"round": turn}, **envelope),
        Event(type="llm.call.started", data={"round": turn, "model": "m"}, **envelope),
        Event(
            type="llm.call.completed",
            data={
                "round": turn,
                "stop_reason": "tool_use",
                "model": "m",
                "input_tokens": 100,
                "output_tokens": 20,
            },
            **envelope,
        ),
    ]
    for i in range(CALLS_PER_TURN):
        args = {"q": "kafka"} if looping else {"q": "kafka", "page": i}
        events.append(Event(type="tool.called", data={"name": "search", "args": args}, **envelope))
    events.append(
        Event(type="turn.ended", data={"round": turn, "stop_reason": "end_turn"}, **envelope)
    )
    return events


@dataclass(frozen=True)
class Traffic:
    events: list[Event]
    sessions: int
    turns: int
    loop_alerts: int  # loop warnings + blocks the traffic must raise
    budget_signals: int  # session round warnings + exceedances


def traffic(sessions: int) -> Traffic:
    """``sessions`` sessions of ``TURNS_PER_SESSION`` turns, interleaved turn by turn."""
    events: list[Event] = []
    for turn in range(TURNS_PER_SESSION):
        for session in range(sessions):
            events.extend(turn_events(session, turn))
    looping = sum(1 for t in range(TURNS_PER_SESSION) if t % 4 == 0)
    return Traffic(
        events, sessions, sessions * TURNS_PER_SESSION, 2 * looping * sessions, 2 * sessions
    )


def chunks(items: list[Event], parts: int) -> list[list[Event]]:
    step = -(-len(items) // parts)
    return [items[i : i + step] for i in range(0, len(items), step)]


async def end_offsets(settings: KafkaSettings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**settings.consumer_options())
    await consumer.start()
    try:
        await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


def sqlite_rows(path: Path) -> list[tuple[str, str, int, int, int, int]]:
    """(event_id, kafka_topic, kafka_partition, kafka_offset, timestamp_us, ingested_at_us)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return list(
            db.execute(
                "SELECT event_id, kafka_topic, kafka_partition, kafka_offset, timestamp_us, "
                "ingested_at_us FROM events"
            )
        )


@dataclass
class Row:
    """One line of a scenario's table. ``None`` = not applicable to this subject."""

    subject: str
    sent: int
    stored: int | None = None
    alerted: int | None = None
    lost: int = 0
    duplicated: int | None = None
    note: str = ""
    lost_counted: int | None = None  # of ``lost``, how many a metric counted (never silent)


@dataclass
class Figures:
    scenario: str
    title: str
    promise: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.scenario}.json"
        data = asdict(self)
        data.pop("started")
        data["size"] = "full" if FULL else "small"
        data["seconds"] = round(time.monotonic() - self.started, 1)
        data["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path


async def read_all(settings: KafkaSettings, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its current end offsets (no consumer group)."""
    ends = await end_offsets(settings, [topic])
    consumer = AIOKafkaConsumer(**{**settings.consumer_options(), "auto_offset_reset": "earliest"})
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning()
        found: list[Any] = []
        deadline = time.monotonic() + 30
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: could not read up to {ends}")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
        return found
    finally:
        await consumer.stop()
