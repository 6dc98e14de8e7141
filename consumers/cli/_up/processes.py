"""Child processes of ``agentstream up``: each in its own process group (a Ctrl-C in the
terminal reaches ``up`` only, which stops them in order), each told by the kernel to stop
when ``up`` dies however it dies (``PR_SET_PDEATHSIG``: SIGTERM, so services still drain)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agentstream.consumers.broker import die_with_parent, free_port


def _child_setup() -> None:  # between fork and exec
    os.setpgrp()
    die_with_parent(signal.SIGTERM)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the services' HTTP servers do: a port in TIME_WAIT from a previous run is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int, taken: set[int], host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else a free port chosen by the kernel."""
    if preferred and preferred not in taken and port_free(preferred, host):
        return preferred
    while True:
        port = free_port(host)
        if port not in taken:
            return port


def cli_command(*args: str) -> list[str]:
    """``python -m agentstream.consumers.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "agentstream.consumers.cli", *args]


class Child:
    """One child process, its output appended to ``log_path``."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_child_setup,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def wait(self, timeout: float, abort: asyncio.Event | None = None) -> bool:
        """True when the process exited within ``timeout`` seconds (False at once when
        ``abort`` is set)."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline or (abort is not None and abort.is_set()):
                return False
            await asyncio.sleep(0.05)
        return True

    def kill_group(self) -> None:
        """SIGKILL the child's whole process group (anything it started too) and reap it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    async def stop(
        self, sig: int, timeout: float, abort: asyncio.Event | None = None
    ) -> int | None:
        """Send ``sig``, wait up to ``timeout`` s (or until ``abort``), then kill the group;
        the exit code."""
        self.signal(sig)
        if not await self.wait(timeout, abort):
            self.kill_group()
        return self.returncode
