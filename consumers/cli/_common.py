"""Options several commands share, and the settings they build."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from agentstream.schemas.routing import pattern_problem, topic_name_problem
from agentstream.schemas.settings import KafkaSettings

S = TypeVar("S", bound=KafkaSettings)


def add_kafka_arguments(
    parser: argparse.ArgumentParser,
    bootstrap_help: str = (
        "Kafka bootstrap servers (default: AGENTSTREAM_BOOTSTRAP_SERVERS or 127.0.0.1:9092)"
    ),
) -> None:
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT", help=bootstrap_help)
    parser.add_argument(
        "--topic-prefix", metavar="PREFIX", help="topic prefix (default: agentstream)"
    )


def since_argument(text: str) -> datetime:
    """The ``--since`` option's type (``tail``, ``sessions``): a bad value is a usage error
    that says what is expected."""
    from agentstream.consumers.runtime.since import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_number(text: str) -> float:
    """The type of a duration option: a number > 0, else a usage error that says so."""
    return _number(text, float, strictly=True)


def non_negative_number(text: str) -> float:
    """The type of a wait that may be 0: a number >= 0."""
    return _number(text, float, strictly=False)


def port_number(text: str) -> int:
    """The type of a port option: an integer from 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def positive_integer(text: str) -> int:
    """The type of a count option: an integer > 0 (and below 2^31: Kafka's and the stores'
    integers; a larger one failed deep inside as an overflow)."""
    return int(_number(text, int, strictly=True))


MAX_NUMBER = 2**31 - 1
"""The largest count or duration an option takes (in its unit): larger ones overflow Kafka's
32-bit fields, SQLite's integers or a duration in milliseconds."""


def _number(text: str, kind: type[float] | type[int], *, strictly: bool) -> float:
    what = f"{'an integer' if kind is int else 'a number'} {'>' if strictly else '>='} 0"
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < 0 or (strictly and value == 0) or value != value:  # NaN is no number here
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    if value > MAX_NUMBER:  # infinity too
        raise argparse.ArgumentTypeError(f"expected {what} up to {MAX_NUMBER}, got {text!r}")
    return value


def retention_hours(text: str) -> float:
    """The type of a retention option: hours > 0, or -1 (kept forever)."""
    if text.strip() == "-1":
        return -1.0
    try:
        return positive_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected hours > 0 up to {MAX_NUMBER}, or -1 (kept forever), got {text!r}"
        ) from None


def checked_argument(problem: Callable[[str], str | None]) -> Callable[[str], str]:
    """An option type from a ``*_problem`` function: what it finds is a usage error that
    says why, before any broker is asked."""

    def check(text: str) -> str:
        found = problem(text)
        if found is not None:
            raise argparse.ArgumentTypeError(found)
        return text

    return check


topic_argument = checked_argument(topic_name_problem)
"""A Kafka topic name (``replay --to-topic``)."""
pattern_argument = checked_argument(pattern_problem)
"""Event types (``tail --type``): a pattern that can match nothing (``Tool.Called``, empty)
would be a reader that never shows a line."""


def kafka_settings_from(args: argparse.Namespace, **overrides: Any) -> KafkaSettings:
    """Plain Kafka settings: environment, overridden by the options given on the command line."""
    return settings_from(args, KafkaSettings, **overrides)


def settings_from(args: argparse.Namespace, cls: type[S], **overrides: Any) -> S:
    """The process's settings: environment, overridden by the options given on the command line."""
    given = {
        "bootstrap_servers": getattr(args, "bootstrap_servers", None),
        "topic_prefix": getattr(args, "topic_prefix", None),
        **overrides,
    }
    return cls(**{k: v for k, v in given.items() if v is not None})
