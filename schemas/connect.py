"""Why a Kafka client could not connect: nothing answers (wait), or the broker refused a
setting or cannot be reached where it says it is (say which, and stop waiting).

aiokafka reports every failed bootstrap as ``Unable to bootstrap from [...]``; the cause goes
to its log only. Apache Kafka's answer to wrong SASL credentials (``SaslAuthenticationFailed``)
and a certificate the client does not trust then read as a broker that does not answer, and
an operator looks for a network problem while the service waits. Some brokers end a refused
SCRAM exchange with a SCRAM error message instead of an error code (the embedded broker does),
which aiokafka's SCRAM client does not expect: its ``start()`` then raises ``KeyError: 'v'``.

:func:`refusal` connects to the first bootstrap server once, step by step as the client does:
TCP, TLS, Kafka's ``ApiVersions`` (which brokers answer before authentication), then SASL.
The first step that fails names the problem. When the connection or the TLS handshake fails
and the endpoint answers the other way (TLS where the client spoke plaintext, or plaintext
where it began a handshake), the client's ``security_protocol`` does not match the listener:
that is said. Any other failure before the broker answered is an outage and is left to the
caller's retries. A client without SASL is told when the broker closes the connection on its
first unauthenticated request (Apache Kafka does on a SASL listener). Last, the brokers the
metadata names are tried: clients go there after bootstrap, and when the brokers advertise
addresses this client cannot reach (the commonest Kafka misconfiguration: ``localhost`` or a
container's name in ``advertised.listeners``), every later request fails with a
``NodeNotReadyError`` that says nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from .errors import ConfigurationError, describe
from .settings import PREFIX, split_server

PROBE_TIMEOUT_MS = 5_000
_NOTHING_THERE = (ssl.SSLCertVerificationError, ConnectionRefusedError, socket.gaierror)
"""Failures that say what is there (a TLS listener with another CA) or that nothing is."""


class UnreachableBrokersError(ConfigurationError):
    """The bootstrap server answers, but no broker it advertises can be reached from here.

    Retriable: a new broker's name may not resolve yet (DNS catching up), so a wait for the
    broker goes on and says this, and raises it at its deadline. Usually it is the brokers'
    ``advertised.listeners``."""

    retriable = True


async def refusal(
    options: Mapping[str, Any], *, ssl_cafile: str | None = None
) -> ConfigurationError | None:
    """The setting the broker refused, as a :class:`ConfigurationError` that says what to
    check; None when no broker answers (an outage) or the connection works now.

    ``options`` are an aiokafka client's keyword arguments (``KafkaSettings.admin_options()``,
    ``producer_options()`` or ``consumer_options()``); ``ssl_cafile``, when known, is named in
    a TLS refusal (else the CAs the context trusts are). Each step waits at most their
    ``request_timeout_ms``, and never more than :data:`PROBE_TIMEOUT_MS`."""
    servers = str(options.get("bootstrap_servers", ""))
    host, port_text = split_server(servers.split(",")[0])
    port = int(port_text)
    protocol = str(options.get("security_protocol", "PLAINTEXT"))
    context = options.get("ssl_context")
    tls = protocol in ("SSL", "SASL_SSL")
    common = {
        "client_id": options.get("client_id", "agentstream"),
        "request_timeout_ms": min(int(options.get("request_timeout_ms", 40_000)), PROBE_TIMEOUT_MS),
        "ssl_context": context,
    }
    try:  # TCP, TLS and ApiVersions, without authentication
        connection = await create_conn(
            host, port, security_protocol="SSL" if tls else "PLAINTEXT", **common
        )
    except (TimeoutError, OSError, KafkaError) as exc:  # ssl.SSLError is an OSError
        # Something answered, but not as the client expects: a listener of the other kind?
        if not isinstance(exc, _NOTHING_THERE) and await _answers(
            host, port, tls=not tls, timeout_ms=common["request_timeout_ms"]
        ):
            return _other_protocol(host, port, tls=tls)
        if isinstance(exc, ssl.SSLError):
            return ConfigurationError(
                f"the TLS handshake with {host}:{port} failed: {exc} — check ssl_cafile "
                f"({PREFIX}SSL_CAFILE={ssl_cafile or _trusted(context)}) and ssl_check_hostname"
            )
        return None  # nothing answers there yet: an outage
    sasl = protocol.startswith("SASL_")
    if sasl:
        await _close(connection)
        authenticated = await _authenticate(host, port, protocol, options, common)
        if isinstance(authenticated, ConfigurationError):
            return authenticated
        connection = authenticated
    try:  # the request every client sends first, on a connection made as the client makes it
        metadata = await connection.send(MetadataRequest([]))
    except KafkaConnectionError:
        if sasl:
            return None
        return ConfigurationError(
            f"the broker at {host}:{port} answers but closed the connection on a request "
            f"without authentication: it expects SASL — set security_protocol "
            f"({PREFIX}SECURITY_PROTOCOL={'SASL_SSL' if tls else 'SASL_PLAINTEXT'}), "
            f"sasl_mechanism and the credentials"
        )
    except (TimeoutError, KafkaError):
        return None
    finally:
        await _close(connection)
    return await _unreachable_brokers(
        f"{host}:{port}",
        [(b[0], b[1], b[2]) for b in metadata.brokers],
        context if tls else None,
        common["request_timeout_ms"],
    )


async def _answers(host: str, port: int, *, tls: bool, timeout_ms: int) -> bool:
    """Whether ``host:port`` answers Kafka's ApiVersions over TLS (any certificate: this only
    asks which protocol the endpoint speaks) or without it."""
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        connection = await create_conn(
            host,
            port,
            security_protocol="SSL" if tls else "PLAINTEXT",
            ssl_context=context,
            request_timeout_ms=timeout_ms,
        )
    except Exception:
        return False
    await _close(connection)
    return True


async def _close(connection: AIOKafkaConnection) -> None:
    """Close ``connection`` and wait until its socket is (a TLS one closes after its shutdown
    exchange: left to that, a process about to end leaves the socket to the garbage
    collector, a ResourceWarning)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 1.0)


def _other_protocol(host: str, port: int, *, tls: bool) -> ConfigurationError:
    if tls:
        return ConfigurationError(
            f"the endpoint at {host}:{port} speaks Kafka without TLS, and this client starts "
            f"a TLS handshake there: set security_protocol ({PREFIX}SECURITY_PROTOCOL="
            "PLAINTEXT, or SASL_PLAINTEXT with SASL), or connect to the brokers' TLS listener"
        )
    return ConfigurationError(
        f"the endpoint at {host}:{port} speaks TLS, and this client connects without it: set "
        f"security_protocol ({PREFIX}SECURITY_PROTOCOL=SSL, or SASL_SSL with SASL) and "
        f"ssl_cafile, or connect to the brokers' plaintext listener"
    )


async def _authenticate(
    host: str, port: int, protocol: str, options: Mapping[str, Any], common: dict[str, Any]
) -> AIOKafkaConnection | ConfigurationError:
    """A connection authenticated as the client does, or what the broker refused (it has
    just answered without SASL)."""
    mechanism = options.get("sasl_mechanism", "PLAIN")
    user = options.get("sasl_plain_username")
    try:
        return await create_conn(
            host,
            port,
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_plain_username=user,
            sasl_plain_password=options.get("sasl_plain_password"),
            **common,
        )
    except Exception as exc:  # the SCRAM client raises KeyError, ValueError
        return ConfigurationError(
            f"the broker at {host}:{port} refused SASL authentication as {user!r} with "
            f"{mechanism} ({_sasl_cause(exc)}) — check sasl_plain_username and "
            f"sasl_plain_password ({PREFIX}SASL_PLAIN_USERNAME, {PREFIX}SASL_PLAIN_PASSWORD) "
            f"and sasl_mechanism ({PREFIX}SASL_MECHANISM): the broker must enable that "
            f"mechanism and know those credentials"
        )


async def _unreachable_brokers(
    bootstrap: str,
    brokers: list[tuple[int, str, int]],
    context: ssl.SSLContext | None,
    timeout_ms: int,
) -> ConfigurationError | None:
    """Clients talk to the addresses the brokers advertise once the bootstrap server has
    answered. When not one of them can be reached from here, the brokers' advertised
    listeners are wrong for this client (``localhost`` or a container's name); when some
    can, a broker is down, which is an outage."""
    failures = [
        failure
        for failure in await asyncio.gather(
            *(_reach(*broker, context, timeout_ms) for broker in brokers)
        )
        if failure is not None
    ]
    if not failures or len(failures) < len(brokers):
        return None
    return UnreachableBrokersError(
        f"the broker at {bootstrap} answers, but not one broker it advertises can be reached "
        f"from here: {'; '.join(failures)}. After the first request clients connect to the "
        f"advertised addresses: fix the brokers' advertised listeners (advertised.listeners: "
        f"the host and port clients use, not localhost or a container's own name) or make "
        f"those addresses reachable"
    )


async def _reach(
    node: int, host: str, port: int, context: ssl.SSLContext | None, timeout_ms: int
) -> str | None:
    """None when ``host:port`` accepts a connection (and a TLS handshake), else why not."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context is not None else None
            ),
            timeout_ms / 1000,
        )
    except (TimeoutError, OSError) as exc:
        return f"node {node} at {host}:{port} ({describe(exc)})"
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    return None


async def raise_if_refused(
    options: Mapping[str, Any], exc: Exception, *, waiting: bool = False
) -> ConfigurationError | None:
    """After a client's ``start()`` (or first request) failed with ``exc``: raise what the
    broker refused (:func:`refusal`), from ``exc``; raise ``exc`` itself when it is no Kafka
    error and no refusal explains it. Returns None for a Kafka error of an outage (wait,
    retry); while ``waiting``, a retriable refusal is returned instead of raised (the wait
    goes on and raises it at its deadline)."""
    refused = await refusal(options)
    if refused is not None and not (waiting and refused.retriable):
        raise refused from exc
    if refused is None and not isinstance(exc, KafkaError):
        raise exc
    return refused


def _sasl_cause(exc: BaseException) -> str:
    if isinstance(exc, KafkaError | OSError | TimeoutError):
        return describe(exc)  # SaslAuthenticationFailed, UnsupportedSaslMechanism, closed
    # aiokafka's SCRAM client reading an error message where it expects the server's proof
    return f"the SCRAM exchange ended without the server's proof: {describe(exc)}"


def _trusted(context: Any) -> str:
    """The CAs a context was given, by subject (a context without any uses the system's)."""
    names: list[str] = []
    with contextlib.suppress(AttributeError, ssl.SSLError):
        for cert in context.get_ca_certs():
            subject = dict(pair for rdn in cert.get("subject", ()) for pair in rdn)
            names.append(str(subject.get("commonName", subject)))
    return f"a file with the CAs {', '.join(names)}" if names else "unset: the system's CAs"
