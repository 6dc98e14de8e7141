"""The tracing service's settings, and where its OTLP export goes.

Our own settings (``AGENTSTREAM_OTLP_ENDPOINT``, ``AGENTSTREAM_OTLP_HEADERS``) win; otherwise the
standard OpenTelemetry variables apply, with the precedence of the OTLP exporter spec:
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is) over ``OTEL_EXPORTER_OTLP_ENDPOINT``
(``/v1/traces`` appended), ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` over
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_TRACES_COMPRESSION`` over
``OTEL_EXPORTER_OTLP_COMPRESSION``; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``.
The exporter speaks OTLP/HTTP with protobuf bodies: ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or
``OTEL_EXPORTER_OTLP_PROTOCOL`` set to anything else (``grpc``, ``http/json``) is refused at
start, instead of sending to a gRPC port requests it cannot read.
TLS to the endpoint: ``AGENTSTREAM_OTLP_CERTIFICATE`` (a CA bundle to trust), then
``OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`` and ``OTEL_EXPORTER_OTLP_CERTIFICATE``; a client
certificate for mutual TLS likewise (``…_CLIENT_CERTIFICATE`` and ``…_CLIENT_KEY``). Without a
CA bundle the system's trust store is used.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import unquote

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from agentstream.consumers.runtime import HttpPort, ServiceSettings
from agentstream.consumers.runtime.http import endpoint_shown, http_url_problem
from agentstream.schemas.errors import ConfigurationError, describe
from agentstream.schemas.settings import PREFIX, key_password_missing

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
PROTOCOL = "http/protobuf"
TRACES_PATH = "/v1/traces"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _otel(variable: str) -> Any:
    """A setting read from the OpenTelemetry variable ``variable`` only (no default)."""
    return Field(default=None, validation_alias=_env(variable))


class TracingSettings(ServiceSettings):
    """``agentstream consume tracing``: assembly limits, export target, restore window."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", populate_by_name=True)

    http_port: HttpPort = 9105

    @model_validator(mode="after")
    def _export_target_resolves(self) -> Self:
        """Resolve the export target once here: a bad endpoint URL or header list is refused
        at start, before any broker is waited for."""
        export_target(self)
        return self

    # --- export target --------------------------------------------------------------------
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=_env("AGENTSTREAM_OTLP_ENDPOINT", "otlp_endpoint"),
        description="Full OTLP/HTTP traces URL (e.g. http://collector:4318/v1/traces).",
    )
    otlp_headers: SecretStr | None = Field(
        default=None,
        validation_alias=_env("AGENTSTREAM_OTLP_HEADERS", "otlp_headers"),
        description="Headers for the export, k=v,k2=v2 (values URL-encoded), e.g. auth tokens.",
    )
    otel_traces_endpoint: str | None = _otel("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    otel_endpoint: str | None = _otel("OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_traces_headers: SecretStr | None = _otel("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    otel_headers: SecretStr | None = _otel("OTEL_EXPORTER_OTLP_HEADERS")
    otel_traces_compression: str | None = _otel("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
    otel_compression: str | None = _otel("OTEL_EXPORTER_OTLP_COMPRESSION")
    otel_traces_protocol: str | None = _otel("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    otel_protocol: str | None = _otel("OTEL_EXPORTER_OTLP_PROTOCOL")
    otlp_certificate: str | None = Field(
        default=None,
        validation_alias=_env("AGENTSTREAM_OTLP_CERTIFICATE", "otlp_certificate"),
        description="CA bundle (PEM) to verify the endpoint's TLS certificate with.",
    )
    otel_traces_certificate: str | None = _otel("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
    otel_certificate: str | None = _otel("OTEL_EXPORTER_OTLP_CERTIFICATE")
    otlp_client_certificate: str | None = Field(
        default=None,
        validation_alias=_env("AGENTSTREAM_OTLP_CLIENT_CERTIFICATE", "otlp_client_certificate"),
        description="Client certificate (PEM) for mutual TLS with the endpoint.",
    )
    otel_traces_client_certificate: str | None = _otel(
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"
    )
    otel_client_certificate: str | None = _otel("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
    otlp_client_key: str | None = Field(
        default=None,
        validation_alias=_env("AGENTSTREAM_OTLP_CLIENT_KEY", "otlp_client_key"),
        description="The client certificate's private key (PEM).",
    )
    otel_traces_client_key: str | None = _otel("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY")
    otel_client_key: str | None = _otel("OTEL_EXPORTER_OTLP_CLIENT_KEY")
    otel_service_name: str | None = Field(
        default=None,
        validation_alias=_env("OTEL_SERVICE_NAME", "otel_service_name"),
        description="service.name of exported spans; default: the agent id of each trace.",
    )
    otel_resource_attributes: str | None = _otel("OTEL_RESOURCE_ATTRIBUTES")
    otlp_timeout_ms: int = Field(default=10_000, ge=1, description="Timeout of one POST.")

    # --- batching, retries, buffering -------------------------------------------------------
    export_batch_spans: int = Field(default=512, ge=1, description="Spans per request (at most).")
    export_linger_ms: int = Field(
        default=0,
        ge=0,
        description="Wait this long for more traces before a POST (0: batches form on their own "
        "while a POST is in flight).",
    )
    export_queue_spans: int = Field(
        default=20_000, ge=1, description="Spans buffered for export; above it, traces are dropped."
    )
    export_max_retries: int = Field(default=5, ge=0, description="Retries of a failed POST.")
    export_backoff_ms: int = Field(default=500, ge=1, description="First retry delay.")
    export_max_backoff_ms: int = Field(default=30_000, ge=1, description="Longest retry delay.")
    export_wait_ms: int = Field(
        default=10_000,
        ge=0,
        description="How long a batch of records waits for the export of the turns it ended "
        "before its offsets may be committed (0: never waits).",
    )

    # --- assembly ---------------------------------------------------------------------------
    idle_timeout_ms: int = Field(
        default=300_000, ge=1, description="A turn without events this long is exported incomplete."
    )
    max_turn_duration_ms: int = Field(
        default=3_600_000, ge=1, description="A turn older than this (event time) is closed."
    )
    max_open_turns: int = Field(default=10_000, ge=1, description="Open turns per process (LRU).")
    max_spans_per_turn: int = Field(default=1_000, ge=1)
    max_events_per_span: int = Field(default=128, ge=0)
    max_attribute_chars: int = Field(default=4_096, ge=16)

    # --- restore ----------------------------------------------------------------------------
    restore_window_records: int = Field(
        default=20_000,
        ge=0,
        description="Records before the committed offset re-read on assignment to rebuild the "
        "turns still open (0: no restore).",
    )
    restore_timeout_ms: int = Field(default=30_000, ge=1)


@dataclass(frozen=True)
class ExportTarget:
    """Where and how to POST: resolved once from the settings."""

    endpoint: str
    headers: dict[str, str] = field(default_factory=dict)
    compression: Literal["none", "gzip"] = "none"
    service_name: str | None = None
    resource: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def shown(self) -> str:
        """The endpoint as log lines show it: without user info or query (credentials)."""
        return endpoint_shown(self.endpoint)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an https endpoint with a CA bundle or a client certificate
        (None: urllib's default, the system's trust store); unreadable files are a
        :class:`ConfigurationError` naming them."""
        if self.client_key and not self.client_cert:  # a key alone was ignored without a word
            raise ConfigurationError(
                "OTLP TLS: expected a client certificate (AGENTSTREAM_OTLP_CLIENT_CERTIFICATE or "
                f"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE) with the client key {self.client_key!r}"
            )
        if not (self.ca_file or self.client_cert):
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.client_cert:
                context.load_cert_chain(
                    self.client_cert,
                    self.client_key,
                    key_password_missing(
                        f"the OTLP client key {self.client_key or self.client_cert!r}",
                        "give an unencrypted one (OTLP has no setting for a pass phrase)",
                    ),
                )
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f for f in (self.ca_file, self.client_cert, self.client_key) if f)
            raise ConfigurationError(
                f"OTLP TLS: expected readable PEM files ({files}), got {describe(exc)}"
            ) from None
        return context


def parse_pairs(text: str | None, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` (the OTel env format; values URL-decoded) into a dict."""
    pairs: dict[str, str] = {}
    if not text:
        return pairs
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            shown = f"{key.strip()}=…" if sep else "an item without '='"  # never its value
            raise ConfigurationError(
                f"{what}: expected comma-separated key=value pairs, got {shown}"
            )
        pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def export_target(settings: TracingSettings) -> ExportTarget:
    if settings.otlp_endpoint:
        endpoint = settings.otlp_endpoint
    elif settings.otel_traces_endpoint:
        endpoint = settings.otel_traces_endpoint
    elif settings.otel_endpoint:
        endpoint = settings.otel_endpoint.rstrip("/") + TRACES_PATH
    else:
        endpoint = DEFAULT_ENDPOINT
    problem = http_url_problem(endpoint)
    if problem is not None:
        raise ConfigurationError(f"OTLP endpoint: {problem}")
    headers: dict[str, str] = {}
    headers.update(parse_pairs(_secret(settings.otel_headers), "OTEL_EXPORTER_OTLP_HEADERS"))
    headers.update(
        parse_pairs(_secret(settings.otel_traces_headers), "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    )
    headers.update(parse_pairs(_secret(settings.otlp_headers), "AGENTSTREAM_OTLP_HEADERS"))
    protocol = (settings.otel_traces_protocol or settings.otel_protocol or PROTOCOL).strip()
    if protocol.lower() != PROTOCOL:
        variable = "_TRACES" if settings.otel_traces_protocol else ""
        raise ConfigurationError(
            f"OTLP protocol (OTEL_EXPORTER_OTLP{variable}_PROTOCOL): expected {PROTOCOL}, the "
            f"only one this exporter speaks, got {protocol!r}; point the endpoint at the "
            f"collector's OTLP/HTTP receiver (port 4318 by default, not gRPC's 4317)"
        )
    compression = (settings.otel_traces_compression or settings.otel_compression or "none").lower()
    if compression not in ("none", "gzip"):
        raise ConfigurationError(f"OTLP compression: expected none or gzip, got {compression!r}")
    client_key = (
        settings.otlp_client_key or settings.otel_traces_client_key or settings.otel_client_key
    )
    target = ExportTarget(
        endpoint=endpoint,
        headers=headers,
        compression="gzip" if compression == "gzip" else "none",
        service_name=settings.otel_service_name or None,
        resource=parse_pairs(settings.otel_resource_attributes, "OTEL_RESOURCE_ATTRIBUTES"),
        timeout_s=settings.otlp_timeout_ms / 1000,
        ca_file=settings.otlp_certificate
        or settings.otel_traces_certificate
        or settings.otel_certificate,
        client_cert=settings.otlp_client_certificate
        or settings.otel_traces_client_certificate
        or settings.otel_client_certificate,
        client_key=client_key,
    )
    target.ssl_context()  # the files are read at start: a wrong path is said there
    return target
