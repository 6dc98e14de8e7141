"""Adopting agentstream in an agent that already runs on Corail, Calute or Xerxes.

Calute and Xerxes need nothing from here: their collector protocol is ``emit(event)`` and
``flush()``, which :class:`~agentstream.producer.collectors.KafkaCollector` satisfies, and it
accepts their event objects as they are::

    AuditEmitter(collector=KafkaCollector(publisher), session_id=sid)      # calute / xerxes.audit
    RuntimeFeaturesConfig(..., audit_collector=KafkaCollector(publisher))  # the Xerxes runtime

Corail's bus runs every ``"*"`` subscriber on every event, so one subscription ships them all::

    bus.subscribe("*", CorailForwarder(publisher, session_key="conversation_id"))

:class:`CorailForwarder` maps a Corail ``Event`` (enum ``type``, datetime ``timestamp``,
``agent_id``/``user_id``/``session_id`` that the runtime usually leaves empty, ``data``) onto
an agentstream :class:`~agentstream.schemas.Event` and hands it to the pod's publisher (encode
and enqueue: no network wait). It never raises into the bus: a failure is logged (1st, 10th,
100th...) and counted.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec

from agentstream.schemas import Event
from agentstream.schemas.envelope import is_valid_type

from ._failures import FailureLog
from .scope import get_scope

if TYPE_CHECKING:
    from .bus import Publisher

__all__ = ["CorailForwarder", "corail_envelope", "encodable_data", "plain_data", "wire_type"]

logger = logging.getLogger(__name__)

_PASS_THROUGH = (datetime, date, time, UUID, Decimal, bytes, bytearray, memoryview)
"""Values the wire encoders handle themselves: ``plain_data`` leaves them as they are."""


def _fallback(value: Any) -> Any:
    """What an object msgspec cannot encode becomes: a pydantic model its ``model_dump``,
    anything with ``to_dict()`` that dict, anything else its ``str()`` (as Calute's JSONL
    sink does with ``default=str``)."""
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return str(value)


def plain_data(data: Any) -> dict[str, Any]:
    """``data`` as a dict of plain values every wire encoding can carry.

    Enums become their values, dataclasses and Structs dicts, sets and tuples lists, other
    keys strings; pydantic models are dumped, other unknown objects become their ``str()``.
    Datetimes, UUIDs, decimals and bytes are kept for the encoder. A value that is not a
    mapping is kept under ``"value"``. Nothing is dropped. The caller's objects are not
    changed. Integers beyond 64 bits are left as they are (finding them is a second walk,
    too dear for every event): the publisher's fallback, :func:`encodable_data`, turns them
    into text when the encoder refuses them.
    """
    if data is None:
        return {}
    try:
        out = _to_builtins(data)
    except Exception:  # a key msgspec refuses (a tuple...), a broken __str__: go one by one
        out = _walk(data, _MAX_DEPTH)
    if not isinstance(out, dict):
        return {"value": out}
    return out


def encodable_data(data: Any) -> dict[str, Any]:
    """:func:`plain_data`, with integers beyond 64 bits as their decimal text (neither wire
    encoding carries them) and strings made valid Unicode (:func:`valid_text`): what the
    publisher sends when ``data`` cannot be encoded as it is (a ``Path``, an exception object,
    a tuple key, a lone surrogate...)."""
    fitted: dict[str, Any] = _fit(plain_data(data))
    return fitted


def valid_text(text: str) -> str:
    """``text`` itself when it encodes as UTF-8, else with its surrogates mended: a pair split
    into two code points joined again, a lone one replaced by U+FFFD. Python strings may hold
    lone surrogates (bytes decoded with ``surrogateescape``, a JSON ``\\ud83d`` escape cut
    from its pair); UTF-8, and so both wire encodings, cannot carry them."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


ENVELOPE_TEXT = ("event_id", "type", "agent_id", "user_id", "session_id", "turn_id", "source")


def mended_envelope(event: Event) -> dict[str, str]:
    """The envelope's text fields that :func:`valid_text` changes, by name, with their new
    value (for ``msgspec.structs.replace``)."""
    mended: dict[str, str] = {}
    for name in ENVELOPE_TEXT:
        value = getattr(event, name)
        if type(value) is str and (fixed := valid_text(value)) is not value:
            mended[name] = fixed
    return mended


_INT_RANGE = range(-(2**63), 2**64)


def _fit(value: Any) -> Any:
    if type(value) is dict:
        return {_fit(k): _fit(v) for k, v in value.items()}
    if type(value) is list:
        return [_fit(v) for v in value]
    if type(value) is str:
        return valid_text(value)
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
        return str(value)
    return value


_MAX_DEPTH = 64


def _to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(
        value, builtin_types=_PASS_THROUGH, str_keys=True, enc_hook=_fallback
    )


def _walk(value: Any, depth: int) -> Any:
    """The slow path of :func:`plain_data`: container by container, so that one bad key or
    value costs only itself."""
    if depth > 0:
        if isinstance(value, Mapping):
            return {_key(k): _walk(v, depth - 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [_walk(v, depth - 1) for v in value]
        try:
            return _to_builtins(value)
        except Exception:
            pass
    try:
        return str(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    try:
        return str(key)
    except Exception:
        return f"<unrepresentable {type(key).__name__}>"


_INVALID_CHARS = re.compile(r"[^a-z0-9_.-]+")
_TYPE_CACHE: dict[str, str | None] = {}
_MAX_CACHED_TYPES = 4096


def wire_type(raw: str, *, prefix: str = "") -> str:
    """``prefix + raw`` when that is a valid agentstream type tag, else a valid tag made from
    it (lower-cased, other characters replaced by ``_``; the caller keeps the original name
    in ``data``). Unknown but valid tags pass as they are: the consumer side decodes them as
    ``AuditOther`` (``audit.*``) or ``UnknownPayload``."""
    key = prefix + raw
    if key in _TYPE_CACHE:
        cached = _TYPE_CACHE[key]
        return key if cached is None else cached
    if is_valid_type(key):
        fixed = None
    else:
        words = [w for w in _INVALID_CHARS.sub("_", raw.lower()).split(".") if w.strip("_-")]
        body = ".".join(words) or "unnamed"
        fixed = prefix + body if prefix else body
        if not is_valid_type(fixed):
            fixed = "unknown." + body.replace(".", "_")
        if not is_valid_type(fixed):  # pragma: no cover - "unknown.<word>" always matches
            fixed = "unknown.unnamed"
    if len(_TYPE_CACHE) < _MAX_CACHED_TYPES:
        _TYPE_CACHE[key] = fixed
    return key if fixed is None else fixed


def _type_value(raw: Any) -> str:
    value = raw.value if isinstance(raw, enum.Enum) else raw
    return value if isinstance(value, str) else str(value)


_NO_OFFSET = timedelta(0)


def to_utc(value: Any, what: str = "event") -> datetime:
    """An envelope timestamp from a foreign event's: a datetime or ISO-8601 text, in UTC (naive
    values are taken as UTC, other offsets converted); anything else is logged and becomes now."""
    if type(value) is str:
        try:  # noqa: SIM105 - contextlib.suppress costs ~1 µs; this runs once per audit event
            value = datetime.fromisoformat(value)
        except ValueError:
            pass
    if isinstance(value, datetime):
        tzinfo = value.tzinfo
        if tzinfo is UTC:  # what fromisoformat gives for "+00:00", and Calute's timestamps
            return value
        if tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value if value.utcoffset() == _NO_OFFSET else value.astimezone(UTC)
    logger.warning("%s timestamp %r is not a datetime or ISO-8601 text; using now", what, value)
    return datetime.now(UTC)


def as_id(value: Any) -> str:
    """An envelope id from a foreign event's: ``None`` is empty, a string is itself, anything
    else (a UUID, a number) its ``str()``."""
    if value is None:
        return ""
    return value if type(value) is str else str(value)


def _from_data(data: Mapping[str, Any], key: str | None) -> str:
    if key is None:
        return ""
    return as_id(data.get(key))


_CORAIL_FIELDS = ("type", "timestamp", "agent_id", "user_id", "session_id", "turn_id", "data")


def _fields_of(event: Any) -> tuple[Any, ...]:
    """The attributes of a Corail-shaped event, in :data:`_CORAIL_FIELDS` order (an object,
    or a dict as ``to_dict()`` gives); a missing one is ``None``."""
    if isinstance(event, Mapping):
        return tuple(event.get(name) for name in _CORAIL_FIELDS)
    return (
        event.type,
        getattr(event, "timestamp", None),
        getattr(event, "agent_id", None),
        getattr(event, "user_id", None),
        getattr(event, "session_id", None),
        getattr(event, "turn_id", None),
        getattr(event, "data", None),
    )


def corail_envelope(
    event: Any,
    *,
    agent_id: str = "",
    session_key: str | None = None,
    user_key: str | None = None,
    agent_key: str | None = None,
    turn_key: str | None = None,
) -> Event:
    """The agentstream envelope of a Corail ``Event`` (or of its ``to_dict()``).

    ``type``: the enum's value (``tool.called``), kept as it is; a value that is not a valid
    type tag is made one and the original kept in ``data["corail_type"]``. ``timestamp``:
    made UTC (naive is taken as UTC). Each empty envelope id is filled, in this order, from
    the ``data`` key named by ``session_key``/``user_key``/``agent_key``/``turn_key`` (the key
    stays in ``data``), then from the current
    :func:`~agentstream.producer.scope.event_scope`, then (``agent_id`` only) from the
    ``agent_id`` argument. ``data`` is converted with :func:`plain_data`: every key kept.
    """
    raw, timestamp, ev_agent, ev_user, ev_session, ev_turn, raw_data = _fields_of(event)
    data = plain_data(raw_data)
    raw_type = _type_value(raw)
    type_ = wire_type(raw_type)
    if type_ != raw_type:
        data["corail_type"] = raw_type
    scope = get_scope()
    return Event(
        type=type_,
        timestamp=to_utc(timestamp, "Corail event"),
        agent_id=as_id(ev_agent) or _from_data(data, agent_key) or scope.agent_id or agent_id,
        user_id=as_id(ev_user) or _from_data(data, user_key) or scope.user_id,
        session_id=as_id(ev_session) or _from_data(data, session_key) or scope.session_id,
        turn_id=as_id(ev_turn) or _from_data(data, turn_key) or scope.turn_id,
        data=data,
    )


class CorailForwarder:
    """A Corail bus subscriber that ships every event it is given to Kafka.

    ``bus.subscribe("*", CorailForwarder(publisher, ...))``. Corail awaits its handlers, so
    calling the forwarder returns a coroutine; :meth:`forward` does the same work
    synchronously (for ``emit_sync`` paths or plain callbacks). The work is a mapping
    (:func:`corail_envelope`) and ``publisher.publish`` (encode and enqueue); nothing waits on
    the network. A failure (an unmappable event, a publisher in a fatal state) never reaches
    the bus: it is logged (1st, 10th, 100th...) and counted in :attr:`failures`.

    ``publisher``: the pod's shared :class:`~agentstream.producer.publisher.KafkaPublisher`.
    ``agent_id``: for events that carry none (after their ``agent_key`` and the scope).
    ``session_key``, ``user_key``, ``agent_key``, ``turn_key``: ``data`` keys that hold the
    ids when the event's own fields are empty (for example ``session_key="conversation_id"``).
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        agent_id: str = "",
        session_key: str | None = None,
        user_key: str | None = None,
        agent_key: str | None = None,
        turn_key: str | None = None,
    ) -> None:
        self.publisher = publisher
        self.agent_id = agent_id
        self.session_key = session_key
        self.user_key = user_key
        self.agent_key = agent_key
        self.turn_key = turn_key
        self._forwarded = 0
        self._count_lock = threading.Lock()  # buses on several threads may share a forwarder
        self.failures = FailureLog("CorailForwarder")
        self.__name__ = "CorailForwarder"  # how a bus names a handler in its error log

    def __repr__(self) -> str:
        return f"CorailForwarder(agent_id={self.agent_id!r}, forwarded={self.forwarded})"

    async def __call__(self, event: Any) -> None:
        self.forward(event)

    def forward(self, event: Any) -> None:
        """Map and publish ``event`` now; never raises."""
        try:
            envelope = corail_envelope(
                event,
                agent_id=self.agent_id,
                session_key=self.session_key,
                user_key=self.user_key,
                agent_key=self.agent_key,
                turn_key=self.turn_key,
            )
            self.publisher.publish(envelope)
        except Exception as exc:
            self.failures.record(exc, f"forward({getattr(event, 'type', event)!r})")
        else:
            with self._count_lock:
                self._forwarded += 1

    @property
    def forwarded(self) -> int:
        """How many events were handed to the publisher."""
        return self._forwarded

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything forwarded so far is acknowledged (the shared publisher's
        ``flush``); False when ``timeout`` seconds pass first."""
        return self.publisher.flush(timeout)
