"""How the commands log: ``AGENTSTREAM_LOG_FORMAT=json`` (one object per line, for a log
pipeline) and ``AGENTSTREAM_LOG_LEVEL``, read at each command's start."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from agentstream.consumers.broker import free_port
from agentstream.schemas.logs import JsonFormatter

CLI = [sys.executable, "-m", "agentstream.consumers.cli"]


async def run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


def no_broker() -> tuple[str, ...]:
    return ("topics", "create", "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--timeout", "1")


async def test_json_logs_are_one_object_per_line_the_reason_to_stop_included() -> None:
    code, err = await run(*no_broker(), env={"AGENTSTREAM_LOG_FORMAT": "json"})
    assert code == 2
    records = [json.loads(line) for line in err.splitlines()]  # every line is one record
    assert all(set(r) >= {"time", "level", "logger", "message", "thread"} for r in records)
    assert all(r["time"].endswith("Z") for r in records)
    assert any(r["message"].startswith("no Kafka broker answers at") for r in records)
    assert records[-1]["level"] == "ERROR"
    assert records[-1]["message"].startswith("agentstream: expected a Kafka broker answering")
    assert not any("no agentstream setting reads it" in r["message"] for r in records)


async def test_the_log_level_is_a_setting_and_a_wrong_value_is_one_line() -> None:
    code, err = await run(*no_broker(), env={"AGENTSTREAM_LOG_LEVEL": "WARNING"})
    assert code == 2
    assert "no Kafka broker answers" not in err  # an INFO line
    assert "agentstream: expected a Kafka broker answering" in err
    code, err = await run(*no_broker(), env={"AGENTSTREAM_LOG_FORMAT": "xml"})
    assert code == 2
    assert err.strip() == (
        "agentstream: invalid settings: log_format (AGENTSTREAM_LOG_FORMAT): "
        "expected 'text' or 'json', got 'xml'"
    )


def test_a_traceback_stays_in_its_record() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed here"
    assert entry["exception"].startswith("Traceback") and "ValueError: broken" in entry["exception"]
