"""What ``agentstream tail`` prints: one line per event for people, JSON lines for pipes."""

from __future__ import annotations

import json
import re
from typing import Any

from agentstream.schemas import Event

_COLOURS = {
    "tool": "36",  # cyan
    "llm": "35",  # magenta
    "message": "32",  # green
    "guard": "33",  # yellow
    "budget": "31",  # red
    "agent": "34",  # blue
    "audit": "90",  # grey
    "control": "1;31",
}
_ERRORISH = re.compile(r"(error|failed|failure|blocked|exceeded|block)$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    found = _DURATION.match(text.strip())
    if not found:
        raise ValueError(f"expected a duration like 30s, 10m, 2h or 1d, got {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def summary(data: dict[str, Any], width: int = 90) -> str:
    parts = []
    for key, value in data.items():
        if value in (None, "", {}, []):
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{key}={text}")
    line = " ".join(parts).replace("\n", " ")
    return line if len(line) <= width else line[: width - 1] + "…"


def human_line(event: Event, *, colour: bool) -> str:
    when = event.timestamp.strftime("%H:%M:%S.%f")[:-3]
    session = (event.session_id or "-")[:8]
    agent = event.agent_id or "-"
    kind = f"{event.type:<26}"
    if colour:
        code = (
            "1;31" if _ERRORISH.search(event.type) else _COLOURS.get(event.type.split(".")[0], "0")
        )
        kind = f"\x1b[{code}m{kind}\x1b[0m"
        when = f"\x1b[2m{when}\x1b[0m"
    return f"{when} {kind} {session:<8} {agent:<16} {summary(event.data)}"


def json_line(event: Event, *, topic: str, partition: int, offset: int) -> str:
    return json.dumps(
        {**event.to_dict(), "_kafka": {"topic": topic, "partition": partition, "offset": offset}},
        ensure_ascii=False,
    )
