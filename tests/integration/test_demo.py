"""The demo's scenario (pure, seed-determined) and a short demo run against a real broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.produce import produce_events
from support.runtime import http_get, read_records

from agentstream.consumers.broker import free_port
from agentstream.consumers.cli._demo.pods import Demo
from agentstream.consumers.cli._demo.scenario import (
    BUDGET_KINDS,
    LOOP_KINDS,
    PlannedSession,
    agent_sessions,
    plan,
)
from agentstream.schemas.catalogue import EventType
from agentstream.schemas.codec import decode_record
from agentstream.schemas.envelope import Event
from agentstream.schemas.settings import KafkaSettings


def _tool_calls_per_turn(session: PlannedSession) -> dict[int, list[tuple[str, str]]]:
    """(tool name, arguments) of every call the loops service counts, per user turn."""
    calls: dict[int, list[tuple[str, str]]] = {}
    for step in session.steps:
        if step.action == "tool.called":
            args = json.dumps(step.fields["args"], sort_keys=True)
            calls.setdefault(step.turn, []).append((step.fields["name"], args))
        elif step.action == "emit_tool_call_attempt":
            calls.setdefault(step.turn, []).append((step.fields["tool_name"], step.fields["args"]))
    return calls


def _longest_same_run(calls: list[tuple[str, str]]) -> int:
    best = run = 0
    for i, call in enumerate(calls):
        run = run + 1 if i and call == calls[i - 1] else 1
        best = max(best, run)
    return best


def _longest_alternation(calls: list[tuple[str, str]]) -> int:
    """Longest run where each name differs from the previous and equals the one before it."""
    names = [name for name, _ in calls]
    best = run = 0
    for i, name in enumerate(names):
        if i == 0 or name == names[i - 1]:
            run = 1
        elif run == 1 or name == names[i - 2]:
            run += 1
        else:
            run = 2
        best = max(best, run)
    return best


def _budget(session: PlannedSession) -> tuple[int, int]:
    """(rounds, tokens) the budget service counts for the session."""
    rounds = sum(1 for s in session.steps if s.action == "turn.started")
    tokens = sum(
        s.fields["input_tokens"] + s.fields["output_tokens"]
        for s in session.steps
        if s.action == "llm.call.completed"
    )
    return rounds, tokens


def test_the_plan_is_a_function_of_the_seed() -> None:
    first = plan(7, 4, 12)
    assert first == plan(7, 4, 12)
    assert first != plan(8, 4, 12)
    # an agent's sessions do not depend on how many agents run, nor on how many are taken
    assert plan(7, 2, 5)[:5] == plan(7, 6, 5)[:5] == first[:5]
    assert first[:12] == list(itertools.islice(agent_sessions(7, 0), 12))
    families = Counter(s.family for s in first)
    assert families == {"corail": 24, "calute": 24}


def test_every_session_kind_crosses_exactly_its_thresholds() -> None:
    """Normal sessions stay below every loop and budget threshold of the services' defaults
    (no warning even); looping ones reach a critical loop; budget-busters reach a limit."""
    sessions = [s for seed in range(6) for s in plan(seed, 4, 20)]
    kinds = Counter(s.kind for s in sessions)
    assert set(kinds) == {*LOOP_KINDS, *BUDGET_KINDS, "normal"}
    for session in sessions:
        turns = _tool_calls_per_turn(session).values()
        same = max((_longest_same_run(c) for c in turns), default=0)
        alternation = max((_longest_alternation(c) for c in turns), default=0)
        calls = max((len(c) for c in turns), default=0)
        rounds, tokens = _budget(session)
        where = f"{session.key} ({session.kind}, {session.family})"
        if session.kind == "loop_same":
            assert same >= 5, where
        elif session.kind == "loop_pingpong":
            assert alternation >= 6, where
        else:
            assert same < 3 and alternation < 4 and calls < 25, where
        if session.kind == "budget_rounds":
            assert rounds >= 10, where
        elif session.kind == "budget_tokens":
            assert tokens >= 100_000 and rounds < 8, where
        else:
            assert rounds < 8 and tokens < 80_000, where


async def test_a_short_demo_publishes_both_families_as_typed_events(
    kafka_settings: KafkaSettings,
) -> None:
    demo = Demo(kafka_settings, agents=4, rate=400, seed=3, duration=1.5, run_id="t1")
    summary = await demo.run()
    assert summary.flushed and summary.dropped == 0
    assert summary.events == len(demo.published) == summary.delivered > 50
    # every session that started was played to its end
    per_session = Counter(session_id for _, _, session_id in demo.published)
    for record in summary.sessions:
        assert per_session[record.session_id] == record.events == record.planned_events

    records = await read_records(kafka_settings, kafka_settings.routing().events, summary.events)
    events = [decode_record(r.value, r.headers) for r in records]
    assert sorted(e.event_id for e in events) == sorted(i for i, _, _ in demo.published)
    for event in events:
        assert event.payload is not None  # the typed view decodes
        assert event.session_id.startswith("t1-") and event.agent_id and event.user_id
        assert event.turn_id.startswith(event.session_id)
    types = {e.type for e in events}
    assert EventType.TOOL_CALLED in types and EventType.LLM_CALL_COMPLETED in types
    assert EventType.AUDIT_TOOL_CALL_ATTEMPT in types and EventType.AUDIT_TURN_START in types
    corail = {e.agent_id for e in events if not e.type.startswith("audit.")}
    calute = {e.agent_id for e in events if e.type.startswith("audit.")}
    assert corail and calute and not corail & calute


async def test_with_obey_control_a_paused_corail_session_stops_early(
    kafka_settings: KafkaSettings,
) -> None:
    """A pause for the first session of a Corail pod (as the loops service sends it) stops
    that session at its next turn, round or tool call; the pod's next sessions play on."""
    demo = Demo(
        kafka_settings, agents=1, rate=10, seed=7, duration=4, run_id="t2", obey_control=True
    )
    first = next(agent_sessions(7, 0))
    target = first.session_id("t2")
    running = asyncio.create_task(demo.run())
    try:
        # the listener starts at the end of the topic: repeat the directive until it lands
        while not any(r.paused for r in demo.summary.sessions) and not running.done():
            pause = Event(
                type=EventType.CONTROL_AGENT_PAUSED,
                agent_id=first.agent_id,
                session_id=target,
                data={"reason": "test", "service": "loops"},
            )
            await produce_events(kafka_settings, [pause], topic=kafka_settings.routing().control)
            await asyncio.sleep(0.1)
        summary = await running
    finally:
        demo.stop()
        await asyncio.gather(running, return_exceptions=True)
    assert summary.sessions[0].session_id == target and summary.sessions[0].paused
    assert summary.sessions[0].events < len(first.steps)
    ended = [(t, sid) for _, t, sid in demo.published if sid == target]
    assert not ended or ended[-1][0] == EventType.TURN_ENDED
    assert len(summary.sessions) > 1 and not any(r.paused for r in summary.sessions[1:])
    for record in summary.sessions[1:]:
        assert record.events == record.planned_events


@pytest.mark.parametrize("seed", [11])
def test_the_demo_command_prints_a_summary_and_writes_its_manifest(
    kafka_settings: KafkaSettings, tmp_path: Path, seed: int
) -> None:
    manifest = tmp_path / "manifest.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentstream.consumers.cli",
            "demo",
            "--bootstrap-servers",
            kafka_settings.bootstrap_servers,
            "--topic-prefix",
            kafka_settings.topic_prefix,
            "--agents",
            "2",
            "--rate",
            "300",
            "--duration",
            "1",
            "--seed",
            str(seed),
            "--manifest",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(manifest.read_text())
    assert data["seed"] == seed and data["events"] == len(data["published"]) > 0
    assert data["delivered"] == data["events"] and data["dropped"] == 0
    played = [(s["key"], s["kind"]) for s in data["sessions"]]
    expected = {(s.key, s.kind) for s in plan(seed, 2, 50)}
    assert set(played) <= expected
    assert f"{data['events']} published" in result.stdout
    assert "looping sessions:" in result.stdout


async def test_the_demo_serves_its_pods_publisher_metrics(kafka_settings: KafkaSettings) -> None:
    """`demo --metrics-port` is what `up` scrapes for the dashboard's producer row: the
    publisher's own counters, on /metrics, while the pods run."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentstream.consumers.cli", "demo",
        "--bootstrap-servers", kafka_settings.bootstrap_servers,
        "--topic-prefix", kafka_settings.topic_prefix,
        "--agents", "2", "--rate", "200", "--duration", "20", "--metrics-port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        emitted = 0.0
        while emitted == 0:
            assert process.returncode is None, "the demo ended before it was scraped"
            try:
                status, body = await http_get(port, "/metrics")
            except OSError:  # not listening yet
                status, body = 0, b""
            if status == 200:
                line = re.search(rb"^agentstream_producer_events_emitted_total (\S+)$", body, re.M)
                emitted = float(line.group(1)) if line else 0.0
            await asyncio.sleep(0.1)
        assert b'agentstream_producer_events_dropped_total{reason="queue_full"} 0.0' in body
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


DEMO = [sys.executable, "-m", "agentstream.consumers.cli", "demo"]


def test_a_second_signal_gives_up_the_flush() -> None:
    """Without a broker the flush waits its 30 s: a second Ctrl-C did not end it (35 s in
    all, and nothing said it was waiting)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens
    process = subprocess.Popen(
        [*DEMO, "--bootstrap-servers", nowhere, "--agents", "2", "--rate", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("demo: 2 agents")  # running
        process.send_signal(signal.SIGINT)
        for line in process.stdout:  # the client's connection errors come in between
            if "finishing sessions, flushing (again to give up)" in line:
                break
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)  # well before the flush's 30 s
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 1, output
    assert "not waiting for the flush any more" in output and "Traceback" not in output


def test_a_taken_metrics_port_and_a_manifest_nowhere_are_said_before_the_run(
    tmp_path: Path,
) -> None:
    """One was `OSError: [Errno 98] Address already in use` (which port?), the other a
    FileNotFoundError after the whole run, its events published."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for options, expected in (
            (["--metrics-port", str(port)], f"expected --metrics-port {port} free to serve"),
            (["--manifest", str(tmp_path / "none" / "m.json")], "expected --manifest in an"),
        ):
            result = subprocess.run(
                [*DEMO, "--bootstrap-servers", "127.0.0.1:1", "--duration", "30", *options],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 2, result.stdout + result.stderr
            assert expected in result.stderr and "published" not in result.stdout
