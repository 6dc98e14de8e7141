from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, SecretStr, ValidationError
from support.tls import TlsFiles, encrypted_key

from agentstream.schemas.errors import ConfigurationError
from agentstream.schemas.settings import KafkaSettings, settings_error, split_server


def test_env_prefix_and_aiokafka_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTREAM_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("AGENTSTREAM_LINGER_MS", "20")
    monkeypatch.setenv("AGENTSTREAM_COMPRESSION_TYPE", "gzip")
    monkeypatch.setenv("AGENTSTREAM_SESSION_TIMEOUT_MS", "15000")
    settings = KafkaSettings()
    producer = settings.producer_options()
    assert producer["bootstrap_servers"] == "k1:9092,k2:9092"
    assert producer["linger_ms"] == 20
    assert producer["compression_type"] == "gzip"
    assert producer["acks"] == "all"
    assert "session_timeout_ms" not in producer
    consumer = settings.consumer_options()
    assert consumer["session_timeout_ms"] == 15000
    assert consumer["enable_auto_commit"] is False
    assert "linger_ms" not in consumer


def test_explicit_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSTREAM_BOOTSTRAP_SERVERS", "from-env:9092")
    assert KafkaSettings(bootstrap_servers="given:9092").bootstrap_servers == "given:9092"


def test_options_match_aiokafka_signatures() -> None:
    import inspect

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    settings = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="u", sasl_plain_password="p",  # type: ignore[arg-type]
    )  # fmt: skip
    for cls, options in (
        (AIOKafkaProducer, settings.producer_options()),
        (AIOKafkaConsumer, settings.consumer_options()),
        (AIOKafkaAdminClient, settings.admin_options()),
    ):
        accepted = set(inspect.signature(cls.__init__).parameters)
        assert set(options) <= accepted, set(options) - accepted


def test_sasl_credentials_are_secret_and_passed_in_the_clear_only_to_the_client() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="svc", sasl_plain_password="s3cret",  # type: ignore[arg-type]
    )  # fmt: skip
    assert "s3cret" not in repr(settings)
    options = settings.client_options()
    assert options["sasl_plain_password"] == "s3cret"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert "ssl_context" not in options


def test_plaintext_leaves_sasl_out() -> None:
    options = KafkaSettings(sasl_plain_username="x").client_options()
    assert "sasl_plain_username" not in options and "sasl_mechanism" not in options


def test_ssl_builds_a_verifying_context() -> None:
    options = KafkaSettings(security_protocol="SSL").client_options()
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_setting_takes_inf_or_nan(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AGENTSTREAM_RETENTION_DAYS=inf`` passed ``gt=0`` and was an OverflowError traceback
    at start; every float setting of every service inherits the refusal."""
    from agentstream.consumers.metrics.settings import MetricsSettings
    from agentstream.consumers.persistence.service import PersistenceSettings

    monkeypatch.setenv("AGENTSTREAM_RETENTION_DAYS", value)
    with pytest.raises(ValidationError) as caught:
        PersistenceSettings()
    assert "retention_days (AGENTSTREAM_RETENTION_DAYS): expected a finite number" in str(
        settings_error(caught.value)
    )
    with pytest.raises(ValidationError):
        MetricsSettings(active_session_window_s=float(value))


def test_enumerations_are_checked() -> None:
    with pytest.raises(ValidationError):
        KafkaSettings(security_protocol="TLS")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        KafkaSettings(acks="2")  # type: ignore[arg-type]


def test_acks_expand_to_aiokafka_values() -> None:
    assert KafkaSettings(acks="1").producer_options()["acks"] == 1
    assert KafkaSettings(acks="0").producer_options()["acks"] == 0


class _WithSecret(KafkaSettings):
    api_token: SecretStr = Field(default=SecretStr("default-token"), min_length=8)


def error_for(
    cls: type[KafkaSettings], monkeypatch: pytest.MonkeyPatch, **env: str
) -> ConfigurationError | None:
    """The settings error of ``cls()`` with ``env`` (AGENTSTREAM_<NAME>) set."""
    for name, value in env.items():
        monkeypatch.setenv(f"AGENTSTREAM_{name.upper()}", value)
    with pytest.raises(ValidationError) as caught:
        cls()
    return settings_error(caught.value)


def test_settings_error_names_each_setting_its_variable_what_was_expected_and_what_came(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = error_for(KafkaSettings, monkeypatch, security_protocol="ssl", linger_ms="soon")
    assert isinstance(error, ConfigurationError)
    assert str(error) == (
        "invalid settings: security_protocol (AGENTSTREAM_SECURITY_PROTOCOL): expected "
        "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL', got 'ssl'; linger_ms "
        "(AGENTSTREAM_LINGER_MS): expected a valid integer, unable to parse string as an "
        "integer, got 'soon'"
    )


def test_settings_error_never_shows_a_secret_and_ignores_other_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = error_for(_WithSecret, monkeypatch, api_token="s3cr")
    assert "api_token (AGENTSTREAM_API_TOKEN): Value should have at least 8 items" in str(error)
    assert "s3cr" not in str(error)

    class Other(BaseModel):
        port: int

    with pytest.raises(ValidationError) as other:
        Other(port="x")  # type: ignore[arg-type]
    assert settings_error(other.value) is None


def test_a_topic_prefix_kafka_would_refuse_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert str(error_for(KafkaSettings, monkeypatch, topic_prefix="team a")) == (
        "invalid settings: topic_prefix (AGENTSTREAM_TOPIC_PREFIX): expected a topic prefix "
        "of ASCII letters, digits, '.', '_' and '-', got 'team a'"
    )
    # `AGENTSTREAM_TOPIC_PREFIX=` gave topics .events, .alerts...: no service reads them
    assert str(error_for(KafkaSettings, monkeypatch, topic_prefix="")) == (
        "invalid settings: topic_prefix (AGENTSTREAM_TOPIC_PREFIX): expected a topic prefix "
        "(agentstream by default), got an empty one"
    )


def test_sasl_without_credentials_is_refused_naming_what_is_missing() -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(security_protocol="SASL_SSL", sasl_plain_username="svc")
    assert str(settings_error(caught.value)) == (
        "invalid settings: expected SASL credentials with security_protocol SASL_SSL (PLAIN), "
        "got no sasl_plain_password (AGENTSTREAM_SASL_PLAIN_PASSWORD)"
    )
    assert (
        KafkaSettings(
            security_protocol="SASL_PLAINTEXT", sasl_plain_username="u", sasl_plain_password="p"
        ).client_options()["sasl_plain_username"]
        == "u"
    )


def test_unreadable_tls_files_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"expected ssl_cafile \(AGENTSTREAM_SSL_CAFILE\)"):
        KafkaSettings(security_protocol="SSL", ssl_cafile=str(tmp_path / "none.pem")).ssl_context()
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="expected ssl_certfile"):
        KafkaSettings(security_protocol="SSL", ssl_certfile=str(not_pem)).ssl_context()


def test_an_encrypted_key_without_its_pass_phrase_is_said_not_asked_for(
    tls_files: TlsFiles, tmp_path: Path
) -> None:
    # without a password OpenSSL asked on the terminal: a command hung at "Enter PEM pass phrase"
    key = encrypted_key(tls_files, tmp_path, "pw-1")
    settings = {"security_protocol": "SSL", "ssl_certfile": str(tls_files.cert),
                "ssl_keyfile": str(key)}  # fmt: skip
    with pytest.raises(ConfigurationError) as refused:
        KafkaSettings(**settings).ssl_context()
    assert str(refused.value) == (
        f"ssl_keyfile {str(key)!r} is an encrypted private key: set its pass phrase in "
        "ssl_password (AGENTSTREAM_SSL_PASSWORD)"
    )
    assert KafkaSettings(**settings, ssl_password="pw-1").ssl_context() is not None
    with pytest.raises(ConfigurationError, match="expected ssl_certfile") as wrong:
        KafkaSettings(**settings, ssl_password="pw-2").ssl_context()
    assert "pw-2" not in str(wrong.value)


@pytest.mark.parametrize(
    "servers", ["kafka-1:9092,kafka-2:9093", "kafka", "[::1]:9092", " a:1 , b:2 ", "[fe80::1]"]
)
def test_bootstrap_servers_as_kafka_takes_them(servers: str) -> None:
    assert KafkaSettings(bootstrap_servers=servers).bootstrap_servers == servers


@pytest.mark.parametrize("servers", ["", "host:notaport", "a:1,,b:2", "h:0", "h:70000", ":9092"])
def test_bootstrap_servers_that_no_client_can_use_are_refused(servers: str) -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(bootstrap_servers=servers)
    assert str(settings_error(caught.value)) == (
        "invalid settings: bootstrap_servers (AGENTSTREAM_BOOTSTRAP_SERVERS): expected "
        f"comma-separated host:port (127.0.0.1:9092,kafka-2:9092), got {servers!r}"
    )


def test_a_listener_url_is_not_a_bootstrap_server() -> None:
    with pytest.raises(ValidationError, match="without a listener's scheme"):
        KafkaSettings(bootstrap_servers="PLAINTEXT://kafka:9092")


def test_kafka_options_are_bounded_and_acks_minus_one_is_all() -> None:
    assert KafkaSettings(acks="-1").acks == "all"  # type: ignore[arg-type]
    assert KafkaSettings(linger_ms=0, fetch_max_wait_ms=0).linger_ms == 0
    for option, value in (
        ("linger_ms", -5),
        ("fetch_max_wait_ms", -1),
        ("max_batch_size", 0),
        ("request_timeout_ms", 0),
        # Kafka's 32-bit fields: larger values failed inside aiokafka after the start
        ("fetch_max_wait_ms", 2**31),
        ("request_timeout_ms", 99_999_999_999),
        ("session_timeout_ms", 2**31),
        ("fetch_max_bytes", 2**31),
    ):
        with pytest.raises(ValidationError, match=option):
            KafkaSettings(**{option: value})
    assert KafkaSettings(max_partition_fetch_bytes=2**31 - 1).max_partition_fetch_bytes > 0
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(session_timeout_ms=6_000, heartbeat_interval_ms=6_000)
    assert "expected heartbeat_interval_ms below session_timeout_ms" in str(
        settings_error(caught.value)
    )


def test_split_server_reads_entries_as_the_clients_do() -> None:
    assert split_server(" kafka:9093 ") == ("kafka", "9093")
    assert split_server("kafka") == ("kafka", "9092")
    assert split_server("[::1]:9094") == ("::1", "9094")
    assert split_server("[fe80::1]") == ("fe80::1", "9092")


def test_a_value_given_on_the_command_line_is_named_by_its_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--bootstrap-servers ''` was reported as AGENTSTREAM_BOOTSTRAP_SERVERS, set nowhere."""
    monkeypatch.setenv("AGENTSTREAM_LINGER_MS", "-1")
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(bootstrap_servers="")  # as the CLI builds it from its options
    text = str(settings_error(caught.value, {"bootstrap_servers", "topic_prefix"}))
    assert "bootstrap_servers (--bootstrap-servers): expected comma-separated" in text
    assert "linger_ms (AGENTSTREAM_LINGER_MS)" in text  # from the environment
