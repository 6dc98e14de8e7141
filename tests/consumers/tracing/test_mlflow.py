"""End to end against a real receiver: events produced to Kafka → the tracing service on the
runtime → OTLP/HTTP → an MLflow tracking server on loopback; the traces are read back through
MLflow's own client API (run in the MLflow peer venv) and checked span by span."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.produce import produce_events
from support.runtime import running_consumer, wait_until

from agentstream.consumers.runtime import EventConsumer
from agentstream.consumers.tracing.service import SERVICE
from agentstream.consumers.tracing.settings import TracingSettings
from agentstream.schemas import Event
from agentstream.schemas.settings import KafkaSettings

READER = Path(__file__).resolve().parents[2] / "peers" / "mlflow_traces.py"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, payload: dict[str, Any] | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body.strip().startswith(b"{") else body.decode()


@pytest.fixture
async def mlflow_server(mlflow_python: Path, tmp_path: Path) -> AsyncIterator[str]:
    """``mlflow server`` on a free loopback port with a SQLite store; stopped at the end."""
    port = free_port()
    log = (tmp_path / "mlflow.log").open("wb")
    process = subprocess.Popen(
        [
            str(mlflow_python.parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,  # its own process group: the server's workers stop with it
    )
    url = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(tmp_path / 'mlflow.log').read_text()}")
        try:
            await asyncio.to_thread(http_json, f"{url}/health")
            return True
        except OSError:
            return False

    try:
        await wait_until(answers, timeout=90, what="mlflow server /health")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


class Session:
    def __init__(self, session: str, agent: str) -> None:
        self.session, self.agent, self.n = session, agent, 0

    def __call__(self, type_: str, data: dict[str, Any], at_ms: int, **kw: Any) -> Event:
        self.n += 1
        return Event(
            type=type_,
            timestamp=T0 + timedelta(milliseconds=at_ms),
            agent_id=self.agent,
            user_id="user-42",
            session_id=self.session,
            seq=self.n,
            source="pod-7",
            data=data,
            **kw,
        )


def corail_turn() -> list[Event]:
    """Two concurrent calls of one tool; the second fails; Corail sends no call ids."""
    ev = Session("c0ffee00c0ffee00c0ffee00c0ffee00", "agent-weather")
    return [
        ev("message.received", {"content": "Weather in Paris and Rome?"}, 0),
        ev("turn.started", {"round": 0}, 5),
        ev("llm.call.started", {"round": 0, "model": "claude-sonnet"}, 10),
        ev(
            "llm.call.completed",
            {
                "round": 0,
                "stop_reason": "tool_use",
                "model": "claude-sonnet",
                "input_tokens": 812,
                "output_tokens": 64,
            },
            400,
        ),
        ev("tool.called", {"name": "weather", "args": {"city": "Paris"}}, 410),
        ev("tool.called", {"name": "weather", "args": {"city": "Rome"}}, 411),
        ev("tool.result", {"name": "weather", "output": "Paris: 18 C"}, 600),
        ev("tool.error", {"name": "weather", "error": "TimeoutError: Rome", "attempt": 0}, 900),
        ev("turn.started", {"round": 1}, 910),
        ev("llm.call.started", {"round": 1, "model": "claude-sonnet"}, 920),
        ev("llm.call.completed", {"round": 1, "stop_reason": "end_turn"}, 1300),
        ev("turn.ended", {"round": 1, "stop_reason": "end_turn"}, 1310),
        ev("message.response", {"content": "Paris 18 C; Rome unknown"}, 1320),
    ]


def calute_turn() -> list[Event]:
    ev = Session("ca1a7e00ca1a7e00ca1a7e00ca1a7e00", "agent-research")
    tid = "a1b2c3d4e5f6"
    return [
        ev("audit.turn_start", {"prompt_preview": "find papers"}, 0, turn_id=tid),
        ev(
            "audit.tool_call_attempt",
            {"tool_name": "web_search", "arguments_preview": "q"},
            10,
            turn_id=tid,
        ),
        ev(
            "audit.tool_call_failure",
            {"tool_name": "web_search", "error_type": "ValueError", "error_message": "bad query"},
            50,
            turn_id=tid,
        ),
        ev(
            "audit.tool_call_attempt",
            {"tool_name": "web_search", "arguments_preview": "q2"},
            60,
            turn_id=tid,
        ),
        ev(
            "audit.tool_call_complete",
            {"tool_name": "web_search", "result_preview": "3 results", "duration_ms": 20.0},
            80,
            turn_id=tid,
        ),
        ev(
            "audit.turn_end",
            {"content_preview": "3 papers", "function_calls_count": 2},
            100,
            turn_id=tid,
        ),
    ]


def read_traces(python: Path, url: str, experiment_id: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(python), str(READER), url, experiment_id],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def attr(span: dict[str, Any], key: str) -> Any:
    return span["attributes"].get(key)


async def test_turns_arrive_in_mlflow_as_span_trees(
    mlflow_server: str, mlflow_python: Path, kafka_settings: KafkaSettings, unique_name: str
) -> None:
    created = await asyncio.to_thread(
        http_json, f"{mlflow_server}/api/2.0/mlflow/experiments/create", {"name": unique_name}
    )
    experiment_id = created["experiment_id"]
    settings = TracingSettings(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        topic_prefix=kafka_settings.topic_prefix,
        otlp_endpoint=f"{mlflow_server}/v1/traces",
        otlp_headers=f"x-mlflow-experiment-id={experiment_id}",
        export_linger_ms=10,
        fetch_max_wait_ms=100,
        commit_interval_ms=100,
        drain_timeout_ms=10_000,
    )
    await produce_events(kafka_settings, [*corail_turn(), *calute_turn()])

    async def run_until_exported(service_settings: TracingSettings) -> None:
        consumer = EventConsumer(service_settings, service=SERVICE.name)

        def exported() -> bool:
            done = consumer.registry.get_sample_value(
                "agentstream_tracing_traces_exported_total", {"outcome": "complete"}
            )
            return (done or 0) >= 2

        async with SERVICE.setup(consumer, service_settings), running_consumer(consumer):
            await wait_until(exported, timeout=60, what="two traces exported")

    await run_until_exported(settings)
    # A second group reads everything again and re-exports the same turns (what a lost commit
    # would cause): the ids are derived from the events, so MLflow upserts the same spans.
    await run_until_exported(settings.model_copy(update={"group_id": f"{unique_name}.again"}))
    traces = await asyncio.to_thread(read_traces, mlflow_python, mlflow_server, experiment_id)
    assert len(traces) == 2
    by_session = {t["metadata"].get("mlflow.trace.session"): t for t in traces}
    assert set(by_session) == {
        "c0ffee00c0ffee00c0ffee00c0ffee00",
        "ca1a7e00ca1a7e00ca1a7e00ca1a7e00",
    }

    corail = by_session["c0ffee00c0ffee00c0ffee00c0ffee00"]
    assert corail["state"] == "OK"
    assert corail["metadata"].get("mlflow.trace.user") == "user-42"
    spans = corail["spans"]
    root = next(s for s in spans if s["parent_id"] is None)
    assert root["name"] == "turn" and root["status"] == "OK" and root["span_type"] == "AGENT"
    assert attr(root, "gen_ai.agent.id") == "agent-weather"
    assert attr(root, "mlflow.spanInputs") == "Weather in Paris and Rome?"
    kids = sorted(
        (s for s in spans if s["parent_id"] == root["span_id"]), key=lambda s: s["start_ns"]
    )
    assert len(kids) == len(spans) - 1 == 4
    assert [s["name"] for s in kids] == [
        "llm:claude-sonnet",
        "tool:weather",
        "tool:weather",
        "llm:claude-sonnet",
    ]
    llm0, paris, rome, llm1 = kids
    assert attr(llm0, "agentstream.round") == 0 and attr(llm1, "agentstream.round") == 1
    assert attr(llm0, "agentstream.stop_reason") == "tool_use"
    assert attr(llm0, "gen_ai.usage.input_tokens") == 812
    assert llm0["span_type"] == "CHAT_MODEL"
    assert (llm0["end_ns"] - llm0["start_ns"]) == 390_000_000
    assert attr(paris, "mlflow.spanInputs") == {"city": "Paris"}
    assert paris["status"] == "OK" and attr(paris, "mlflow.spanOutputs") == "Paris: 18 C"
    assert attr(rome, "mlflow.spanInputs") == {"city": "Rome"}
    assert rome["status"] == "ERROR" and "Rome" in rome["status_message"]
    assert paris["span_type"] == "TOOL"

    calute = by_session["ca1a7e00ca1a7e00ca1a7e00ca1a7e00"]
    spans = calute["spans"]
    root = next(s for s in spans if s["parent_id"] is None)
    assert attr(root, "agentstream.turn_id") == "a1b2c3d4e5f6"
    assert attr(root, "mlflow.spanOutputs") == "3 papers"
    tools = sorted(
        (s for s in spans if s["name"] == "tool:web_search"), key=lambda s: s["start_ns"]
    )
    assert [s["status"] for s in tools] == ["ERROR", "OK"]
    assert [attr(s, "agentstream.tool.attempt") for s in tools] == [0, 1]
    assert tools[0]["status_message"] == "ValueError: bad query"
    assert "exception" in tools[0]["events"]
    assert all(s["parent_id"] == root["span_id"] for s in tools)
