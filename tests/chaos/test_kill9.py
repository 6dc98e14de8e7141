"""kill -9 of each service, repeated, while the stream flows: after a last instance drains the
stream, nothing is lost (at-least-once input, idempotent or deterministic output)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.chaos import (
    Figures,
    Row,
    chunks,
    end_offsets,
    read_all,
    size,
    sqlite_rows,
    traffic,
)
from support.otlp import OtlpSink
from support.produce import produce_events
from support.runtime import ServiceProcess, committed_offsets, wait_until

from agentstream.schemas import decode_record
from agentstream.schemas.settings import KafkaSettings

KILLS = size(1, 6)
SESSIONS = size(8, 60)


@pytest.fixture
def span_sink() -> Iterator[OtlpSink]:
    sink = OtlpSink(keep_spans=True)
    try:
        yield sink
    finally:
        sink.close()


async def drained(settings: KafkaSettings, group: str) -> bool:
    topic = settings.routing().events
    ends = await end_offsets(settings, [topic])
    committed = await committed_offsets(settings, group, [topic])
    return all(committed.get(tp, 0) >= end for tp, end in ends.items())


@pytest.mark.parametrize("service", ["persistence", "loops", "budget", "metrics", "tracing"])
async def test_kill_9_repeatedly_loses_nothing(
    service: str,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    span_sink: OtlpSink,
    group_env: dict[str, str],
) -> None:
    sent = traffic(SESSIONS)
    options: list[str] = []
    if service == "persistence":
        options = ["--store", f"sqlite:///{tmp_path / 'store.db'}"]
    elif service == "tracing":
        options = ["--otlp-endpoint", span_sink.url]
    group = f"{kafka_settings.topic_prefix}.{service}"
    rng = random.Random(f"kill9-{service}")
    figures = Figures(
        f"kill9-{service}",
        f"kill -9 of the {service} service, {KILLS} times mid-stream",
        "nothing lost; output idempotent (store) or with deterministic ids (alerts, traces)",
    )
    parts = chunks(sent.events, KILLS + 1)
    for part in parts[:-1]:
        await produce_events(kafka_settings, part)
        with ServiceProcess(
            service, kafka_settings, *options, env=group_env, log_dir=tmp_path
        ) as process:
            await process.wait_ready()
            await asyncio.sleep(rng.uniform(0.1, 1.5))  # the chaos: a random moment mid-work
            process.kill()
    await produce_events(kafka_settings, parts[-1])
    with ServiceProcess(
        service, kafka_settings, *options, env=group_env, log_dir=tmp_path
    ) as process:
        await process.wait_ready()
        await wait_until(lambda: drained(kafka_settings, group), timeout=90, what="drained")
        await process.stop()
    sent_ids = {e.event_id for e in sent.events}
    row = Row(service, len(sent.events))
    if service == "persistence":
        ids = [r[0] for r in sqlite_rows(tmp_path / "store.db")]
        row.stored = len(set(ids) & sent_ids)
        row.lost = len(sent_ids - set(ids))
        row.duplicated = len(ids) - len(set(ids))
        row.note = "rows in the store = distinct event ids (inserts idempotent by event_id)"
        assert row.lost == 0 and row.duplicated == 0
    elif service in ("loops", "budget"):
        records = await read_all(kafka_settings, kafka_settings.routing().alerts)
        alerts = [decode_record(r.value, r.headers) for r in records]
        findings: set[tuple[object, ...]]
        if service == "loops":
            alerts = [a for a in alerts if a.type.startswith("audit.tool_loop_")]
            expected = sent.loop_alerts
            findings = {(a.session_id, a.turn_id, a.type) for a in alerts}
        else:
            alerts = [a for a in alerts if a.type.startswith("budget.")]
            alerts = [a for a in alerts if a.data.get("dimension") == "rounds"]
            expected = sent.budget_signals
            findings = {(a.session_id, a.type, a.data.get("scope")) for a in alerts}
        alert_ids = {a.event_id for a in alerts}
        row.alerted = len(findings)
        row.lost = max(0, expected - len(findings))
        row.duplicated = len(alerts) - len(findings)
        row.note = f"{expected} findings expected; {len(alert_ids)} distinct alert ids"
        assert len(findings) == expected, row
        assert len(alert_ids) == len(findings), "a finding alerted twice under different ids"
    elif service == "tracing":
        spans = list(span_sink.spans)
        traces = {trace for trace, _ in spans}
        row.alerted = None
        row.stored = len(traces)
        row.lost = max(0, sent.turns - len(traces))
        row.duplicated = len(spans) - len(set(spans))
        row.note = f"stored = traces exported ({sent.turns} turns); duplicated = spans re-exported"
        assert len(traces) == sent.turns, row
    else:
        row.note = (
            "lost = offsets the group never committed (each is committed only after its event "
            "was counted); the counts of a killed process die with it, as Prometheus counters "
            "do (a counter reset), so duplicates are not observable from outside"
        )
    figures.rows.append(row)
    figures.details = {"kills": KILLS, "sessions": SESSIONS, "turns": sent.turns}
    figures.write()
