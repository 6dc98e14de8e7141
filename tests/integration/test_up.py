"""``agentstream up --duration 30`` end to end: embedded broker, the five services as
processes, the demo agents; afterwards the alerts, the store, the scrapes and the process
table are checked against what the demo says it played (its manifest)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentstream.consumers.broker import free_port
from agentstream.consumers.cli._demo.scenario import plan
from agentstream.consumers.cli._up.monitor import metric_sums
from agentstream.consumers.cli._up.processes import pick_port
from agentstream.consumers.cli._up.run import service_environment


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and _alive(int(entry.name)):
            found.append(f"{entry.name} {cmdline}")
    return found


def _up_command(tmp_path: Path, *options: str) -> list[str]:
    """``agentstream up --plain`` with its store and logs in ``tmp_path`` (``events.db``,
    ``logs/``), then ``options``."""
    return [
        sys.executable,
        "-m",
        "agentstream.consumers.cli",
        "up",
        "--plain",
        "--store",
        str(tmp_path / "events.db"),
        "--log-dir",
        str(tmp_path / "logs"),
        *options,
    ]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summary(logs: Path) -> dict[str, Any]:
    """``up-summary.json`` as up last wrote it; empty before it exists or while it is written."""
    with contextlib.suppress(OSError, ValueError):
        found: dict[str, Any] = json.loads((logs / "up-summary.json").read_text())
        return found
    return {}


@contextlib.contextmanager
def _reaped(process: subprocess.Popen[str]) -> Iterator[None]:
    """Kill ``process`` on the way out if it still runs: a failed assertion must not leave
    up and its children running."""
    try:
        yield
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _wait_for(process: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    """Poll ``ready`` while ``process`` runs: fail with its output if it exits first, or
    after 60 s."""
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"no {what} within 60 s"
        time.sleep(0.2)


@pytest.mark.slow
def test_up_runs_the_pipeline_and_leaves_nothing_behind(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    store = tmp_path / "events.db"
    result = subprocess.run(
        _up_command(
            tmp_path,
            "--duration",
            "30",
            "--seed",
            "7",
            "--obey-control",
            "--partitions",
            "2",
            "--first-port",
            str(free_port()),
            "--drain-timeout",
            "60",  # a loaded machine may need longer than the default 20 s to catch up
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((logs / "up-summary.json").read_text())
    manifest = json.loads((logs / "demo-manifest.json").read_text())
    alerts = _jsonl(logs / "alerts.jsonl")

    # what the demo played
    sessions = manifest["sessions"]
    looping = {s["session_id"] for s in sessions if s["kind"].startswith("loop")}
    busting = {s["session_id"] for s in sessions if s["kind"].startswith("budget")}
    assert looping and busting, [s["kind"] for s in sessions]
    assert manifest["delivered"] == manifest["events"] == len(manifest["published"]) > 300
    # each session played its plan for seed 7 to the end, unless a pause directive stopped
    # it (Corail pods obey them with --obey-control): only looping sessions get paused
    planned = {s.key: s for s in plan(7, manifest["agents"], 50)}
    for played in sessions:
        steps = len(planned[played["key"]].steps)
        assert planned[played["key"]].kind == played["kind"]
        if played["paused"]:
            assert played["kind"].startswith("loop") and played["family"] == "corail"
            assert played["events"] <= steps, played
        else:
            assert played["events"] == steps, played

    # looping sessions, and only they, were blocked by the loops service
    blocked = {
        a["session_id"]
        for a in alerts
        if a["type"] == "audit.tool_loop_block" and a["source"] == "agentstream-loops"
    }
    tail = result.stdout[-3000:]
    assert blocked == looping, tail
    # budget-busting sessions, and only they, exceeded their session budget
    exceeded = {
        a["data"]["scope"].removeprefix("session:")
        for a in alerts
        if a["type"] == "budget.exceeded"
        and a["source"] == "agentstream-budget"
        and a["data"]["scope"].startswith("session:")
    }
    assert exceeded == busting, tail

    # the store holds every demo event, and the alerts too (persistence reads every topic)
    with contextlib.closing(sqlite3.connect(store)) as db:
        stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
    published = {event_id for event_id, _, _ in manifest["published"]}
    assert published <= stored, f"{len(published - stored)} demo events not stored:\n{tail}"
    assert {a["event_id"] for a in alerts} <= stored
    # the command it suggests reads that store (`agentstream sessions` alone reads ./agentstream.db)
    hint = f"try `agentstream sessions --store sqlite:///{store.resolve()}`"
    assert hint in result.stdout, tail

    # every service answered /metrics, caught up, and exited cleanly on SIGTERM
    assert set(summary["services"]) == {"persistence", "loops", "budget", "metrics", "tracing"}
    for name, service in summary["services"].items():
        assert service["ready"] and service["scrapes_ok"] > 0, name
        assert service["exit_code"] == 0, name
        assert service["lag"] == 0, f"{name}:\n{tail}"
    assert summary["events_counted"] >= manifest["events"]
    assert summary["demo"]["exit_code"] == 0

    # nothing left running: no child of up, not the broker
    pids = [*summary["children"], summary["embedded_broker_pid"]]
    assert all(isinstance(pid, int) for pid in pids)
    assert [pid for pid in pids if _alive(pid)] == []
    assert _processes_mentioning(f"tcp://{summary['bootstrap_servers']}") == []
    assert _processes_mentioning(str(logs)) == []
    # nothing else written in the working directory than the store (and its WAL files) and logs
    assert {p.name for p in tmp_path.iterdir()} - {"logs"} <= {
        "events.db",
        "events.db-wal",
        "events.db-shm",
    }


@pytest.mark.slow
def test_sigint_stops_demo_services_and_broker_cleanly(tmp_path: Path) -> None:
    """Ctrl-C while the demo runs, as a terminal sends it: SIGINT to up's whole process group
    (its children, the broker included, are in groups of their own, so only up gets it). The
    demo finishes its sessions and flushes, the services catch up, drain and commit through
    the broker, then the broker stops; every published event is stored, nothing is left."""
    logs = tmp_path / "logs"
    store = tmp_path / "events.db"
    command = _up_command(
        tmp_path,
        "--agents",
        "4",
        "--rate",
        "100",
        "--partitions",
        "2",
        "--first-port",
        str(free_port()),
        "--drain-timeout",
        "60",
    )
    unset = ("OTEL_EXPORTER_OTLP_", "AGENTSTREAM_OTLP_", "AGENTSTREAM_EXPORT_MAX_RETRIES")
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # up leads a process group, as in a terminal
        env={k: v for k, v in os.environ.items() if not k.startswith(unset)},  # no OTLP endpoint
    )
    alerts = logs / "alerts.jsonl"
    with _reaped(process):
        _wait_for(process, lambda: alerts.exists() and bool(_jsonl(alerts)), "an alert")
        running = json.loads((logs / "up-summary.json").read_text())
        assert running["phase"] == "running"
        for name, service in running["services"].items():  # see broker.FETCH_MAX_WAIT_MS
            environ = Path(f"/proc/{service['pid']}/environ").read_bytes().split(b"\0")
            wait = b"20" if name == "loops" else b"50"  # loops keeps its own, shorter wait
            assert b"AGENTSTREAM_FETCH_MAX_WAIT_MS=" + wait in environ, name
            assert b"AGENTSTREAM_EXPORT_MAX_RETRIES=0" in environ, name  # no OTLP endpoint
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the foreground group
        output, _ = process.communicate(timeout=100)
    assert process.returncode == 0, output[-3000:]
    summary = json.loads((logs / "up-summary.json").read_text())
    manifest = json.loads((logs / "demo-manifest.json").read_text())
    assert summary["phase"] == "stopped" and summary["demo"]["exit_code"] == 0, output[-3000:]
    assert all(s["exit_code"] == 0 for s in summary["services"].values()), summary["services"]
    # no scrape after the last figures: a stopping service's refused connection is no error
    assert all(s["last_error"] is None for s in summary["services"].values()), summary["services"]
    with contextlib.closing(sqlite3.connect(store)) as db:
        stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
    missing = {event_id for event_id, _, _ in manifest["published"]} - stored
    assert not missing, f"{len(missing)} demo events not stored:\n{output[-3000:]}"
    pids = [*running["children"], running["embedded_broker_pid"]]
    assert [pid for pid in pids if _alive(pid)] == []
    assert _processes_mentioning(str(logs)) == []


@pytest.mark.slow
def test_a_broker_that_dies_stops_up_with_a_clear_error(tmp_path: Path) -> None:
    """The embedded broker killed under a running pipeline: up says so, stops its children
    without waiting in vain for flushes and commits, exits 1 and leaves nothing running."""
    logs = tmp_path / "logs"
    command = _up_command(tmp_path, "--agents", "2", "--partitions", "2", "--first-port", "0")
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with _reaped(process):
        _wait_for(process, lambda: _summary(logs).get("phase") == "running", "up running")
        running = _summary(logs)
        ports = [service["port"] for service in running["services"].values()]
        assert len(set(ports)) == 5 and all(port > 1023 for port in ports), ports  # 0: free
        os.kill(running["embedded_broker_pid"], signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output[-3000:]
    assert f"the embedded broker exited with code -{signal.SIGKILL}" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    summary = json.loads((logs / "up-summary.json").read_text())
    assert summary["phase"] == "stopped"
    assert summary["error"].startswith("the embedded broker exited")
    assert [pid for pid in running["children"] if _alive(pid)] == []
    assert _processes_mentioning(str(logs)) == []


def test_a_store_that_cannot_be_made_is_a_usage_error_before_anything_runs(
    tmp_path: Path,
) -> None:
    """It exited 1 (every other command says 2 for a setting found wrong) after a summary of
    alerts of a pipeline that never ran."""
    command = _up_command(tmp_path, "--first-port", "0")
    command[command.index("--store") + 1] = str(tmp_path / "nodir" / "x.db")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "expected --store in an existing directory" in result.stdout + result.stderr
    assert "alerts:" not in result.stdout and "Traceback" not in result.stderr


def test_a_taken_port_is_replaced_by_a_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        other = pick_port(busy, set())
        assert other != busy
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", other))
    free = free_port()
    assert pick_port(free, set()) == free
    assert pick_port(free, {free}) != free  # already given to another service


def test_the_services_never_share_a_group_id_from_the_environment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With AGENTSTREAM_GROUP_ID set, the five services split one group's partitions: the
    store got a share of the events, no alert came, and up ended with exit 0."""
    environ = {"AGENTSTREAM_GROUP_ID": "shared", "AGENTSTREAM_TOPIC_PREFIX": "p", "PATH": "/bin"}
    env = service_environment(environ)
    assert "AGENTSTREAM_GROUP_ID" not in env
    assert env["AGENTSTREAM_TOPIC_PREFIX"] == "p" and env["PYTHONUNBUFFERED"] == "1"
    assert "AGENTSTREAM_GROUP_ID is ignored" in caplog.text
    assert environ["AGENTSTREAM_GROUP_ID"] == "shared"  # the caller's is left alone


def test_metric_sums_reads_lag_consumed_records_and_counted_events() -> None:
    text = """# TYPE agentstream_consumer_lag gauge
agentstream_consumer_lag{partition="0",service="loops",topic="p.events"} 3.0
agentstream_consumer_lag{partition="1",service="loops",topic="p.events"} 4.0
# TYPE agentstream_consumer_records_total counter
agentstream_consumer_records_total{outcome="consumed",service="loops",type="tool.called"} 10.0
agentstream_consumer_records_total{outcome="skipped",service="loops",type="llm.token"} 99.0
agentstream_consumer_records_total{outcome="consumed",service="loops",type="turn.ended"} 5.0
# TYPE agentstream_events_total counter
agentstream_events_total{agent="a",type="tool.called"} 7.0
agentstream_events_created{agent="a",type="tool.called"} 1.7e9
"""
    assert metric_sums(text) == {
        "agentstream_consumer_lag": 7.0,
        "agentstream_consumer_records_total": 15.0,
        "agentstream_events_total": 7.0,
    }
