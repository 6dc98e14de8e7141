"""What the deploy tests check, shared by the compose and the Kubernetes tests: that an
environment is read by the settings class of the process receiving it, and that a command
line is one the ``agentstream`` command accepts."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, AliasPath
from pydantic_settings import BaseSettings

from agentstream.consumers.cli import build_parser
from agentstream.consumers.runtime.runner import (
    available_services,
    load_service,
    settings_from_options,
)
from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings, LogSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("persistence", "loops", "budget", "metrics", "tracing")


def env_names(settings_class: type[BaseSettings]) -> dict[str, str]:
    """Every environment variable ``settings_class`` reads, upper-case, to its field name.

    A field reads ``<env_prefix><FIELD>``, unless it declares a validation alias (then the
    alias names, e.g. the standard ``OTEL_*`` variables of the tracing service).
    """
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for field_name, info in settings_class.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names[choice.upper()] = field_name
        elif isinstance(alias, str):
            names[alias.upper()] = field_name
        elif isinstance(alias, AliasPath):  # pragma: no cover - none of ours
            continue
        else:
            names[f"{prefix}{field_name}".upper()] = field_name
    return names


def unknown_variables(env: Mapping[str, str], settings_class: type[KafkaSettings]) -> list[str]:
    """The ``AGENTSTREAM_*``/``OTEL_*`` variables of ``env`` that ``settings_class`` ignores
    (and :class:`LogSettings`, which every command reads)."""
    known = {**env_names(settings_class), **env_names(LogSettings)}
    return sorted(
        name
        for name in env
        if name.startswith(("AGENTSTREAM_", "OTEL_")) and name.upper() not in known
    )


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` holding exactly ``env`` among AGENTSTREAM_*/OTEL_* variables."""
    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.startswith(("AGENTSTREAM_", "OTEL_")):
                del os.environ[name]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_class_for(argv: Sequence[str]) -> type[KafkaSettings]:
    """The settings class of the process ``agentstream <argv>`` starts."""
    if len(argv) > 1 and argv[0] == "consume" and not argv[1].startswith("-"):
        cls: type[KafkaSettings] = load_service(argv[1]).settings_class
        return cls
    return KafkaSettings


def check_process(argv: Sequence[str], env: Mapping[str, str], where: str) -> Any:
    """Fail unless ``agentstream <argv>`` with ``env`` is a valid process: a known command
    with valid options, every variable read by its settings, every value valid.

    Returns the parsed arguments (``consume``: the service's settings)."""
    argv = list(argv)
    if not argv:
        pytest.fail(f"{where}: expected an agentstream command line, got none")
    parser = build_parser()
    commands = _subcommands(parser)
    if argv[0] not in commands:
        if argv[0] == "demo":
            pytest.xfail(f"{where}: the `demo` command has not landed yet ({sorted(commands)})")
        pytest.fail(f"{where}: expected a command among {sorted(commands)}, got {argv[0]!r}")
    runs_service = argv[0] == "consume" and len(argv) > 1 and not argv[1].startswith("-")
    if runs_service and argv[1] not in available_services():
        pytest.fail(
            f"{where}: expected `consume <service>` with a service among "
            f"{available_services()}, got {argv}"
        )
    cls = settings_class_for(argv) if runs_service else KafkaSettings
    unknown = unknown_variables(env, cls)
    assert not unknown, (
        f"{where}: {cls.__name__} does not read {unknown} "
        f"(it reads {sorted(n for n in env_names(cls) if n.startswith('AGENTSTREAM_'))})"
    )
    with environment(env):
        _parse(LogSettings, where)  # every command reads these first
        if runs_service:
            return _parse(lambda: settings_from_options(load_service(argv[1]), argv[2:]), where)
        args = _parse(lambda: parser.parse_args(argv), where)
        _parse(lambda: cls(), where)  # every value of env is valid for the settings
        return args


def _subcommands(parser: Any) -> set[str]:
    for action in parser._actions:
        if action.dest == "command":
            return set(action.choices)
    raise AssertionError("the agentstream parser has no commands")


def _parse(action: Any, where: str) -> Any:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return action()
    except SystemExit:
        pytest.fail(f"{where}: the command line is rejected: {stderr.getvalue().strip()}")
    except (ValueError, ConfigurationError) as exc:  # pydantic's, or the runner's, message
        pytest.fail(f"{where}: invalid settings: {exc}")
