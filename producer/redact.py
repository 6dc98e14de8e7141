"""Redaction of secrets before events leave the pod.

A :class:`Redactor` is a callable applied to an event's ``data`` dict by the publisher (on by
default: :data:`DEFAULT_REDACTOR`). Two kinds of rules:

* **field names** -- the value of a key whose name matches is replaced wholesale. Names are
  compared case-insensitively with ``_``, ``-``, ``.`` and spaces removed, and a key also matches
  when it *ends with* a name (``db_password``, ``X-Api-Key``, ``openaiApiKey``). The bare word
  ``token`` is not a default name: Corail's ``llm.token`` stream carries generated text.
* **quoted pairs in text** -- the field-name rule also applies to the value of a quoted pair
  inside a string (``"password": "..."`` in JSON, ``'api_key': '...'`` in a repr): Calute passes
  tool arguments as a JSON string, and its previews are text.
* **patterns** -- regular expressions applied inside every string value (and string list item).
  The whole match is replaced, or only the group named ``secret`` when the pattern has one
  (``Bearer [REDACTED]``, ``https://user:[REDACTED]@host``).

All patterns are folded into one compiled alternation, so a string is scanned once; strings
shorter than ``min_length`` and non-string values are skipped without a regex call. The
caller's dict is never mutated: containers are copied only along the path to a change, and when
nothing matched the very same dict comes back.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any, Final

import msgspec

__all__ = [
    "DEFAULT_FIELD_NAMES",
    "DEFAULT_PATTERNS",
    "DEFAULT_REDACTOR",
    "REPLACEMENT",
    "Redactor",
]

REPLACEMENT: Final = "[REDACTED]"

DEFAULT_FIELD_NAMES: Final[tuple[str, ...]] = (
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "bearer_token",
    "session_token",
    "private_key",
    "credentials",
    "cookie",
)
"""Keys whose values never leave the pod (matched as described in the module docstring)."""

DEFAULT_PATTERNS: Final[tuple[str, ...]] = (
    # Each pattern starts with a literal character (no leading \b or group): the combined regex
    # then gets sre's first-character prefilter, which keeps clean strings cheap.
    # OpenAI / Anthropic style keys: sk-..., sk-proj-..., sk-ant-...
    r"sk-(?<![A-Za-z0-9_]sk-)[A-Za-z0-9_\-]{16,}",
    # AWS access key ids
    r"A[KS]IA(?<![A-Za-z0-9_]A[KS]IA)[0-9A-Z]{16}\b",
    # GitHub tokens (classic and fine-grained)
    r"gh[pousr]_(?<![A-Za-z0-9_]gh[pousr]_)[A-Za-z0-9]{30,}",
    r"github_pat_[A-Za-z0-9_]{22,}",
    # Slack tokens
    r"xox[abposr]-[A-Za-z0-9\-]{10,}",
    # Google API keys
    r"AIza[0-9A-Za-z_\-]{35}",
    # Authorization: Bearer <token> (only the token is replaced)
    r"B(?i:earer)\s+(?P<secret>[A-Za-z0-9\-._~+/]{8,}=*)",
    # lower-case "bearer" is also a word ("the bearer instrument"): a token has a digit or a
    # symbol besides letters
    r"b(?i:earer)\s+(?P<secret>(?=[A-Za-z]*[0-9\-._~+/])[A-Za-z0-9\-._~+/]{8,}=*)",
    # PEM private key blocks (RSA, EC, OPENSSH, PKCS#8, encrypted)
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    # Passwords in URLs: scheme://user:password@host (only the password is replaced; up to the
    # last @ before the host, so that one holding an @ is hidden whole)
    r"://[^\s:/@]*:(?P<secret>[^\s/]+)@(?=[^\s@/]+)",
)
"""Regular expressions for common secrets, applied inside string values."""

_SCOPED_FLAGS = {re.IGNORECASE: "i", re.MULTILINE: "m", re.DOTALL: "s", re.VERBOSE: "x"}
_LEADING_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")
_GROUP_DEF = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>")
_GROUP_REF = re.compile(r"\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)")
_KEY_SEPARATORS = str.maketrans("", "", "_-. ")
_PAIR = re.compile(r"""(["'])([^"'\n]{1,64})\1\s*:\s*(["'])((?:\\.|(?!\3)[^\\\n])*)\3""")
"""A quoted key, a colon and a quoted value (JSON's ``"k": "v"``, a repr's ``'k': 'v'``); the
value may hold escaped quotes."""
_LAST_WORD = re.compile(r"[_\-. ]+")
_SEQUENCES = (list, tuple)
_SETS = (set, frozenset)
_CONTAINERS = (dict, list, tuple, set, frozenset)
_SCALARS = frozenset((int, float, bool, type(None), bytes))
"""Types whose values no rule applies to: skipped at the cost of a set lookup."""


def _normalise_key(name: str) -> str:
    return name.lower().translate(_KEY_SEPARATORS)


def _alternative(index: int, pattern: re.Pattern[str]) -> str:
    """``pattern`` as one branch of the combined regex: its named groups renamed so branches do
    not collide, its flags scoped to the branch (no wrapping group when it has none, so a branch
    that starts with a literal keeps the combined regex's first-character prefilter)."""
    source = _LEADING_FLAGS.sub("", pattern.pattern)
    source = _GROUP_DEF.sub(lambda m: f"(?P<_g{index}_{m.group(1)}>", source)
    source = _GROUP_REF.sub(lambda m: f"(?P=_g{index}_{m.group(1)})", source)
    flags = "".join(letter for flag, letter in _SCOPED_FLAGS.items() if pattern.flags & flag)
    return f"(?{flags}:{source})" if flags else source


class Redactor:
    """Returns a redacted copy of a ``data`` dict, or the same dict when nothing matched.

    ``field_names``: keys whose values are replaced wholesale; ``patterns``: regular expressions
    replaced inside strings (only the ``secret`` group when present); ``min_length``: strings
    shorter than this are not scanned (no default pattern matches fewer than 8 characters).
    ``None`` and empty-string values of sensitive keys are kept (nothing to hide).
    """

    __slots__ = (
        "_combined",
        "_fragments",
        "_key_cache",
        "_names",
        "_patterns",
        "min_length",
        "replacement",
    )

    def __init__(
        self,
        *,
        field_names: Iterable[str] = DEFAULT_FIELD_NAMES,
        patterns: Iterable[str | re.Pattern[str]] = DEFAULT_PATTERNS,
        replacement: str = REPLACEMENT,
        min_length: int = 8,
    ) -> None:
        self.replacement = replacement
        self.min_length = min_length
        self._names: tuple[str, ...] = tuple(
            n for n in {_normalise_key(name) for name in field_names} if n
        )
        self._key_cache: dict[str, bool] = {}
        # What a sensitive key in text must contain: its name's last word ("token" of
        # access_token, "key" of api_key), which camelCase and snake_case spellings share
        words = {w for name in field_names if (w := _LAST_WORD.split(name.lower())[-1])}
        self._fragments: tuple[str, ...] = tuple(  # "key" finds what "apikey" would
            sorted(w for w in words if not any(o != w and o in w for o in words))
        )
        self._patterns = tuple(p if isinstance(p, re.Pattern) else re.compile(p) for p in patterns)
        branches = [_alternative(index, pattern) for index, pattern in enumerate(self._patterns)]
        self._combined: re.Pattern[str] | None = (
            re.compile("|".join(branches)) if branches else None
        )

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        return self._dict(data)

    def is_sensitive_key(self, key: str) -> bool:
        """Whether the value of ``key`` is replaced wholesale (cached per key)."""
        cached = self._key_cache.get(key)
        if cached is None:
            normalised = _normalise_key(key)
            cached = any(normalised.endswith(name) for name in self._names)
            if len(self._key_cache) < 4096:
                self._key_cache[key] = cached
        return cached

    def redact_text(self, text: str) -> str:
        """``text`` with every pattern match replaced, and the value of every quoted key/value
        pair whose key is a sensitive name (``"password": "..."`` in JSON, ``'api_key': '...'``
        in a repr), the same object when nothing matched."""
        if len(text) < self.min_length:
            return text
        if self._combined is not None and self._combined.search(text) is not None:
            text = self._combined.sub(self._replace, text)
        elif '":' not in text and "':" not in text:
            return text
        return self._pairs(text)

    def _pairs(self, text: str) -> str:
        """The values of quoted pairs with a sensitive key replaced (Calute's argument and
        result previews are JSON or repr text). Text that names no sensitive key, most of it,
        costs a lower-casing and a few substring checks."""
        lowered = text.lower()
        for fragment in self._fragments:
            if fragment in lowered:
                break
        else:
            return text
        replacement = self.replacement

        def replace(match: re.Match[str]) -> str:
            if not match.group(4) or not self.is_sensitive_key(match.group(2)):
                return match.group(0)
            start, end = match.span(4)
            offset = match.start()
            whole = match.group(0)
            return whole[: start - offset] + replacement + whole[end - offset :]

        return _PAIR.sub(replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        # Slow path, only for a string that holds a secret: the alternation took the first
        # pattern that matches at this position, so the same pattern is found again here.
        text, start = match.string, match.start()
        for pattern in self._patterns:
            own = pattern.match(text, start)
            if own is None:
                continue
            if "secret" not in pattern.groupindex or own.group("secret") is None:
                return self.replacement
            whole = match.group(0)
            s_start, s_end = own.span("secret")
            return whole[: s_start - start] + self.replacement + whole[s_end - start :]
        return self.replacement

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return self._dict(value)
        if isinstance(value, _SEQUENCES):
            return self._sequence(value)
        if isinstance(value, _SETS):  # the encoders write them as arrays
            items = list(value)
            walked = self._sequence(items)
            return value if walked is items else walked
        fields = _fields(value)  # dataclasses and Structs: the encoders write their fields
        if fields is not None:
            redacted = self._dict(fields)
            return value if redacted is fields else redacted
        return value

    def _dict(self, data: dict[str, Any]) -> dict[str, Any]:
        # The hot path: written out flat (no helper calls for keys already seen and for
        # short or clean strings), since it runs on every emitted event.
        changed: dict[str, Any] | None = None
        key_cache = self._key_cache
        combined = self._combined
        min_length = self.min_length
        for key, value in data.items():
            sensitive = key_cache.get(key)
            if sensitive is None:
                sensitive = isinstance(key, str) and self.is_sensitive_key(key)
            if sensitive:
                if value is None or value == "" or type(value) is bool:  # is_secret: True
                    continue
                new: Any = self.replacement
            elif type(value) is str:
                if len(value) < min_length:
                    continue
                if combined is not None and combined.search(value) is not None:
                    new = self._pairs(combined.sub(self._replace, value))
                elif '":' in value or "':" in value:  # quoted pairs: JSON or a repr in text
                    new = self._pairs(value)
                else:
                    continue
            elif type(value) in _SCALARS:
                continue
            elif isinstance(value, _CONTAINERS):
                if not value:  # Calute's empty metadata, on almost every audit event
                    continue
                new = self._value(value)
            else:
                new = self._value(value)
            if new is not value:
                if changed is None:
                    changed = dict(data)
                changed[key] = new
        if changed is None:
            return data
        return changed

    def _sequence(self, items: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
        changed: list[Any] | None = None
        for index, item in enumerate(items):
            new = self._value(item)
            if new is not item:
                if changed is None:
                    changed = list(items)
                changed[index] = new
        if changed is None:
            return items
        return tuple(changed) if isinstance(items, tuple) else changed


def _fields(value: Any) -> dict[str, Any] | None:
    """The fields of a dataclass instance or a msgspec Struct, as the encoders see them."""
    if isinstance(value, msgspec.Struct):
        return msgspec.structs.asdict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


DEFAULT_REDACTOR: Final = Redactor()
"""The redactor the publisher applies unless told otherwise (``redact=None`` turns it off)."""
