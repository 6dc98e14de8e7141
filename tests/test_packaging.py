"""The distribution: a real wheel and an editable install both expose the three packages and
the `agentstream` command, and a pod's install needs only the producer's dependencies."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agentstream.schemas", "agentstream.producer", "agentstream.consumers")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_the_wheel_holds_the_three_packages_typed_and_the_command(tmp_path: Path) -> None:
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT))
    (wheel,) = tmp_path.glob("agentstream-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "agentstream = agentstream.consumers.cli:main" in archive.read(entry_points).decode()
    tops = {n.split("/")[0] for n in names if not n.startswith("agentstream-")}
    assert tops == {"agentstream"}, "no other top-level import names"
    for package in PACKAGES:
        folder = package.replace(".", "/")
        assert f"{folder}/__init__.py" in names
        assert f"{folder}/py.typed" in names
    assert "agentstream/schemas/jsonschema/envelope.json" in names
    assert "agentstream/consumers/cli/__init__.py" in names
    assert not any(n.startswith("agentstream/__init__") for n in names)


@pytest.mark.slow
def test_an_editable_install_exposes_the_packages_and_the_command(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # The dependencies come from this environment (so the test installs nothing from an index),
    # through a folder that links everything in it except an installed agentstream.
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.startswith(("agentstream", "__editable__")) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    (Path(purelib) / "deps.pth").write_text(f"{deps}\n")
    _pip("--python", str(python), "install", "--no-deps", "--no-build-isolation", "-e", str(ROOT))
    code = (
        "import agentstream.schemas, agentstream.producer, agentstream.consumers.cli as c\n"
        "print(c.__file__)"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == str(ROOT / "consumers" / "cli" / "__init__.py")
    help_text = subprocess.run(
        [venv / "bin" / "agentstream", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "topics" in help_text


def test_a_pod_installs_only_what_the_producer_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
        for d in project["dependencies"]
    }
    # cramjam: the codecs any Kafka client may have compressed a batch with (see pyproject)
    assert names == {"msgspec", "aiokafka", "pydantic-settings", "prometheus-client", "cramjam"}
    assert {"postgres", "local", "dev"} <= set(project["optional-dependencies"])


def test_the_producer_never_imports_the_consumer_side() -> None:
    code = (
        "import sys, agentstream.producer, pkgutil, importlib\n"
        "for m in pkgutil.walk_packages(agentstream.producer.__path__, 'agentstream.producer.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.startswith('agentstream.consumers')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_runtime_is_importable_from_the_consumers_package_lazily() -> None:
    code = (
        "import sys, agentstream.consumers as c\n"
        "assert 'agentstream.consumers.runtime' not in sys.modules\n"
        "from agentstream.consumers import EventConsumer, Record, ServiceSettings, ServiceSpec\n"
        "from agentstream.consumers.runtime import EventConsumer as E\n"
        "assert EventConsumer is E\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_lowest_pins_are_the_lower_bounds() -> None:
    """`make lowest` runs the suite on .ci/lowest.txt: each pin must be the lower bound the
    project declares (a bound that moves without its pin would go untested)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = [*project["dependencies"], *extras["postgres"], *extras["tracing"]]
    declared += extras["services"]
    bounds = {}
    for requirement in declared:
        name, _, rest = requirement.partition(">=")
        bounds[name.strip().lower()] = rest.split(",")[0].strip()
    pins = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()

    def padded(version: str) -> tuple[int, ...]:
        parts = [int(p) for p in version.split(".")]
        return (*parts, *[0] * (3 - len(parts)))

    assert pins.keys() == bounds.keys()
    assert {n: padded(v) for n, v in pins.items()} == {n: padded(v) for n, v in bounds.items()}
