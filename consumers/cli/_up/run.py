"""``agentstream up``, step by step: broker, topics, services, demo, live view, and the
ordered shutdown (demo, catch-up, services with SIGTERM, broker) on every exit path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agentstream.consumers.broker import FETCH_MAX_WAIT_MS
from agentstream.schemas.errors import AgentstreamError, ConfigurationError
from agentstream.schemas.settings import KafkaSettings

from .monitor import Monitor, ServiceState, http_get
from .processes import Child, cli_command, pick_port
from .view import UpState, View, make_view

log = logging.getLogger("agentstream.up")
_GROUP_ID = "AGENTSTREAM_GROUP_ID"

if TYPE_CHECKING:
    from agentstream.consumers.broker import EmbeddedBroker

T = TypeVar("T")

SERVICES = ("persistence", "loops", "budget", "metrics", "tracing")
HOST = "127.0.0.1"
BROKER_GONE_GRACE_S = 5.0
"""How long the demo and the services get to stop once the embedded broker has died."""

_FETCH_WAIT = "AGENTSTREAM_FETCH_MAX_WAIT_MS"


def _embedded_fetch_wait(service: str) -> str:
    """``fetch_max_wait_ms`` for ``service`` on the embedded broker: its own default, at most
    :data:`~agentstream.consumers.broker.FETCH_MAX_WAIT_MS` (the client default, 500 ms, halved
    how fast a service drains a backlog there)."""
    from agentstream.consumers.runtime.runner import load_service

    own = load_service(service).settings_class.model_fields["fetch_max_wait_ms"].default
    return str(min(own, FETCH_MAX_WAIT_MS))


@dataclass(frozen=True)
class UpOptions:
    settings: KafkaSettings
    external_kafka: bool
    duration: float | None
    demo: bool
    store: Path
    log_dir: Path
    partitions: int
    seed: int
    agents: int
    rate: float
    obey_control: bool = False
    first_port: int = 9101
    plain: bool = False
    ready_timeout: float = 120.0
    drain_timeout: float = 20.0


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived while waiting for something."""


class Up:
    def __init__(self, options: UpOptions) -> None:
        self.o = options
        self.stop = asyncio.Event()  # first signal, or the duration elapsed
        self.force = asyncio.Event()  # second signal: no more waiting
        self.signals = 0
        self.broker: EmbeddedBroker | None = None
        self.broker_pid: int | None = None
        self.bootstrap = options.settings.bootstrap_servers
        self.monitor = Monitor(services={})
        self.state = UpState(self.bootstrap, options.store, options.log_dir, self.monitor)
        self.view: View | None = None
        self.demo: Child | None = None
        self.demo_metrics_port: int | None = None
        self.children: list[Child] = []
        self.alerts_stop = asyncio.Event()
        self.alerts_task: asyncio.Task[None] | None = None
        self.error: str | None = None
        self.exit_code = 1  # with an error; 2 for one found at start (``run``)

    # --- signals ------------------------------------------------------------------------------

    def _on_signal(self) -> None:
        self.signals += 1
        self.stop.set()
        if self.signals > 1:
            self.force.set()

    async def _until_stopped(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or :class:`Interrupted` when a stop comes first."""
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise Interrupted
        return task.result()

    # --- the run ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.o.log_dir.mkdir(parents=True, exist_ok=True)
        # the alerts reader's chatter would scroll the view away; warnings still show
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        self.view = make_view(self.o.plain)
        ticker = asyncio.create_task(self._tick())
        try:
            await self._start()
            await self._run_until_stopped()
        except Interrupted:
            pass
        except (AgentstreamError, OSError) as exc:
            self.error = str(exc)
            # as every command, a setting, broker or store found wrong at start is 2; a
            # failure of the running pipeline (its broker died) is 1
            started = self.state.phase == "running"
            self.exit_code = 2 if isinstance(exc, AgentstreamError) and not started else 1
        finally:
            self.state.phase = "stopping"
            try:
                await self._shutdown()
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                self.state.phase = "stopped"
                self.view.close(self.state)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)
        self._final_report()
        return self.exit_code if self.error else 0

    async def _tick(self) -> None:
        assert self.view is not None
        last_scrape = 0.0
        while True:
            if self.monitor.services and time.monotonic() - last_scrape >= 1.0:
                last_scrape = time.monotonic()
                await self.monitor.scrape()
            self.view.refresh(self.state)
            await asyncio.sleep(0.5)

    async def _start(self) -> None:
        o = self.o
        if not o.store.resolve().parent.is_dir():
            raise ConfigurationError(
                f"expected --store in an existing directory, got {o.store} "
                f"({o.store.resolve().parent} does not exist)"
            )
        kafka = self.state.step("Kafka broker")
        if o.external_kafka:
            kafka.status, kafka.detail = "running", f"connecting to {self.bootstrap}"
        else:
            from agentstream.consumers.broker import EmbeddedBroker

            self.broker = EmbeddedBroker(log_path=o.log_dir / "broker.log")
            self.bootstrap = self.broker.bootstrap_servers
            self.state.bootstrap = self.bootstrap
            kafka.status, kafka.detail = (
                "running",
                f"starting the embedded broker on {self.bootstrap}",
            )
            self.broker.start()
            self.broker_pid = self.broker.pid
        settings = self.settings
        from agentstream.schemas.admin import TopicSpec, ensure_topics, wait_for_broker

        kafka_log = logging.getLogger("aiokafka")
        kafka_log.setLevel(logging.CRITICAL)  # "connection refused" until the broker listens
        try:
            if self.broker is not None:
                await self._until_stopped(self.broker.wait_ready(timeout=60))
            else:
                await self._until_stopped(wait_for_broker(settings.admin_options(), timeout=60))
        finally:
            kafka_log.setLevel(logging.WARNING)
        kafka.status = "done"
        kafka.detail = self.bootstrap + (f" (pid {self.broker_pid})" if self.broker_pid else "")

        topics = self.state.step("topics")
        topics.status, topics.detail = "running", f"creating {settings.topic_prefix}.* topics"
        outcome = await self._until_stopped(
            ensure_topics(
                settings.admin_options(), settings.routing(), TopicSpec(partitions=o.partitions)
            )
        )
        created = sum(1 for v in outcome.values() if v == "created")
        other = [f"{n} {v}" for n, v in sorted(outcome.items()) if v not in ("created", "exists")]
        each = "; ".join(other) if other else f"{o.partitions} partitions each"
        topics.status = "done"
        topics.detail = f"{len(outcome)} topics ({created} created, {each})"

        taken: set[int] = set()
        env = service_environment(os.environ)
        # Tansu holds every fetch for the whole wait: each service waits at most
        # FETCH_MAX_WAIT_MS, unless the environment says otherwise (loops keeps its 20 ms)
        wait_each = self.broker is not None and _FETCH_WAIT not in env
        if not _otlp_configured():  # likely nothing at the default endpoint: retrying each
            # batch for ~15 s only held tracing's commits back (and the catch-up at stop)
            env.setdefault("AGENTSTREAM_EXPORT_MAX_RETRIES", "0")
        for offset, name in enumerate(SERVICES):
            port = pick_port(o.first_port and o.first_port + offset, taken)  # 0: any free
            taken.add(port)
            args = [
                "consume",
                name,
                "--bootstrap-servers",
                self.bootstrap,
                "--topic-prefix",
                settings.topic_prefix,
                "--http-host",
                HOST,
                "--http-port",
                str(port),
            ]
            if name == "persistence":
                args += ["--store", f"sqlite:///{o.store.resolve()}"]
            child = Child(name, cli_command(*args), o.log_dir / f"{name}.log")
            child.start({**env, _FETCH_WAIT: _embedded_fetch_wait(name)} if wait_each else env)
            self.children.append(child)
            self.monitor.services[name] = ServiceState(name, HOST, port, child)
            step = self.state.step(f"service {name}")
            step.status, step.detail = (
                "running",
                f"joining group {settings.topic_prefix}.{name} (:{port})",
            )
        await self._until_stopped(
            asyncio.gather(*(self._wait_ready(s) for s in self.monitor.services.values()))
        )

        self.alerts_task = asyncio.create_task(
            self.monitor.follow_alerts(
                settings,
                self.alerts_stop,
                o.log_dir / "alerts.jsonl",
                from_start=not o.external_kafka,
            )
        )
        demo = self.state.step("demo agents")
        if not o.demo:
            demo.status, demo.detail = "skipped", "--no-demo"
            return
        # the pods' publisher metrics, on the port after the services' (9106 by default)
        port = self.demo_metrics_port = pick_port(
            o.first_port and o.first_port + len(SERVICES),
            {s.port for s in self.monitor.services.values()},
        )
        self.demo = Child(
            "demo",
            cli_command(
                "demo",
                "--bootstrap-servers",
                self.bootstrap,
                "--topic-prefix",
                settings.topic_prefix,
                "--agents",
                str(o.agents),
                "--rate",
                str(o.rate),
                "--seed",
                str(o.seed),
                "--manifest",
                str(o.log_dir / "demo-manifest.json"),
                "--metrics-port",
                str(port),
                *(["--obey-control"] if o.obey_control else []),
            ),
            o.log_dir / "demo.log",
        )
        self.demo.start(env)
        self.children.append(self.demo)
        demo.status = "done"
        demo.detail = (
            f"{o.agents} agents, ~{o.rate:g} events/s, seed {o.seed} (pid {self.demo.pid}), "
            f"http://{HOST}:{port}/metrics"
        )

    @property
    def settings(self) -> KafkaSettings:
        return self.o.settings.model_copy(update={"bootstrap_servers": self.bootstrap})

    async def _wait_ready(self, service: ServiceState) -> None:
        step = self.state.step(f"service {service.name}")
        deadline = time.monotonic() + self.o.ready_timeout
        while True:
            if not service.child.running():
                step.status = "failed"
                raise ConfigurationError(
                    f"service {service.name} exited with code {service.child.returncode} "
                    f"before it was ready; its log ({service.child.log_path}) ends with:\n"
                    f"{service.child.log_tail()}"
                )
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                status, _ = await http_get(HOST, service.port, "/readyz", timeout=2.0)
                if status == 200:
                    service.ready = True
                    step.status = "done"
                    step.detail = f"ready, {service.metrics_url}"
                    if service.name == "tracing" and not _otlp_configured():
                        step.detail += (
                            " (no OTLP endpoint set: spans that the default endpoint does not "
                            "take are dropped at once and counted)"
                        )
                    return
            if time.monotonic() > deadline:
                step.status = "failed"
                raise ConfigurationError(
                    f"service {service.name} not ready after {self.o.ready_timeout:.0f} s "
                    f"(expected /readyz to answer 200 on port {service.port}); its log "
                    f"({service.child.log_path}) ends with:\n{service.child.log_tail()}"
                )
            await asyncio.sleep(0.2)

    async def _run_until_stopped(self) -> None:
        self.state.phase = "running"
        self.state.started = time.monotonic()
        self._write_summary()  # where everything is while it runs (pids, ports, store)
        if self.o.duration is not None:
            asyncio.get_running_loop().call_later(self.o.duration, self.stop.set)
        demo_reported = False
        while not self.stop.is_set():
            for child in self.children:
                if child is not self.demo and not child.running():
                    self.error = (
                        f"service {child.name} exited with code {child.returncode}; "
                        f"see {child.log_path}"
                    )
                    self.stop.set()
            if self.demo is not None and not self.demo.running() and not demo_reported:
                demo_reported = True
                step = self.state.step("demo agents")
                code = self.demo.returncode
                step.status = "done" if code == 0 else "failed"
                step.detail = f"exited with code {code}; see {self.demo.log_path}"
            broker = self.broker
            if broker is not None and broker.returncode is not None:
                self.error = (
                    f"the embedded broker exited with code {broker.returncode}; "
                    f"see {broker.log_path}"
                )
                self.state.step("Kafka broker").status = "failed"
                self.stop.set()
            task = self.alerts_task
            if task is not None and task.done() and not task.cancelled() and task.exception():
                step = self.state.step("alerts reader")
                if step.status != "failed":
                    step.status, step.detail = "failed", repr(task.exception())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.5)

    # --- stopping -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        # Without its broker nothing can flush or commit: waiting for that would be in vain.
        gone = self.broker is not None and self.broker.returncode is not None
        if self.demo is not None:
            step = self.state.step("demo agents")
            step.status, step.detail = "running", "stopping: finishing sessions, flushing"
            code = await self.demo.stop(
                signal.SIGTERM, BROKER_GONE_GRACE_S if gone else 30.0, self.force
            )
            step.status, step.detail = "done", f"stopped (exit {code})"
        services = [s for s in self.monitor.services.values() if s.child.running()]
        if services and not self.force.is_set() and self.error is None:
            step = self.state.step("catching up")
            step.status, step.detail = "running", "waiting for every service's lag to reach 0"
            caught = await self._catch_up()
            step.status = "done" if caught else "failed"
            if caught:
                step.detail = "all lags 0"
            elif self.force.is_set():
                step.detail = "cut short by a second signal"
            else:
                step.detail = f"not within {self.o.drain_timeout:.0f} s"
        if self.monitor.services:
            await self.monitor.scrape()  # the last figures, for the summary
        self.monitor.final = True
        for s in services:
            step = self.state.step(f"service {s.name}")
            step.status, step.detail = "running", "stopping (SIGTERM: drain, commit, leave)"
        grace = BROKER_GONE_GRACE_S if gone else self.o.drain_timeout + 10
        await asyncio.gather(
            *(
                s.child.stop(signal.SIGTERM, grace, self.force)
                for s in self.monitor.services.values()
            )
        )
        for s in self.monitor.services.values():
            step = self.state.step(f"service {s.name}")
            code = s.child.returncode
            step.status = "done" if code == 0 else "failed"
            step.detail = f"stopped (exit {code})"
        self.alerts_stop.set()
        if self.alerts_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.alerts_task, 10)
        for child in self.children:  # anything left, whatever happened above
            if child.running():
                child.kill_group()
        if self.broker is not None:
            code = self.broker.returncode
            self.state.step("Kafka broker").detail = (
                "stopped" if code is None else f"had exited with code {code}"
            )
            await asyncio.to_thread(self.broker.stop)
        self.state.phase = "stopped"
        self._write_summary()

    async def _catch_up(self) -> bool:
        deadline = time.monotonic() + self.o.drain_timeout
        streak = 0
        while time.monotonic() < deadline and not self.force.is_set():
            await self.monitor.scrape()
            streak = streak + 1 if self.monitor.caught_up() else 0
            if streak >= 2:
                return True
            behind = [
                f"{s.name} {s.lag if s.lag is not None else '?'}"
                for s in self.monitor.services.values()
                if s.child.running() and s.lag != 0
            ]
            self.state.step("catching up").detail = "lag: " + ", ".join(behind or ["0"])
            await asyncio.sleep(0.5)
        return False

    def _write_summary(self) -> None:
        summary = {
            "bootstrap_servers": self.bootstrap,
            "embedded_broker_pid": self.broker_pid,
            "store": str(self.o.store.resolve()),
            "log_dir": str(self.o.log_dir.resolve()),
            "services": {name: s.summary() for name, s in self.monitor.services.items()},
            "demo": None
            if self.demo is None
            else {
                "pid": self.demo.pid,
                "exit_code": self.demo.returncode,
                "metrics_port": self.demo_metrics_port,
            },
            "children": [child.pid for child in self.children],
            "alerts": dict(self.monitor.alert_counts),
            "events_counted": self.monitor.events_total,
            "error": self.error,
            "phase": self.state.phase,
        }
        path = self.o.log_dir / "up-summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(path)

    def _final_report(self) -> None:
        lines = []
        if self.error:
            lines.append(f"agentstream up: {self.error}")
        manifest = self.o.log_dir / "demo-manifest.json"
        if self.demo is not None and manifest.exists():
            data = json.loads(manifest.read_text())
            kinds = [s["kind"] for s in data["sessions"]]
            paused = sum(bool(s.get("paused")) for s in data["sessions"])
            lines.append(
                f"demo: {len(kinds)} sessions, {data['events']} events "
                f"({data['delivered']} acknowledged), "
                f"{sum(k.startswith('loop') for k in kinds)} looping, "
                f"{sum(k.startswith('budget') for k in kinds)} budget-busting"
                + (f", {paused} stopped by a pause directive" if data.get("obey_control") else "")
            )
        if self.error and not self.monitor.services:  # it stopped before anything ran
            lines.append(f"logs: {self.o.log_dir.resolve()}")
            print("\n".join(lines), flush=True)
            return
        counts = self.monitor.alert_counts
        lines.append(
            f"alerts: {counts['loop_block']} loop blocks, "
            f"{counts['loop_warning']} loop warnings, "
            f"{counts['budget_exceeded']} budget exceeded, "
            f"{counts['budget_warning']} budget warnings, "
            f"{counts['pause']} pause directives"
        )
        if self.monitor.services.get("persistence", None) is not None:
            store = self.o.store.resolve()
            lines.append(
                f"events are in {store}: try `agentstream sessions --store sqlite:///{store}`"
            )
        lines.append(f"logs and summary: {self.o.log_dir.resolve()}")
        print("\n".join(lines), flush=True)


def service_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the services: ``environ`` (their ``AGENTSTREAM_*`` settings), without
    a group id. Each service is its own consumer group (``<prefix>.<service>``): one group id
    shared by the five split the partitions between them, each missing the others' share (the
    store got a fraction of the events, no alert came, and up ended with exit 0)."""
    env = {**environ, "PYTHONUNBUFFERED": "1"}
    if env.pop(_GROUP_ID, None) is not None:
        log.warning(
            "%s is ignored: up runs each service in a consumer group of its own "
            "(<prefix>.<service>); one shared group would split the partitions between them",
            _GROUP_ID,
        )
    return env


def _otlp_configured() -> bool:
    names = (
        "AGENTSTREAM_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    return any(os.environ.get(name) for name in names)
