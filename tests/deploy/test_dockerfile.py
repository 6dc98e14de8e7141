"""The Dockerfile, read by a small parser (no Docker engine here): multi-stage, non-root, a
health check that really answers on /healthz, one ``agentstream`` entry point."""

from __future__ import annotations

import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentstream.consumers.cli import build_parser
from agentstream.consumers.runtime import ServiceSettings

from .checks import ROOT, env_names

DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Any]:
    """Stages (name, base, instructions) and the final stage's last HEALTHCHECK, USER, ..."""
    stages: list[dict[str, Any]] = []
    for keyword, rest in instructions(path.read_text()):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"base": words[0], "name": name, "steps": []})
        elif stages:
            stages[-1]["steps"].append((keyword, rest))
    final: dict[str, Any] = {}
    for keyword, rest in stages[-1]["steps"]:
        final[keyword] = rest
    return {"stages": stages, "final": final}


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def test_multi_stage_build_installs_the_wheel_into_a_slim_image() -> None:
    parsed = parse_dockerfile()
    stages = parsed["stages"]
    assert len(stages) >= 2
    names = {stage["name"] for stage in stages}
    builder, runtime = stages[0], stages[-1]
    assert builder["name"] in names and runtime["base"].endswith("-slim"), runtime["base"]
    builder_runs = " ".join(rest for kw, rest in builder["steps"] if kw == "RUN")
    assert "pip wheel" in builder_runs
    runtime_runs = " ".join(rest for kw, rest in runtime["steps"] if kw == "RUN")
    assert f"from={builder['name']}" in runtime_runs and "--no-index" in runtime_runs
    # The extras installed exist in pyproject.toml (the services' dependencies).
    extras = set(re.findall(r"agentstream\[([a-z,]+)\]", runtime_runs)[0].split(","))
    assert extras == {"postgres", "tracing", "services"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras <= set(project["optional-dependencies"])
    assert extras == set(re.findall(r"\[([a-z,]+)\]", builder_runs)[0].split(","))


def test_runs_as_a_non_root_user() -> None:
    user = parse_dockerfile()["final"]["USER"]
    name, _, group = user.partition(":")
    assert name not in ("root", "0") and group not in ("root", "0"), user
    assert name.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"


def test_entrypoint_is_agentstream_and_the_default_command_parses() -> None:
    final = parse_dockerfile()["final"]
    assert exec_form(final["ENTRYPOINT"]) == ["agentstream"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "agentstream" in project["scripts"]
    build_parser().parse_args(exec_form(final["CMD"]))


def test_image_environment_is_read_by_the_services() -> None:
    known = env_names(ServiceSettings)
    for keyword, rest in parse_dockerfile()["stages"][-1]["steps"]:
        if keyword == "ENV":
            for assignment in shlex.split(rest):
                name = assignment.split("=", 1)[0]
                if name.startswith("AGENTSTREAM_"):
                    assert name in known, f"ENV {name} is not a ServiceSettings field"


def test_copied_sources_exist_and_pass_the_dockerignore() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: list[str] = []
    for keyword, rest in parse_dockerfile()["stages"][0]["steps"]:
        if keyword == "COPY" and "--from" not in rest:
            copied.extend(rest.split()[:-1])
    for source in copied:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: missing"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files[:50]:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignored(relative, patterns), f"{relative} is excluded by .dockerignore"
    # What the build reads besides the code: the readme named in pyproject.toml.
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in copied
    assert dockerignored("tests/conftest.py", patterns)
    assert dockerignored(".venv/bin/python", patterns)
    assert dockerignored("consumers/__pycache__/x.pyc", patterns)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = _glob(body.rstrip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def _glob(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**`` any folders, ``*``/``?`` within one name."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_follows_healthz(
    health_server: http.server.HTTPServer, status: int, healthy: bool
) -> None:
    healthcheck = parse_dockerfile()["final"]["HEALTHCHECK"]
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval" in options and "--timeout" in options
    argv = exec_form(command)
    assert argv[0] == "python" and "/healthz" in argv[-1] and "AGENTSTREAM_HTTP_PORT" in argv[-1]
    _Health.status = status
    port = health_server.server_address[1]
    result = subprocess.run(
        [sys.executable, *argv[1:]],
        env={"AGENTSTREAM_HTTP_PORT": str(port)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode == 0) == healthy, result.stderr
