"""agentstream's event model and wire format, shared by producers and consumers.

Evolution rules
---------------
These keep every reader able to read every writer, older or newer:

1. A new field, in the envelope or in a payload, always has a default. Old records lack it
   and decode with the default; old readers ignore it.
2. A field's type never changes, and a field is never renamed or removed. To change one, add
   a new field and stop writing the old one.
3. Unknown fields are never forbidden on anything read from Kafka: envelope and payload
   Structs ignore keys they do not name, and ``Event.data`` keeps every key a producer sent.
4. A type tag (``tool.called``) is never renamed or reused. New types are added; readers
   that do not know a type still decode its envelope (``audit.*`` types get the common audit
   fields, others an empty typed view) and keep its ``data`` whole.
5. ``schema_version`` is raised only when a rule above has to be broken; readers then keep
   decoding every earlier version.

Golden records of each released version live in ``tests/schemas/golden`` and must decode
both ways (old bytes with new code, new bytes with the old Structs). The JSON Schema of the
envelope and of every payload is exported to ``jsonschema/`` by ``agentstream schemas export``.

What readers refuse, within version 1: an envelope with an empty ``event_id`` (the first
version's schema let it through; stores and services deduplicate by the id, so every such
event was taken for the first one's copy: refused as undecodable instead, never stored as
a duplicate), and an integer field written as a float (``"seq": 1.0``): JSON Schema cannot
tell ``1.0`` from ``1`` and the exported schemas accept it, the decoders do not.
"""

from .catalogue import AUDIT_PREFIX, EventType, StopReason, audit_type
from .codec import (
    DEFAULT_MAX_RECORD_BYTES,
    JSON,
    MSGPACK,
    Encoding,
    decode_event,
    decode_record,
    encode_event,
    encoding_of,
    event_headers,
    header,
    record_key,
)
from .envelope import SCHEMA_VERSION, Event, WireEvent, payload_class, payload_of, utc_now
from .errors import (
    AgentstreamError,
    BatchDeadLetter,
    BrokerUnavailableError,
    ConfigurationError,
    DeadLetter,
    DecodeError,
    EventTypeError,
    MalformedRecordError,
    PayloadValidationError,
    RecordLocation,
    RecordTooLargeError,
    SkipEvent,
    UnknownContentTypeError,
)
from .ids import new_event_id, new_instance_id
from .payloads import PAYLOADS, Payload
from .routing import Routing, matches

__all__ = [
    "AUDIT_PREFIX",
    "DEFAULT_MAX_RECORD_BYTES",
    "JSON",
    "MSGPACK",
    "PAYLOADS",
    "SCHEMA_VERSION",
    "AgentstreamError",
    "BatchDeadLetter",
    "BrokerUnavailableError",
    "ConfigurationError",
    "DeadLetter",
    "DecodeError",
    "Encoding",
    "Event",
    "EventType",
    "EventTypeError",
    "MalformedRecordError",
    "Payload",
    "PayloadValidationError",
    "RecordLocation",
    "RecordTooLargeError",
    "Routing",
    "SkipEvent",
    "StopReason",
    "UnknownContentTypeError",
    "WireEvent",
    "audit_type",
    "decode_event",
    "decode_record",
    "encode_event",
    "encoding_of",
    "event_headers",
    "header",
    "matches",
    "new_event_id",
    "new_instance_id",
    "payload_class",
    "payload_of",
    "record_key",
    "utc_now",
]
