"""The envelope every event travels in.

``Event`` is what code builds and handlers receive; ``WireEvent`` is the same shape with the
identity fields required, the type for decoding records, so a record that lacks its
``event_id`` or ``timestamp`` is rejected instead of getting a fresh one on every read.
(The codec hands back decoded events as plain ``Event`` instances.)
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from .catalogue import AUDIT_PREFIX
from .errors import PayloadValidationError
from .ids import new_event_id
from .payloads import PAYLOADS, AuditOther, Payload, UnknownPayload

SCHEMA_VERSION = 1
"""The envelope version this code writes. Readers accept every version up to their own
and, by the evolution rules, newer ones too."""

TYPE_PATTERN = r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$"
"""What a type tag looks like: dotted lower-case words (``tool.called``, ``audit.turn_start``)."""
_TYPE_RE = re.compile(TYPE_PATTERN)

UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, kw_only=True, dict=True):
    """One event: who emitted it, when, in which session and turn, and its ``data``.

    ``data`` is the payload as a plain dict (Corail's shape): keys beyond the typed payload
    are kept as they came. ``payload`` is the typed view for the event's type.
    """

    schema_version: int = SCHEMA_VERSION
    event_id: str = msgspec.field(default_factory=new_event_id)
    type: str
    timestamp: UtcDatetime = msgspec.field(default_factory=utc_now)
    agent_id: str = ""
    user_id: str = ""
    session_id: str = ""
    turn_id: str = ""
    seq: int = 0
    source: str = ""
    data: dict[str, Any] = {}

    @functools.cached_property
    def payload(self) -> Payload:
        """The typed view of ``data`` (computed once; raises :class:`PayloadValidationError`)."""
        return payload_of(self.type, self.data)

    def to_dict(self) -> dict[str, Any]:
        """A dict as Corail's ``Event.to_dict`` (type as a string, ISO timestamp), JSON-ready
        when ``data`` is: ``data`` that holds other objects (an exception, a ``Path``) is
        given as it is, as Corail gives it."""
        try:
            return msgspec.to_builtins(self)  # type: ignore[no-any-return]
        except (TypeError, ValueError):
            plain: dict[str, Any] = msgspec.to_builtins(msgspec.structs.replace(self, data={}))
            plain["data"] = self.data
            return plain


WireId = Annotated[str, msgspec.Meta(min_length=1)]
"""An ``event_id`` as read from Kafka: not empty. Stores and services deduplicate by it, so
every event of a producer that leaves it empty would be taken for the first one's copy."""


class WireEvent(Event, kw_only=True):
    """:class:`Event` as read from Kafka: identity fields required, type tag checked."""

    event_id: WireId
    type: Annotated[str, msgspec.Meta(pattern=TYPE_PATTERN)]
    timestamp: UtcDatetime


class _DecodedEvent(Event, kw_only=True):
    """What the codec decodes records into: :class:`WireEvent` without the type pattern, which
    :func:`checked_type` applies once per distinct type instead of a regex per record."""

    event_id: WireId
    type: str
    timestamp: UtcDatetime


_CHECKED_TYPES: set[str] = set()


def checked_type(event_type: str) -> bool:
    """Whether ``event_type`` matches :data:`TYPE_PATTERN` (memoised, up to 4096 types)."""
    if event_type in _CHECKED_TYPES:
        return True
    if _TYPE_RE.fullmatch(event_type) is None:  # match(): "$" also matches before a final \n
        return False
    if len(_CHECKED_TYPES) < 4096:
        _CHECKED_TYPES.add(event_type)
    return True


def payload_class(event_type: str) -> type[Payload]:
    """The payload Struct for a type; unknown ``audit.*`` types get :class:`AuditOther`."""
    cls = PAYLOADS.get(event_type)
    if cls is not None:
        return cls
    return AuditOther if event_type.startswith(AUDIT_PREFIX) else UnknownPayload


def payload_of(event_type: str, data: dict[str, Any]) -> Payload:
    """Validate ``data`` against the payload Struct of ``event_type`` and return the typed view."""
    cls = payload_class(event_type)
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise PayloadValidationError(
            f"data of a {event_type!r} event does not match {cls.__name__}: {exc}"
        ) from None


def is_valid_type(event_type: str) -> bool:
    return _TYPE_RE.match(event_type) is not None
