"""The ``agentstream`` command: the composition root. Thin; each command lives in its own
module of this package with a ``register(subparsers)`` function, found here by name (modules
starting with ``_`` are helpers), so adding a command edits no shared list."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import pkgutil
import re
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError

from agentstream.schemas.environment import unread_variables
from agentstream.schemas.errors import AgentstreamError, describe
from agentstream.schemas.logs import configure_logging
from agentstream.schemas.settings import PREFIX, LogSettings, settings_error
from agentstream.schemas.throttle import quiet_client_repeats


def command_modules() -> list[str]:
    """Every command module of this package, in name order."""
    return sorted(
        f"{__name__}.{info.name}"
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentstream",
        description="AI-agent events through Kafka: producers, services and tools.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        log_settings = LogSettings()
    except ValidationError as exc:
        print(f"agentstream: {settings_error(exc)}", file=sys.stderr)
        return 2
    configure_logging(log_settings, verbose=args.verbose)
    say = _say_json if log_settings.log_format == "json" else _say
    # aiokafka logs every reconnect attempt, about 50 ERROR lines a second per process while
    # a broker is away: repeats are held back (a line per kind every 10 s, with a count).
    quiet_client_repeats()
    if getattr(args, "quiet_client_logs", False) and not args.verbose:
        # A command that reads or writes a few records, for a person or a pipe: aiokafka's
        # group and subscription notices are noise there (services keep them).
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    _warn_unread_variables()
    try:
        result = args.func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except AgentstreamError as exc:
        say(str(exc))
        return 2
    except ValidationError as exc:
        given = {name for name, value in vars(args).items() if value is not None}
        error = settings_error(exc, given)
        if error is None:
            raise
        say(str(error))
        return 2
    except SettingsError as exc:  # a variable holding a mapping or a list that is no JSON
        field = re.search(r'field "(\w+)"', str(exc))
        where = f"{field[1]} ({PREFIX}{field[1].upper()})" if field else str(exc)
        say(f"invalid settings: {where}: expected JSON (a mapping or a list), got text that is not")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`agentstream tail | head`): stop quietly, as Unix tools do.
        # Later writes to the closed pipe (the interpreter's final flush) go to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:  # a path that cannot be written or read (--out, --log-dir...)
        say(describe(exc))
        return 1
    except Exception as exc:
        if _is_kafka_error(exc):
            # The broker refused, or a record batch cannot be read (a wrong CRC): one line.
            say(f"Kafka: {describe(exc)}")
            return 1
        if say is _say_json:  # a log pipeline gets the traceback in one record
            logging.getLogger("agentstream").exception("agentstream stopped on an error")
            return 1
        raise
    return int(result or 0)


def _say(message: str) -> None:
    """Why the command stopped, for a person: one line on stderr."""
    print(f"agentstream: {message}", file=sys.stderr)


def _say_json(message: str) -> None:
    """Why the command stopped, as one more JSON log record (AGENTSTREAM_LOG_FORMAT=json)."""
    logging.getLogger("agentstream").error("agentstream: %s", message)


def _is_kafka_error(exc: BaseException) -> bool:
    """An aiokafka error (imported only when one came: the CLI starts without aiokafka)."""
    from aiokafka.errors import KafkaError

    return isinstance(exc, KafkaError)


def _warn_unread_variables() -> None:
    """Say which ``AGENTSTREAM_*`` variables no process reads (typos): a deployment often
    gives all its services one environment, so any service's settings count as read."""
    lines = unread_variables(os.environ)
    if lines:
        from agentstream.consumers.runtime.runner import import_services

        import_services()
        lines = unread_variables(os.environ)
    for line in lines:
        logging.getLogger("agentstream.settings").warning(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
