"""``agentstream consume`` processes: endpoints, SIGTERM, kill -9 and rebalances."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition
from support.produce import produce_events
from support.runtime import (
    ServiceProcess,
    committed_offsets,
    http_get,
    read_records,
    service_process,
    wait_until,
)

from agentstream.consumers.broker import free_port
from agentstream.schemas import Event, new_event_id
from agentstream.schemas.settings import KafkaSettings

RECORDER = "support.recording_service:RECORDER"
AUDITOR = "support.recording_service:AUDITOR"
FAST_GROUP = {"AGENTSTREAM_SESSION_TIMEOUT_MS": "6000", "AGENTSTREAM_HEARTBEAT_INTERVAL_MS": "500"}
QUICK = {"AGENTSTREAM_COMMIT_INTERVAL_MS": "100", "AGENTSTREAM_FETCH_MAX_WAIT_MS": "100"}


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _done(*paths: Path) -> set[str]:
    return {fields[1] for path in paths for fields in _lines(path) if fields[0] == "done"}


def _events(count: int, sessions: int) -> list[Event]:
    return [
        Event(
            event_id=new_event_id(),
            type="tool.called",
            session_id=f"session-{i % sessions}",
            seq=i,
            data={"name": "search", "args": {}},
        )
        for i in range(count)
    ]


async def test_endpoints_and_clean_exit_on_sigterm_during_a_slow_handler(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    out = tmp_path / "recorder.txt"
    with ServiceProcess(RECORDER, kafka_settings, "--record-file", str(out), env=QUICK) as proc:
        await proc.wait_ready()
        status, body = await http_get(proc.port, "/healthz")
        assert status == 200
        status, body = await http_get(proc.port, "/metrics")
        assert status == 200
        assert b'agentstream_consumer_assigned_partitions{service="recorder"} 4.0' in body
        slow = Event(type="tool.called", session_id="s-slow", data={"name": "x", "slow_ms": 1500})
        await produce_events(kafka_settings, [slow])
        await wait_until(lambda: any(f[0] == "start" for f in _lines(out)), what="handler started")
        assert await proc.terminate() == 0, proc.log()
    [start, done] = _lines(out)
    assert (start[0], done[0]) == ("start", "done"), "the slow handler finished before exit"
    tp = TopicPartition(done[2], int(done[3]))
    committed = await committed_offsets(kafka_settings, f"{kafka_settings.topic_prefix}.recorder")
    assert committed[tp] == int(done[4]) + 1, "its offset was committed before exit"
    assert "exited cleanly" in proc.log()


async def test_service_process_helper_runs_a_service_until_sigterm(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    out = tmp_path / "auditor.txt"
    async with service_process(AUDITOR, kafka_settings, "--record-file", str(out), env=QUICK) as p:
        await produce_events(kafka_settings, _events(5, sessions=2))
        await wait_until(lambda: len(_done(out)) == 5)
        status, body = await http_get(p.port, "/metrics")
        assert status == 200
        consumed = 'outcome="consumed",service="auditor",type="tool.called"} 5.0'
        assert consumed in body.decode()
    assert p.process is not None and p.process.returncode == 0


async def test_waiting_for_the_broker_is_alive_not_ready_and_stops_cleanly() -> None:
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", topic_prefix="none")
    with ServiceProcess(RECORDER, nowhere) as proc:

        async def serving() -> bool:
            try:
                return (await http_get(proc.port, "/healthz"))[0] == 200
            except OSError:
                return False

        await wait_until(serving, what="HTTP up while the broker is unreachable")
        assert (await http_get(proc.port, "/readyz"))[0] == 503
        assert await proc.terminate(timeout=15) == 0, proc.log()


async def test_unknown_service_names_the_available_ones(kafka_settings: KafkaSettings) -> None:
    with ServiceProcess("no-such-service", kafka_settings) as proc:
        code = await proc.wait()
    assert code == 2
    assert "expected a service among" in proc.log()
    assert "got 'no-such-service'" in proc.log()


@pytest.mark.slow
async def test_three_instances_and_another_service_survive_a_kill_9(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    env = {**QUICK, **FAST_GROUP, "AGENTSTREAM_DELAY_MS": "15"}
    files = [tmp_path / f"recorder-{i}.txt" for i in range(3)]
    audit = tmp_path / "auditor.txt"
    procs = [
        ServiceProcess(RECORDER, kafka_settings, "--record-file", str(f), env=env) for f in files
    ]
    auditor = ServiceProcess(AUDITOR, kafka_settings, "--record-file", str(audit), env=env)
    try:
        for proc in [*procs, auditor]:
            proc.start()
        for proc in [*procs, auditor]:
            await proc.wait_ready()
        events = _events(240, sessions=24)
        ids = {e.event_id for e in events}
        await produce_events(kafka_settings, events)
        # Mid-stream: kill -9 the busiest recorder while it is working.
        await wait_until(lambda: len(_done(*files)) >= 40, what="processing under way")
        victim = max(range(3), key=lambda i: len(_lines(files[i])))
        procs[victim].kill()
        before = _done(*files)
        assert len(before) < len(ids), "killed after everything was done: nothing tested"
        await wait_until(lambda: _done(*files) >= ids, timeout=40, what="recorders caught up")
        await wait_until(lambda: _done(audit) >= ids, timeout=20, what="auditor caught up")
        records = await read_records(kafka_settings, kafka_settings.routing().events, len(events))
        ends: dict[TopicPartition, int] = defaultdict(int)
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            ends[tp] = max(ends[tp], r.offset + 1)

        def ends_of(topic: str, partition: int) -> int:
            return ends[TopicPartition(topic, partition)]

        # The survivors took over the victim's partitions, and committed everything.
        survivors = [f for i, f in enumerate(files) if i != victim]
        survivors_did = _done(*survivors)
        # Per partition the victim held at the end: everything after its last finished
        # record was handled by a survivor.
        last_done: dict[tuple[str, int], int] = {}
        for fields in _lines(files[victim]):
            if fields[0] == "done":
                key = (fields[2], int(fields[3]))
                last_done[key] = max(last_done.get(key, -1), int(fields[4]))
        survivor_offsets = {
            (f[2], int(f[3]), int(f[4]))
            for path in survivors
            for f in _lines(path)
            if f[0] == "done"
        }
        resumed = 0
        for (topic, partition), last in last_done.items():
            end = ends_of(topic, partition)
            missing = {(topic, partition, o) for o in range(last + 1, end)} - survivor_offsets
            assert not missing, f"not resumed on {topic}[{partition}]: {sorted(missing)[:5]}"
            resumed += end - last - 1
        assert resumed, "the victim had finished its partitions: nothing was resumed"
        group = f"{kafka_settings.topic_prefix}.recorder"

        async def all_committed() -> bool:
            return await committed_offsets(kafka_settings, group) == dict(ends)

        await wait_until(all_committed, timeout=15, what="recorder group committed everything")
        # Whatever the victim started but had not finished was redone by a survivor.
        unfinished = {f[1] for f in _lines(files[victim]) if f[0] == "start"} - _done(files[victim])
        assert unfinished <= survivors_did
        for i, proc in enumerate(procs):
            if i != victim:
                assert await proc.terminate() == 0, proc.log()
        assert await auditor.terminate() == 0, auditor.log()
    finally:
        for proc in [*procs, auditor]:
            proc.kill()
