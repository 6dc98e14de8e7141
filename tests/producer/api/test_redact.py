"""Redactor: default rules, configuration, copy-on-change."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from agentstream.producer.redact import DEFAULT_REDACTOR, REPLACEMENT, Redactor

R = REPLACEMENT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key sk-proj-abcdefghijklmnop1234 end", f"key {R} end"),
        ("sk-ant-api03-ABCDEFGHIJKLMNOPQRST", R),
        ("aws AKIAIOSFODNN7EXAMPLE here", f"aws {R} here"),
        ("ghp_" + "a1B2" * 9, R),
        ("github_pat_11ABCDEFG0123456789_abcdefghijkl", R),
        ("xoxb-123456789012-abcdefghij", R),
        ("AIza" + "B" * 35, R),
        ("Authorization: Bearer eyJhbGciOi.JIUzI1NiJ9.abc-_", f"Authorization: Bearer {R}"),
        ("authorization: bearer abcdefgh12345678", f"authorization: bearer {R}"),
        ("postgres://bob:hunter2@db:5432/app", f"postgres://bob:{R}@db:5432/app"),
        (
            "see https://user:p%40ss@example.com/x and more",
            f"see https://user:{R}@example.com/x and more",
        ),
        (
            "k=-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----!",
            f"k={R}!",
        ),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\ntruncated", R),
    ],
)
def test_default_patterns(text: str, expected: str) -> None:
    assert DEFAULT_REDACTOR({"v": text}) == {"v": expected}


@pytest.mark.parametrize(
    "text",
    [
        "risk-assessment-document-version-two",  # "sk-" inside a word
        "task-abcdefghijklmnopqrstu",
        "the bearer of bad news",  # too short / a word, not a token
        "https://example.com/path?q=1",  # URL without credentials
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "weather in paris today",
        "sk-short",
    ],
)
def test_clean_text_is_left_alone(text: str) -> None:
    data = {"v": text}
    assert DEFAULT_REDACTOR(data) is data


def test_sensitive_field_names_are_replaced_wholesale() -> None:
    data = {
        "password": "p",
        "db_password": "x",
        "X-Api-Key": "k",
        "openaiApiKey": "k",
        "Authorization": "Basic Zm9vOmJhcg==",
        "client_secret": {"nested": "whole value"},
        "access_token": ["a", "b"],
        "cookie": "c=1",
        "token": "generated text",  # llm.token streams: the bare word is not sensitive
        "max_tokens": 100,
        "api_key": None,  # nothing to hide
        "secret": "",
    }
    out = DEFAULT_REDACTOR(data)
    assert out == {
        "password": R,
        "db_password": R,
        "X-Api-Key": R,
        "openaiApiKey": R,
        "Authorization": R,
        "client_secret": R,
        "access_token": R,
        "cookie": R,
        "token": "generated text",
        "max_tokens": 100,
        "api_key": None,
        "secret": "",
    }


def test_nested_structures_are_walked_and_never_mutated() -> None:
    data: dict[Any, Any] = {
        "name": "http",
        "args": {
            "headers": [("Authorization", "Bearer abcdefghijklmnop")],
            "config": {"password": "hunter2", "retries": 3},
            "url": "https://a:b@host/",
        },
        "untouched": {"deep": ["x", 1, None]},
        7: "non-string key",
    }
    before = copy.deepcopy(data)
    out = DEFAULT_REDACTOR(data)
    assert data == before
    assert out["args"]["headers"] == [("Authorization", f"Bearer {R}")]
    assert out["args"]["config"] == {"password": R, "retries": 3}
    assert out["args"]["url"] == f"https://a:{R}@host/"
    assert out["untouched"] is data["untouched"]  # copied only along the changed path
    assert out[7] == "non-string key"  # type: ignore[index]


def test_custom_rules_replacement_and_flags() -> None:
    redactor = Redactor(
        field_names=["ssn"],
        patterns=[r"\b\d{3}-\d{2}-\d{4}\b", re.compile(r"card=(?P<secret>\d+)", re.I)],
        replacement="***",
        min_length=4,
    )
    out = redactor({"note": "ssn 123-45-6789, CARD=4111111111111111", "SSN": 1, "password": "p"})
    assert out == {"note": "ssn ***, CARD=***", "SSN": "***", "password": "p"}


def test_patterns_with_leading_global_flags_and_group_names_combine() -> None:
    redactor = Redactor(
        field_names=[],
        patterns=[r"(?i)secret=(?P<secret>\w+)", r"(?P<secret>[0-9a-f]{32})"],
    )
    assert redactor({"a": "SECRET=abc"}) == {"a": f"SECRET={R}"}
    assert redactor({"a": "id " + "ab" * 16}) == {"a": f"id {R}"}


def test_no_rules_is_identity() -> None:
    redactor = Redactor(field_names=(), patterns=())
    data = {"password": "p", "v": "sk-" + "a" * 30}
    assert redactor(data) is data


def test_redact_text() -> None:
    assert DEFAULT_REDACTOR.redact_text("short") == "short"
    assert DEFAULT_REDACTOR.redact_text("x AKIAIOSFODNN7EXAMPLE") == f"x {R}"


def test_sets_dataclasses_and_structs_are_walked_as_the_encoders_write_them() -> None:
    """msgspec encodes these natively, so they never went through the plain-values fallback,
    and the redactor walked dicts, lists and tuples only: their secrets reached Kafka."""
    import dataclasses

    import msgspec

    @dataclasses.dataclass
    class Login:
        user: str
        password: str

    class Keys(msgspec.Struct):
        name: str
        api_key: str

    key, token = "sk-proj-ABCDEFGHIJKLMNOPQRSTUV", "ghp_" + "a" * 36
    data = {"keys": {key}, "frozen": frozenset({token}), "login": Login("bob", "hunter2hunter2")}
    data["struct"] = Keys("k", "abc")
    redacted = DEFAULT_REDACTOR(data)
    assert redacted == {
        "keys": [R],
        "frozen": [R],
        "login": {"user": "bob", "password": R},
        "struct": {"name": "k", "api_key": R},
    }
    assert "hunter2" not in msgspec.json.encode(redacted).decode()
    clean = {"tags": {"a", "b"}, "login": Login("bob", "")}
    assert DEFAULT_REDACTOR(clean) is clean  # nothing to hide: the same objects


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres://bob:p@ssw0rd@db:5432/x", f"postgres://bob:{R}@db:5432/x"),
        ("https://u:pw@h/x then y@z", f"https://u:{R}@h/x then y@z"),
        (
            "A bond is a bearer security; the bearer instrument pays coupons.",
            "A bond is a bearer security; the bearer instrument pays coupons.",
        ),
        ("authorization: bearer abc123def456ghi", f"authorization: bearer {R}"),
        ("Authorization: Bearer abcdefghijklmnop", f"Authorization: Bearer {R}"),
    ],
)
def test_url_passwords_holding_an_at_sign_and_prose_with_bearer(text: str, expected: str) -> None:
    """A password with an @ was hidden up to it only; "the bearer instrument" was redacted."""
    assert DEFAULT_REDACTOR.redact_text(text) == expected


def test_booleans_under_secret_sounding_keys_are_kept() -> None:
    """`is_secret: True` became the string "[REDACTED]": a flag hides nothing, and its type
    changed on the wire."""
    data = {"is_secret": True, "has_password": False, "password": 1234}
    assert DEFAULT_REDACTOR(data) == {"is_secret": True, "has_password": False, "password": R}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"user": "bob", "password": "hunter2"}', f'{{"user": "bob", "password": "{R}"}}'),
        ("{'user': 'bob', 'api_key': 'abc'}", f"{{'user': 'bob', 'api_key': '{R}'}}"),
        ('{"openaiApiKey": "z\\"q", "n": "ok"}', f'{{"openaiApiKey": "{R}", "n": "ok"}}'),
        ('{"password": ""}', '{"password": ""}'),  # nothing to hide
        ('{"max_tokens": "100"}', '{"max_tokens": "100"}'),  # not a sensitive name
    ],
)
def test_sensitive_pairs_inside_text_are_redacted_as_dict_keys_are(
    text: str, expected: str
) -> None:
    """Calute passes tool arguments as a JSON string and previews results as text: a
    password there was shipped, since field names applied to dict keys only."""
    assert DEFAULT_REDACTOR.redact_text(text) == expected
    assert DEFAULT_REDACTOR({"args": text})["args"] == expected
    clean = '{"city": "Paris", "units": "metric"}'
    assert DEFAULT_REDACTOR.redact_text(clean) is clean
