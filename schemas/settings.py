"""Kafka settings, shared by agent pods and services.

One settings object per process, read from ``AGENTSTREAM_*`` environment variables at the
entry point only; components take explicit arguments. Each service's settings class
subclasses :class:`KafkaSettings` and adds its own fields.

Kafka options keep aiokafka's names and ``_ms`` units (``AGENTSTREAM_LINGER_MS`` is
aiokafka's ``linger_ms``). They are declared once, here, each marked with the clients it
applies to, and expanded by :meth:`KafkaSettings.client_options`,
:meth:`~KafkaSettings.producer_options`, :meth:`~KafkaSettings.consumer_options` and
:meth:`~KafkaSettings.admin_options`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .codec import DEFAULT_MAX_RECORD_BYTES
from .errors import ConfigurationError
from .routing import Routing, prefix_problem

Role = Literal["client", "producer", "consumer"]


def kafka_option(*roles: Role, default: Any, description: str = "") -> Any:
    """A field that is passed through to aiokafka under its own name for ``roles``."""
    return Field(default=default, description=description, json_schema_extra={"kafka": list(roles)})


INT32_MAX = 2**31 - 1
"""Kafka's requests carry these options as 32-bit integers: a larger value passed the checks at
start, then failed in aiokafka (a producer dropped every event, a consumer never joined)."""
WaitMs = Annotated[int, Field(ge=0, le=INT32_MAX)]
"""A wait or a backoff in milliseconds, 0 or more. The bounds are the type's, so a service that
redeclares an option to change its default keeps them."""
TimeoutMs = Annotated[int, Field(gt=0, le=INT32_MAX)]
"""A timeout or an interval in milliseconds, more than 0."""
Bytes = Annotated[int, Field(gt=0, le=INT32_MAX)]
"""A size in bytes, more than 0."""


def checked(problem: Callable[[str], str | None]) -> AfterValidator:
    """A field validator from a ``*_problem`` function (``Annotated[str, checked(...)]``):
    the problem it finds is the error, said as expected against what came. On a
    ``SecretStr`` field ``problem`` sees the secret's value, and its message must not show it
    (settings errors never show a secret's input)."""

    def check(value: str | SecretStr) -> str | SecretStr:
        found = problem(value.get_secret_value() if isinstance(value, SecretStr) else value)
        if found is not None:
            raise ValueError(found)
        return value

    return AfterValidator(check)


def split_server(entry: str) -> tuple[str, str]:
    """``(host, port)`` of one ``bootstrap_servers`` entry: ``host:port``, ``host`` alone
    (port 9092, as the clients take it) or ``[::1]:9092`` for IPv6; the port unchecked."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest.removeprefix(":") or "9092"
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, port
    return entry, "9092"


def servers_problem(servers: str) -> str | None:
    """What is wrong with a ``bootstrap_servers`` value, or None: comma-separated entries
    that :func:`split_server` reads, each with a host and a port from 1 to 65535."""
    if "://" in servers:  # a listener URL copied from a broker's configuration
        return (
            "expected host:port entries without a listener's scheme (the protocol is "
            f"security_protocol), got {servers!r}"
        )
    for host, port in map(split_server, servers.split(",")):
        if not host or not port.isdigit() or not 0 < int(port) < 65_536:
            return (
                f"expected comma-separated host:port (127.0.0.1:9092,kafka-2:9092), got {servers!r}"
            )
    return None


PREFIX = "AGENTSTREAM_"
"""Of every environment variable agentstream reads."""


class KafkaSettings(BaseSettings):
    """Connection, security, producer and consumer options, and topic naming."""

    # inf and nan are no setting's value: `retention_days=inf` was an OverflowError traceback.
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", allow_inf_nan=False)

    # --- connection (every client) -------------------------------------------------------
    bootstrap_servers: Annotated[str, checked(servers_problem)] = kafka_option(
        "client", default="127.0.0.1:9092", description="Comma-separated host:port list."
    )
    client_id: str = kafka_option("client", default="agentstream")
    request_timeout_ms: TimeoutMs = kafka_option("client", default=40_000)
    retry_backoff_ms: WaitMs = kafka_option("client", default=100)
    metadata_max_age_ms: TimeoutMs = kafka_option("client", default=300_000)
    connections_max_idle_ms: TimeoutMs = kafka_option("client", default=540_000)

    # --- security ------------------------------------------------------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = kafka_option(
        "client", default="PLAINTEXT"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = kafka_option(
        "client", default="PLAIN"
    )
    sasl_plain_username: str | None = kafka_option("client", default=None)
    sasl_plain_password: SecretStr | None = kafka_option("client", default=None)
    ssl_cafile: str | None = Field(
        default=None, description="CA bundle that signs the brokers' certificates."
    )
    ssl_certfile: str | None = Field(default=None, description="Client certificate (mutual TLS).")
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    # --- producer ------------------------------------------------------------------------
    acks: Literal["all", "1", "0"] = kafka_option("producer", default="all")
    linger_ms: WaitMs = kafka_option("producer", default=5)
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = kafka_option(
        "producer", default=None
    )
    max_batch_size: Bytes = kafka_option("producer", default=16_384)
    max_request_size: Bytes = kafka_option("producer", default=DEFAULT_MAX_RECORD_BYTES)
    enable_idempotence: bool = kafka_option(
        "producer",
        default=False,
        description="Needs InitProducerId (Apache Kafka has it; the embedded broker does not).",
    )

    # --- consumer ------------------------------------------------------------------------
    auto_offset_reset: Literal["earliest", "latest"] = kafka_option("consumer", default="earliest")
    session_timeout_ms: TimeoutMs = kafka_option("consumer", default=10_000)
    heartbeat_interval_ms: TimeoutMs = kafka_option("consumer", default=3_000)
    max_poll_interval_ms: TimeoutMs = kafka_option("consumer", default=300_000)
    rebalance_timeout_ms: TimeoutMs | None = kafka_option("consumer", default=None)
    fetch_max_wait_ms: WaitMs = kafka_option("consumer", default=500)
    fetch_max_bytes: Bytes = kafka_option("consumer", default=52_428_800)
    max_partition_fetch_bytes: Bytes = kafka_option("consumer", default=1_048_576)
    isolation_level: Literal["read_uncommitted", "read_committed"] = kafka_option(
        "consumer", default="read_uncommitted"
    )

    # --- topics and wire format ----------------------------------------------------------
    topic_prefix: Annotated[str, checked(prefix_problem)] = Field(
        default="agentstream", description="Topics are <prefix>.events, ..."
    )
    encoding: Literal["json", "msgpack"] = Field(
        default="json", description="Value encoding producers write."
    )

    @field_validator("acks", mode="before")
    @classmethod
    def _acks(cls, acks: Any) -> Any:
        return "all" if str(acks) == "-1" else acks  # Kafka's other name for all

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> KafkaSettings:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"expected heartbeat_interval_ms below session_timeout_ms (a third of it is "
                f"usual), got {self.heartbeat_interval_ms} and {self.session_timeout_ms}"
            )
        return self

    @model_validator(mode="after")
    def _sasl_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                name
                for name in ("sasl_plain_username", "sasl_plain_password")
                if not getattr(self, name)
            ]
            if missing:
                names = ", ".join(f"{name} ({PREFIX}{name.upper()})" for name in missing)
                raise ValueError(
                    f"expected SASL credentials with security_protocol "
                    f"{self.security_protocol} ({self.sasl_mechanism}), got no {names}"
                )
        return self

    def routing(self) -> Routing:
        return Routing(prefix=self.topic_prefix)

    def broker_address(self) -> str:
        """Where the clients look for brokers, for messages (see :func:`broker_address`)."""
        return broker_address(
            {
                "bootstrap_servers": self.bootstrap_servers,
                "security_protocol": self.security_protocol,
            }
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL (system CAs unless ``ssl_cafile`` is set)."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"expected ssl_cafile ({PREFIX}SSL_CAFILE) to be a readable PEM CA bundle, "
                f"got {self.ssl_cafile!r}: {exc}"
            ) from None
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_keyfile and not self.ssl_certfile:  # a key alone was ignored without a word
            raise ConfigurationError(
                f"expected ssl_certfile ({PREFIX}SSL_CERTFILE) with ssl_keyfile "
                f"({PREFIX}SSL_KEYFILE), got a key file alone: {self.ssl_keyfile!r}"
            )
        if self.ssl_certfile:
            password: str | Callable[[], str] = (
                self.ssl_password.get_secret_value()
                if self.ssl_password
                else key_password_missing(
                    f"ssl_keyfile {self.ssl_keyfile or self.ssl_certfile!r}",
                    f"set its pass phrase in ssl_password ({PREFIX}SSL_PASSWORD)",
                )
            )
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"expected ssl_certfile ({PREFIX}SSL_CERTFILE) and ssl_keyfile to be a "
                    f"readable PEM certificate and its key, got {self.ssl_certfile!r} and "
                    f"{self.ssl_keyfile!r}: {exc}"
                ) from None
        return context

    def _options(self, role: Role) -> dict[str, Any]:
        options: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and role in extra.get("kafka", ()):  # type: ignore[operator]
                value = getattr(self, name)
                if value is None:
                    continue
                options[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return options

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client takes (connection and security)."""
        options = self._options("client")
        if self.security_protocol in ("PLAINTEXT", "SSL"):
            for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
                options.pop(name, None)
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        return options

    def producer_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``."""
        options = {**self.client_options(), **self._options("producer")}
        options["acks"] = "all" if self.acks == "all" else int(self.acks)
        return options

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaConsumer`` (commits are always manual)."""
        return {**self.client_options(), **self._options("consumer"), "enable_auto_commit": False}

    def admin_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaAdminClient``."""
        return self.client_options()


def key_password_missing(key: str, remedy: str) -> Callable[[], str]:
    """The ``password`` to give ``SSLContext.load_cert_chain`` when none is set: without one,
    OpenSSL asks for an encrypted key's pass phrase on the terminal (a command hung there).
    Called only for an encrypted key, it raises :class:`ConfigurationError` naming ``key``
    and what to do."""

    def refuse() -> str:
        raise ConfigurationError(f"{key} is an encrypted private key: {remedy}")

    return refuse


def broker_address(options: Mapping[str, Any]) -> str:
    """Where a client built with ``options`` looks for brokers, for messages: the bootstrap
    servers, with the security protocol when it is not PLAINTEXT (a TLS client in front of a
    plaintext listener, or the other way round, only shows as brokers that do not answer)."""
    servers, protocol = options.get("bootstrap_servers"), options.get("security_protocol")
    return str(servers) if protocol in (None, "PLAINTEXT") else f"{servers} over {protocol}"


def settings_error(
    error: ValidationError, options: Collection[str] | Mapping[str, str] = ()
) -> ConfigurationError | None:
    """The :class:`ConfigurationError` for a settings class (:func:`settings_classes`) that
    refused its values: each wrong setting with where it came from (its command-line option
    when its name is in ``options``, those given on the command line: ``--<name>``, or the
    option a mapping gives; else its environment variable), what was expected and what came
    (never the value of a secret). None when ``error`` is not about settings."""
    cls = settings_classes().get(error.title)
    if cls is None:
        return None
    prefix = str(cls.model_config.get("env_prefix") or "")
    problems: list[str] = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")  # our validators' own words
        if not item["loc"]:  # a check of several settings: its message names them
            problems.append(message)
            continue
        name = str(item["loc"][0])
        field = cls.model_fields.get(name)
        if message.startswith("Input should be "):
            message = "expected " + message.removeprefix("Input should be ")
        secret = field is not None and "SecretStr" in repr(field.annotation)
        said = secret or item["type"] == "missing" or ", got " in message
        got = "" if said else f", got {item['input']!r:.120}"
        if name not in options:
            source = prefix + name.upper()
        elif isinstance(options, Mapping):
            source = options[name]
        else:
            source = f"--{name.replace('_', '-')}"
        inner = ".".join(str(part) for part in item["loc"][1:])  # in a dict or list setting
        where = f" at {inner}" if inner else ""
        problems.append(f"{name} ({source}){where}: {message}{got}")
    return ConfigurationError(f"invalid settings: {'; '.join(problems)}")


class LogSettings(BaseSettings):
    """How a process logs (``agentstream.schemas.logs``): ``AGENTSTREAM_LOG_LEVEL`` and
    ``AGENTSTREAM_LOG_FORMAT`` (``text``, or ``json``: one object per line)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"


def settings_classes() -> dict[str, type[BaseSettings]]:
    """:class:`KafkaSettings` and its subclasses imported so far, and :class:`LogSettings`,
    by class name."""
    found: dict[str, type[BaseSettings]] = {}
    pending: list[type[BaseSettings]] = [KafkaSettings, LogSettings]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found
