"""The README's pod example runs as written, against the test broker."""

from __future__ import annotations

import re
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support.runtime import read_records

from agentstream.schemas import decode_record
from agentstream.schemas.settings import KafkaSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def _pod_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## In the agent pod", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's pod example is missing"
    return match.group(1)


async def test_the_pod_example_ships_both_apis_events(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSTREAM_BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    monkeypatch.setenv("AGENTSTREAM_TOPIC_PREFIX", kafka_settings.topic_prefix)
    code = _pod_example().replace("/var/spool/agentstream", str(tmp_path / "spool"))
    source = "async def example(sid, uid, prompt):\n" + textwrap.indent(code, "    ")
    namespace: dict[str, Any] = {}
    exec(compile(source, str(README), "exec"), namespace)
    sigterm = signal.getsignal(signal.SIGTERM)  # the example's exit_on_sigterm() sets it
    try:
        await namespace["example"]("session-readme", "user-readme", "What is 2+2?")
    finally:
        signal.signal(signal.SIGTERM, sigterm)

    records = await read_records(kafka_settings, kafka_settings.routing().events, 2)
    events = [decode_record(r.value, r.headers) for r in records]
    assert {e.type for e in events} == {"tool.called", "audit.turn_start"}
    assert all(e.session_id == "session-readme" for e in events)
    called = next(e for e in events if e.type == "tool.called")
    assert called.user_id == "user-readme"
    assert called.agent_id == "agent-1"
