"""A digest of a tool call's arguments taken before redaction, for loop detection.

The loops service finds a call repeated by hashing its arguments. Redaction makes arguments
that differ only in a secret identical on the wire (``{"password": "[REDACTED]"}`` for every
password tried), so an agent trying five keys looked like one call made five times and was
paused. When redaction changes a tool call's arguments, the publisher adds ``args_digest``:
an HMAC of the arguments as they were, keyed by a random key that never leaves the process
(so nobody reading Kafka can test guesses of the secret against it). A user turn is handled
by one process, so its calls' digests compare; the loops service uses the digest in place of
the redacted arguments.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from agentstream.schemas.payloads import ARGS_DIGEST, arguments_text

_ARGUMENTS = {"tool.called": "args", "audit.tool_call_attempt": "arguments_preview"}


class ArgumentsDigest:
    """``digested(event_type, data, redacted)``: ``redacted`` with the digest of ``data``'s
    arguments when redaction changed them (a new dict; the caller's is never mutated)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(32)

    def digested(
        self, event_type: str, data: dict[str, Any], redacted: dict[str, Any]
    ) -> dict[str, Any]:
        field = _ARGUMENTS.get(event_type)
        if field is None or redacted is data:
            return redacted
        arguments = data.get(field)
        if redacted.get(field) == arguments:
            return redacted
        return {**redacted, ARGS_DIGEST: self.of(arguments)}

    def of(self, arguments: Any) -> str:
        """The digest of ``arguments`` (equal arguments, equal digests, in this process)."""
        text = arguments_text(arguments).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()[:32]
