"""The terminal side of ``agentstream up``: a rich live view on a TTY, plain lines otherwise
(or when rich is not installed)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .monitor import Monitor


@dataclass
class Step:
    label: str
    status: str = "waiting"  # waiting, running, done, failed, skipped
    detail: str = ""


@dataclass
class UpState:
    bootstrap: str
    store: Path
    log_dir: Path
    monitor: Monitor
    steps: list[Step] = field(default_factory=list)
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)

    def step(self, label: str) -> Step:
        for step in self.steps:
            if step.label == label:
                return step
        step = Step(label)
        self.steps.append(step)
        return step


class View(Protocol):
    def refresh(self, state: UpState) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self, state: UpState) -> None: ...


_ICONS = {"waiting": "·", "running": "…", "done": "✓", "failed": "✗", "skipped": "-"}


class PlainView:
    """Progress and status as plain lines: step changes at once, a status line every
    ``every`` seconds, each alert once."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._shown_steps: dict[str, str] = {}
        self._alerts_shown = 0
        self._last_status = 0.0

    def note(self, text: str) -> None:
        print(text, flush=True)

    def refresh(self, state: UpState) -> None:
        for step in state.steps:
            shown = f"{step.status} {step.detail}"
            if self._shown_steps.get(step.label) != shown:
                self._shown_steps[step.label] = shown
                print(f"[{step.status:>7}] {step.label} {step.detail}".rstrip(), flush=True)
        total = sum(state.monitor.alert_counts.values())
        new = total - self._alerts_shown
        for line in reversed(list(state.monitor.alerts)[: min(new, len(state.monitor.alerts))]):
            print(f"ALERT {line.text}", flush=True)
        self._alerts_shown = total
        now = time.monotonic()
        if state.phase == "running" and now - self._last_status >= self.every:
            self._last_status = now
            print(status_line(state), flush=True)

    def close(self, state: UpState) -> None:
        self.refresh(state)


def status_line(state: UpState) -> str:
    m = state.monitor
    lags = " ".join(f"{name}={_lag(s.lag)}" for name, s in m.services.items())
    counts = m.alert_counts
    return (
        f"t={time.monotonic() - state.started:4.0f}s  events/s={m.events_per_s:6.1f}  "
        f"events={m.events_total:,.0f}  lag: {lags}  alerts: "
        f"{counts['loop_block']} loop blocks, {counts['loop_warning']} loop warnings, "
        f"{counts['budget_exceeded']} budget exceeded, {counts['budget_warning']} budget warnings, "
        f"{counts['pause']} pauses sent"
    )


def _lag(lag: int | None) -> str:
    return "?" if lag is None else str(lag)


class RichView:
    """One ``rich.live.Live`` panel, redrawn on every refresh."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.start()

    def note(self, text: str) -> None:
        self.live.console.print(text)

    def refresh(self, state: UpState) -> None:
        self.live.update(self.render(state), refresh=True)

    def close(self, state: UpState) -> None:
        self.refresh(state)
        self.live.stop()

    def render(self, state: UpState) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        m = state.monitor
        steps = Table.grid(padding=(0, 1))
        for step in state.steps:
            style = {"done": "green", "failed": "bold red", "running": "yellow"}.get(
                step.status, "dim"
            )
            steps.add_row(
                Text(_ICONS[step.status], style=style), step.label, Text(step.detail, "dim")
            )

        services = Table(expand=True, box=None, header_style="bold")
        for column in ("service", "state", "lag", "consumed", "/metrics"):
            services.add_column(
                column, justify="right" if column in ("lag", "consumed") else "left"
            )
        for name, s in m.services.items():
            if not s.child.running() and s.child.process is not None:
                code = s.child.returncode
                status = Text(f"exited {code}", "dim" if code == 0 else "bold red")
            elif s.ready:
                status = Text("ready", "green")
            else:
                status = Text("joining", "yellow")
            services.add_row(name, status, _lag(s.lag), f"{s.consumed:,.0f}", s.metrics_url)

        counts = m.alert_counts
        header = Text.assemble(
            (f"{m.events_per_s:7.1f}", "bold cyan"),
            " events/s   ",
            (f"{m.events_total:,.0f}", "bold"),
            " events counted   ",
            (str(counts["loop_block"]), "bold red"),
            " loop blocks   ",
            (str(counts["loop_warning"]), "yellow"),
            " loop warnings   ",
            (str(counts["budget_exceeded"]), "bold red"),
            " budget exceeded   ",
            (str(counts["budget_warning"]), "yellow"),
            " budget warnings   ",
            (str(counts["pause"]), "cyan"),
            " pauses sent",
        )
        alerts = Table.grid()
        # as many alerts as fit under the rest of the view
        rows = max(3, self.console.height - len(state.steps) - len(m.services) - 14)
        for line in list(m.alerts)[:rows]:
            style = {"loop_block": "red", "budget_exceeded": "red", "pause": "cyan"}.get(
                line.kind, "yellow"
            )
            stamp = time.strftime("%H:%M:%S", time.localtime(line.at))
            alerts.add_row(
                Text(f"{stamp} {line.text}", style=style, no_wrap=True, overflow="ellipsis")
            )
        if not m.alerts:
            alerts.add_row(Text("no alert yet", "dim"))
        where = Text.assemble(
            ("Kafka ", "bold"),
            state.bootstrap,
            ("   store ", "bold"),
            str(state.store),
            ("   logs ", "bold"),
            str(state.log_dir),
        )
        title = f"agentstream up — {state.phase}  ({time.monotonic() - state.started:.0f} s)"
        parts: list[Any] = [steps, Text(""), header, services, where]
        return Group(
            Panel(Group(*parts), title=title, title_align="left"),
            Panel(alerts, title="alerts and pause directives (newest first)", title_align="left"),
            Text(
                "Ctrl-C stops everything (demo, services, broker)"
                if state.phase in ("starting", "running")
                else "",
                "dim",
            ),
        )


def make_view(plain: bool) -> View:
    if not plain and sys.stdout.isatty():
        try:
            return RichView()
        except ImportError:
            pass
    return PlainView()
