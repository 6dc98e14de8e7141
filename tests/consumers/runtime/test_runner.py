"""Service discovery, settings from options, and the HTTP endpoints (no broker)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from support.recording_service import RECORDER, RecorderSettings
from support.runtime import http_get, service_settings

from agentstream.consumers.runtime import EventConsumer, ServiceSettings, ServiceSpec
from agentstream.consumers.runtime.http import ServiceHTTPServer
from agentstream.consumers.runtime.runner import (
    available_services,
    load_service,
    run_service,
    settings_from_options,
)
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings


def test_discovery_lists_service_packages_only() -> None:
    names = available_services()
    assert "runtime" not in names
    assert "cli" not in names
    for name in names:
        assert load_service(name).name, name


def test_unknown_names_and_bad_specs_say_what_exists() -> None:
    with pytest.raises(ConfigurationError, match=r"expected a service among .*got 'nope'"):
        load_service("nope")
    with pytest.raises(ConfigurationError, match="module:attribute"):
        load_service("support.recording_service:MISSING")
    with pytest.raises(ConfigurationError, match="expected a ServiceSpec"):
        load_service("support.recording_service:add_arguments")
    assert load_service("support.recording_service:RECORDER") is RECORDER


def test_settings_come_from_environment_then_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTREAM_HTTP_PORT", "9999")
    monkeypatch.setenv("AGENTSTREAM_DELAY_MS", "7")
    monkeypatch.setenv("AGENTSTREAM_HANDLER_RETRIES", "5")
    settings = settings_from_options(
        RECORDER,
        ["--bootstrap-servers", "kafka:9092", "--group-id", "g", "--record-file", "/tmp/x"],
    )
    assert isinstance(settings, RecorderSettings)
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.group_id == "g"
    assert settings.record_file == "/tmp/x"
    assert settings.http_port == 9999
    assert settings.delay_ms == 7
    assert settings.handler_retries == 5
    assert settings.group_for("recorder") == "g"
    assert settings_from_options(RECORDER, []).group_for("recorder") == "agentstream.recorder"


async def test_http_endpoints() -> None:
    registry = CollectorRegistry()
    Counter("agentstream_test_total", "a test counter", registry=registry).inc()
    state = {"ready": False, "healthy": True}
    server = ServiceHTTPServer(
        "127.0.0.1",
        0,
        registry=registry,
        healthy=lambda: state["healthy"],
        ready=lambda: state["ready"],
    )
    await server.start()
    try:
        port = server.port
        assert (await http_get(port, "/readyz"))[0] == 503
        state["ready"] = True
        assert await http_get(port, "/readyz") == (200, b"ready\n")
        assert (await http_get(port, "/healthz"))[0] == 200
        state["healthy"] = False
        assert (await http_get(port, "/healthz"))[0] == 503
        status, body = await http_get(port, "/metrics")
        assert status == 200
        assert b"agentstream_test_total 1.0" in body
        assert (await http_get(port, "/other"))[0] == 404
    finally:
        await server.stop()
    assert server.respond("POST", "/metrics")[0] == 405


async def test_http_clients_that_trickle_or_flood_are_cut_off_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client sending one header line at a time never ends its request, and one sending a
    line longer than 64 KiB is no scrape: both are closed (one deadline for the whole head),
    logged nowhere, and scrapes go on."""
    server = ServiceHTTPServer(
        "127.0.0.1", 0, registry=CollectorRegistry(), healthy=lambda: True, ready=lambda: True,
        request_timeout_s=0.5,
    )  # fmt: skip
    await server.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="agentstream.consumers.runtime.http"):
            trickle_r, trickle_w = await asyncio.open_connection("127.0.0.1", server.port)
            flood_r, flood_w = await asyncio.open_connection("127.0.0.1", server.port)
            flood_w.write(b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n")
            trickle_w.write(b"GET /metrics HTTP/1.1\r\n")
            started = time.monotonic()
            for _ in range(10):  # a header line every 0.2 s: each alone within any per-line limit
                with contextlib.suppress(ConnectionError):
                    trickle_w.write(b"X-Slow: 1\r\n")
                    await trickle_w.drain()
                await asyncio.sleep(0.2)
                if trickle_r.at_eof():
                    break
            assert await asyncio.wait_for(trickle_r.read(), 5) == b""  # closed, no answer
            assert time.monotonic() - started < 1.5
            assert await asyncio.wait_for(flood_r.read(), 5) == b""
            assert (await http_get(server.port, "/healthz"))[0] == 200
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        for writer in (trickle_w, flood_w):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    finally:
        await server.stop()


class _FlagSettings(RecorderSettings):
    pause: bool = False


def _flag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pause", action="store_true")


def test_options_not_given_leave_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(
        RECORDER, settings_class=_FlagSettings, add_arguments=_flag_arguments
    )
    monkeypatch.setenv("AGENTSTREAM_PAUSE", "true")
    settings = settings_from_options(spec, [])
    assert isinstance(settings, _FlagSettings)
    assert settings.pause is True
    monkeypatch.delenv("AGENTSTREAM_PAUSE")
    assert settings_from_options(spec, []).pause is False  # type: ignore[attr-defined]
    assert settings_from_options(spec, ["--pause"]).pause is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("threshold", "expected"), [(50_000, "50000 True"), (0, "the default False")]
)
def test_the_gc_policy_of_a_service_process(threshold: int, expected: str) -> None:
    # In a child interpreter: the policy is process-wide, and this test process keeps its own.
    # Compared with the interpreter's own: its threshold (700; 2,000 on 3.13) and permanent
    # generation (3.12 starts with one).
    code = (
        "import gc\n"
        "from agentstream.consumers.runtime.runner import tune_gc\n"
        "default, before = gc.get_threshold()[0], gc.get_freeze_count()\n"
        f"tune_gc({threshold})\n"
        "now = gc.get_threshold()[0]\n"
        "print('the default' if now == default else now, gc.get_freeze_count() > before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[0] == expected


async def test_a_signal_while_the_setup_waits_stops_the_service_at_once(
    kafka_settings: KafkaSettings,
) -> None:
    """A setup can wait long (for its database, a state restore): the stop request cancels
    it, its cleanup runs, and the service exits 0 instead of hanging until its exit bound."""
    entered, cleaned = asyncio.Event(), asyncio.Event()

    @contextlib.asynccontextmanager
    async def waiting(consumer: EventConsumer, settings: ServiceSettings) -> AsyncIterator[None]:
        try:
            entered.set()
            await asyncio.Event().wait()  # a store that never answers
            yield
        finally:
            cleaned.set()

    spec = ServiceSpec(name="waiting", settings_class=ServiceSettings, setup=waiting)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_service(spec, service_settings(kafka_settings, http_port=0), stop=stop)
    )
    await asyncio.wait_for(entered.wait(), 30)
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0  # a bound for a hang, not a speed check
    assert cleaned.is_set()
