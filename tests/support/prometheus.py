"""A real Prometheus server (the Debian package) for tests: the deploy configuration with test
targets and a 1 s scrape and evaluation interval, temporary storage, always stopped.

Readiness and data are waited for by polling the HTTP API against a deadline, never by a
fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from agentstream.consumers.broker import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MISSING = (
    "the Prometheus server is not installed: `make apt` (as root) installs the Debian package "
    "prometheus, which provides /usr/bin/prometheus and /usr/bin/promtool"
)


def _die_with_parent() -> None:  # in the child, between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class PrometheusError(AssertionError):
    pass


class Prometheus:
    """A running server; query it with :meth:`query` (instant) and :meth:`get` (any API)."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], workdir: Path) -> None:
        self.url = url
        self.process = process
        self.workdir = workdir

    def get(self, path: str, **params: str | Sequence[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` (at ``at``, else now); raises on a bad expression."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        try:
            data = self.get("/api/v1/query", **params)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{expr!r}: {exc.read().decode(errors='replace')}") from None
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of ``expr``, or None when it returns nothing."""
        result = self.query(expr, at)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    async def wait_for(self, expr: str, expected: float, *, timeout: float = 30.0) -> None:
        """Poll (without blocking the event loop) until ``expr`` evaluates to ``expected``."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            last = await asyncio.to_thread(self.value, expr)
            if last is not None and math.isclose(last, expected):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{expr!r} was {last}, expected {expected}, after {timeout} s")

    def rules(self) -> list[dict[str, Any]]:
        groups = self.get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]


def write_config(
    workdir: Path, targets: Mapping[str, Sequence[str]], *, interval: str = "1s"
) -> Path:
    """Copy the deploy configuration into ``workdir`` with ``targets`` (job → host:port list)
    in place of the deploy targets and ``interval`` as scrape and evaluation interval."""
    text = (DEPLOY / "prometheus.yml").read_text()
    text, n = re.subn(r"(?m)^(\s*(?:scrape|evaluation)_interval:\s*)\S+", rf"\g<1>{interval}", text)
    if n != 2:
        raise PrometheusError("expected scrape_interval and evaluation_interval in prometheus.yml")
    (workdir / "prometheus.yml").write_text(text)
    shutil.copy(DEPLOY / "alerts.yml", workdir / "alerts.yml")
    (workdir / "targets").mkdir()
    groups = [{"targets": list(hosts), "labels": {"job": job}} for job, hosts in targets.items()]
    (workdir / "targets" / "test.yml").write_text(json.dumps(groups))  # JSON is YAML
    return workdir / "prometheus.yml"


def _start(
    workdir: Path, targets: Mapping[str, Sequence[str]]
) -> tuple[subprocess.Popen[bytes], str, IO[bytes]]:
    if PROMETHEUS is None:
        raise PrometheusError(MISSING)
    config = write_config(workdir, targets)
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    return process, f"http://127.0.0.1:{port}", log


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.asynccontextmanager
async def running_prometheus(
    workdir: Path, targets: Mapping[str, Sequence[str]], *, timeout: float = 30.0
) -> AsyncIterator[Prometheus]:
    """Run Prometheus on a free loopback port with the deploy config and ``targets``."""
    process, url, log = _start(workdir, targets)
    server = Prometheus(url, process, workdir)
    try:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(_ready, server.url):
            if process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {process.returncode}, see {log.name}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {timeout} s")
            await asyncio.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        raise PrometheusError(MISSING)
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY, check=False
    )
