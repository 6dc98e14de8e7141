"""How a process logs: level and format, from ``AGENTSTREAM_LOG_LEVEL`` and
``AGENTSTREAM_LOG_FORMAT``.

``text`` (the default) is one line per record for a person at a terminal; ``json`` is one JSON
object per line for a log pipeline (Loki, Elasticsearch, Cloud Logging): ``time`` (UTC, RFC
3339 with milliseconds), ``level``, ``logger``, ``message``, ``thread``, and ``exception``
with the formatted traceback when there is one. A record's message is never split over lines
in ``json``, so a traceback stays with the record it belongs to.

Read by each ``agentstream`` command at its start (:func:`configure_logging`); a library user
(an agent pod) keeps the logging setup of its own application.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from .settings import LogSettings

__all__ = ["TEXT_FORMAT", "JsonFormatter", "LogSettings", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            # RFC 3339's Z, as log pipelines parse it
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: LogSettings, *, verbose: bool = False) -> None:
    """The root logger's handler (stderr), level and format; ``verbose`` means DEBUG. Like
    :func:`logging.basicConfig`, which it calls, it leaves a root logger that already has
    handlers as it is (a test harness's)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=logging.DEBUG if verbose else settings.log_level, handlers=[handler])
