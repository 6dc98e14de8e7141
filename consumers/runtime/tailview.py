"""What ``agentstream tail`` prints: one line per event for people, JSON lines for pipes."""

from __future__ import annotations

import json
import re
from typing import Any

from agentstream.schemas import Event

_COLOURS = {  # ANSI code, rich style
    "tool": ("36", "cyan"),
    "llm": ("35", "magenta"),
    "message": ("32", "green"),
    "guard": ("33", "yellow"),
    "budget": ("31", "red"),
    "agent": ("34", "blue"),
    "audit": ("90", "bright_black"),
    "control": ("1;31", "bold red"),
}
_ERROR_COLOUR = ("1;31", "bold red")
_PLAIN = ("0", "default")
_ERRORISH = re.compile(r"(error|failed|failure|blocked|exceeded|block)$")


def summary(data: dict[str, Any], width: int = 90) -> str:
    parts = []
    for key, value in data.items():
        if value in (None, "", {}, []):
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{key}={text}")
    line = " ".join(parts).replace("\n", " ")
    return line if len(line) <= width else line[: width - 1] + "…"


def _colour(event_type: str) -> tuple[str, str]:
    if _ERRORISH.search(event_type):
        return _ERROR_COLOUR
    return _COLOURS.get(event_type.split(".")[0], _PLAIN)


def _fields(event: Event) -> tuple[str, str, str, str, str]:
    when = event.timestamp.strftime("%H:%M:%S.%f")[:-3]
    session = f"{(event.session_id or '-')[:8]:<8}"
    agent = f"{event.agent_id or '-':<16}"
    return when, f"{event.type:<26}", session, agent, summary(event.data)


def human_line(event: Event, *, colour: bool) -> str:
    """``time type session agent summary``; ANSI colours by type family when ``colour``."""
    when, kind, session, agent, text = _fields(event)
    if colour:
        kind = f"\x1b[{_colour(event.type)[0]}m{kind}\x1b[0m"
        when = f"\x1b[2m{when}\x1b[0m"
    return f"{when} {kind} {session} {agent} {text}"


def rich_line(event: Event) -> Any:
    """The same line as a ``rich.text.Text`` (when rich is installed)."""
    from rich.text import Text

    when, kind, session, agent, text = _fields(event)
    return Text.assemble(
        (when, "dim"), " ", (kind, _colour(event.type)[1]), " ", session, " ", agent, " ", text
    )


def json_line(
    event: Event, *, topic: str, partition: int, offset: int, replayed_for: str | None = None
) -> str:
    """``event`` as JSON with where it was read (``_kafka``); ``replayed_for``: the consumer
    group a replay was addressed to (``dlq replay``, ``replay --for-group``)."""
    kafka: dict[str, object] = {"topic": topic, "partition": partition, "offset": offset}
    if replayed_for is not None:
        kafka["replayed_for"] = replayed_for
    return json.dumps({**event.to_dict(), "_kafka": kafka}, ensure_ascii=False)
