"""The ``AGENTSTREAM_*`` variables of a process's environment that no setting reads.

pydantic-settings ignores a variable it does not know, so a misspelt name leaves a default in
force without a word; every ``agentstream`` command names such variables (see
:func:`unread_variables`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from .settings import PREFIX, settings_classes

HARNESS_PREFIXES = ("AGENTSTREAM_TEST_", "AGENTSTREAM_REQUIRE_")
"""Variables of the test suite (``make test``, ``.ci/run``), not settings of a process."""


def unread_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``AGENTSTREAM_*`` variable of ``environ`` that no settings class
    imported so far reads, with the closest name one reads (``AGENTSTREAM_BOOTSTRAP_SERVER``:
    did you mean ``AGENTSTREAM_BOOTSTRAP_SERVERS``?)."""
    known: set[str] = set()
    for cls in settings_classes().values():
        known.update(_environment_names(cls))
    suffixes = [name[len(PREFIX) :] for name in known if name.startswith(PREFIX)]
    lines = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(PREFIX) or name in known:
            continue
        if name.startswith(HARNESS_PREFIXES) or _service_link(name, environ[variable]):
            continue
        close = difflib.get_close_matches(name[len(PREFIX) :], suffixes, n=1, cutoff=0.75)
        hint = f" (did you mean {PREFIX}{close[0]}?)" if close else ""
        lines.append(f"{variable} is set, but no agentstream setting reads it{hint}")
    return lines


_SERVICE_LINK = re.compile(
    r"_SERVICE_HOST$|_SERVICE_PORT(_\w+)?$|_PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$"
)


def _service_link(name: str, value: str) -> bool:
    """Whether ``name`` is one of the variables Kubernetes gives every pod for each Service
    of its namespace (``AGENTSTREAM_METRICS_SERVICE_HOST``, ``AGENTSTREAM_METRICS_PORT=
    tcp://10.0.0.7:9104``, ...) unless the pod sets ``enableServiceLinks: false``."""
    if _SERVICE_LINK.search(name):
        return True
    return name.endswith("_PORT") and value.startswith(("tcp://", "udp://", "sctp://"))


def _environment_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables ``cls`` reads (case-insensitively): ``<prefix><FIELD>``, or
    a field's alias names instead."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names
