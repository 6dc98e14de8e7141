"""Render ``docs/benchmarks.md`` (tables) and ``docs/img/bench-*.png`` (plots) from the JSON the
benchmarks wrote in ``benchmarks/results/``.

Nothing is invented: a figure whose result file or key is absent is shown as *missing* with the
command that produces it. Every comparison is a ratio of two figures from the same result file,
that is from one run of one benchmark on one broker.

    python benchmarks/report.py [--results DIR] [--out docs/benchmarks.md] [--images docs/img]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MISSING = "missing"
TIMES = "\u00d7"  # the multiplication sign of ratios

Results = dict[str, dict[str, Any]]


def load_results(folder: Path) -> tuple[Results, list[str]]:
    """Every ``<area>.json`` in ``folder`` by area; and the problems met (unreadable files)."""
    found: Results = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"`{path.name}` could not be read ({exc.__class__.__name__}: {exc})")
            continue
        if isinstance(data, dict):
            data.setdefault("_file_time", _file_time(path))
            found[path.stem] = data
        else:
            problems.append(f"`{path.name}` does not hold a JSON object")
    return found, problems


def _file_time(path: Path) -> str:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return when.isoformat(timespec="seconds") + " (file time)"


def dig(data: Any, *keys: str | int) -> Any:
    """``data[k1][k2]...`` or None when any step is absent."""
    for key in keys:
        if isinstance(data, dict) and isinstance(key, str):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    """A figure for a table: thousands separators, a unit, or *missing*."""
    x = number(value)
    if x is None:
        return MISSING
    text = f"{x:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def ratio(numerator: Any, denominator: Any) -> str:
    a, b = number(numerator), number(denominator)
    if a is None or b is None or b == 0:
        return MISSING
    return f"{a / b:.2f}{TIMES}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    numeric = [False] + [True] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


@dataclass
class Report:
    results: Results
    images: Path
    image_link: str
    plots: bool = True
    lines: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    drawn: list[Path] = field(default_factory=list)

    def need(self, area: str) -> dict[str, Any] | None:
        data = self.results.get(area)
        if data is None:
            self.missing.append(area)
            self.lines.append(
                f"*Missing: no `benchmarks/results/{area}.json`; run "
                f"`python benchmarks/bench_{area}.py`.*"
            )
            self.lines.append("")
        return data

    def plot(self, name: str, draw: Callable[[Any], None]) -> None:
        """Draw a PNG with matplotlib (when installed) and link it."""
        if not self.plots:
            self.lines.append(f"*Plot `{name}` not drawn: matplotlib is not installed.*")
            self.lines.append("")
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot

        figure, axes = pyplot.subplots(figsize=(6.4, 3.6), dpi=100)
        try:
            draw(axes)
            axes.grid(True, alpha=0.3)
            figure.tight_layout()
            self.images.mkdir(parents=True, exist_ok=True)
            path = self.images / f"bench-{name}.png"
            figure.savefig(path, metadata={"Software": None})
            self.drawn.append(path)
        finally:
            pyplot.close(figure)
        self.lines.append(f"![{name}]({self.image_link}/bench-{name}.png)")
        self.lines.append("")


# --- sections ---------------------------------------------------------------------------------


def machine_section(report: Report) -> None:
    out = report.lines
    out += ["## Machine and versions", ""]
    measured = [
        (area, data["machine"])
        for area, data in sorted(report.results.items())
        if isinstance(data.get("machine"), dict)
    ]
    if not measured:
        out += ["*Missing: no result records its machine (rerun `make bench`).*", ""]
    else:
        latest = max(measured, key=lambda item: str(item[1].get("date", "")))[1]
        memory = number(latest.get("memory_bytes"))
        out += table(
            ["", "value"],
            [
                ["CPU", str(latest.get("cpu_model", MISSING))],
                ["cores", fmt(latest.get("cores"))],
                ["memory", fmt(memory / 2**30 if memory else None, "GiB", 1)],
                ["platform", str(latest.get("platform", MISSING))],
                ["Python", str(latest.get("python", MISSING))],
                ["aiokafka", str(latest.get("aiokafka", MISSING))],
                ["msgspec", str(latest.get("msgspec", MISSING))],
                ["confluent-kafka (librdkafka)", str(latest.get("confluent_kafka", MISSING))],
                ["broker", str(latest.get("broker", MISSING))],
            ],
        )
        out.append("")
    cpus = {str(machine.get("cpu_model", MISSING)) for _, machine in measured}
    if len(cpus) > 1:
        out += [
            f"**The results come from {len(cpus)} different machines** (the CPU column): the "
            "table above describes the latest. Compare figures within one result file, whose "
            "ratios are measured in one run, not across files.",
            "",
        ]
    out += [
        "Each result file and when it was measured: the load average at the start of the run, "
        "and the speed probe at its start and end (microseconds for a fixed pure-Python workload, "
        "lower is faster: it shows a machine running slow, which the load average does not).",
        "",
    ]
    rows = []
    for area, data in sorted(report.results.items()):
        found = data.get("machine")
        machine: dict[str, Any] = found if isinstance(found, dict) else {}
        when = (
            machine.get("date")
            or data.get("measured_at")
            or data.get("when")
            or data.get("_file_time")
        )
        load = machine.get("load_average_1m")
        row = [
            f"`{area}.json`",
            str(when) if when else "not recorded",
            fmt(load, digits=2) if load is not None else "not recorded",
            _probe(machine.get("speed_probe_us")),
        ]
        if len(cpus) > 1:
            row.append(str(machine.get("cpu_model", "not recorded")))
        rows.append(row)
    headers = ["result", "measured", "load", "speed probe"]
    out += table([*headers, *(["CPU"] if len(cpus) > 1 else [])], rows)
    out.append("")


def _probe(found: Any) -> str:
    if not isinstance(found, dict):
        return "not recorded"
    start, end = number(found.get("start")), number(found.get("end"))
    if start is None or end is None:
        return "not recorded"
    return f"{start:,.0f} → {end:,.0f} µs"


def emit_section(report: Report) -> None:
    out = report.lines
    out += ["## Emit cost in the agent: agentstream against the seeds' in-process cost", ""]
    data = report.need("emit")
    if data is None:
        return
    rows_by: dict[tuple[str, str], dict[str, Any]] = {}
    for row in data.get("rows") or []:
        if isinstance(row, dict):
            rows_by[(str(row.get("kind")), str(row.get("case")))] = row
    cases = [case for kind, case in rows_by if kind == "agentstream"]
    rows = []
    for case in cases:
        ours = rows_by[("agentstream", case)]
        seed = rows_by.get(("baseline", case), {})
        rows.append(
            [
                case,
                fmt(seed.get("median_us"), "µs", 2) if seed else "no seed equivalent",
                fmt(ours.get("median_us"), "µs", 2),
                fmt(ours.get("p99_us"), "µs", 2),
                ratio(ours.get("median_us"), seed.get("median_us")) if seed else "—",
            ]
        )
    out += table(
        ["per event", "seed (in-process only) median", "agentstream median", "agentstream p99",
         "agentstream / seed"],
        rows,
    )  # fmt: skip
    target = data.get("target_median_us")
    out += [
        "",
        "The seed columns run the seeds' behaviour in-process (handlers, history, collector) and "
        "ship nothing; agentstream also stamps, redacts, encodes and enqueues the event for "
        f"Kafka. Target: median ≤ {fmt(target, 'µs', 1)} "
        f"({'met' if data.get('target_met') else 'not met'}).",
        "",
    ]
    adoption = report.results.get("adoption")
    if adoption is not None:
        adoption_table(report, adoption)


def adoption_table(report: Report, data: dict[str, Any]) -> None:
    """The adoption paths (``adoption.json``): a framework's own bus or emitter, in-process,
    against the same call shipping through agentstream; the baseline of a case is its last
    in-process row (for Corail's bus: with a no-op ``*`` handler, the forwarder's position)."""
    baseline: dict[str, dict[str, Any]] = {}
    rows = []
    for row in data.get("rows") or []:
        if not isinstance(row, dict):
            continue
        case, kind = str(row.get("case")), str(row.get("kind"))
        ours = "Forwarder" in kind or "KafkaCollector" in kind
        base = baseline.get(case)
        rows.append(
            [
                f"{case} ({kind})",
                fmt(row.get("median_us"), "µs", 2),
                fmt(row.get("p99_us"), "µs", 2),
                ratio(row.get("median_us"), base.get("median_us")) if ours and base else "—",
            ]
        )
        if not ours:
            baseline[case] = row
    report.lines += table(["adoption path, per event", "median", "p99", "vs in-process"], rows)
    report.lines.append("")


def producer_section(report: Report) -> None:
    out = report.lines
    out += ["## Producer throughput against librdkafka", ""]
    data = report.need("producer")
    if data is None:
        return
    medians = data.get("events_per_second_median") or {}
    base = medians.get("librdkafka (encoded)")
    rows = [[name, fmt(rate, "events/s"), ratio(rate, base)] for name, rate in medians.items()]
    out += table(["client (same events, same broker, one run)", "median", "vs librdkafka"], rows)
    out += [
        "",
        f"{fmt(data.get('events'))} events, {fmt(data.get('partitions'))} partitions, acks=all, "
        f"linger {fmt(data.get('linger_ms'), 'ms')}, median of {fmt(data.get('repeats'))} "
        f"interleaved runs; target ≥ {fmt(data.get('target_ratio'), digits=1)}{TIMES} librdkafka.",
        "",
    ]


def consumer_section(report: Report) -> None:
    out = report.lines
    out += ["## Consumer throughput per service against a raw aiokafka consumer", ""]
    services = report.results.get("services")
    if services is None:
        report.need("services")
    else:
        raw = dig(services, "raw", "events_per_s")
        rows = [
            ["raw aiokafka consumer (getmany, no decoding)", fmt(raw, "events/s"), f"1.00{TIMES}"]
        ]
        for name, figures in (services.get("services") or {}).items():
            rate = dig(figures, "events_per_s")
            rows.append([f"`agentstream consume {name}`", fmt(rate, "events/s"), ratio(rate, raw)])
        out += table(["consumer (one process, same backlog, one run)", "drained", "vs raw"], rows)
        out += [
            "",
            f"Each drains the same backlog of {fmt(services.get('events'))} events "
            f"({fmt(services.get('partitions'))} partitions) as its own process and consumer "
            "group: from ready to every offset committed (services: handled and committed).",
            "",
        ]

        def draw(axes: Any) -> None:
            names = ["raw aiokafka", *(services.get("services") or {})]
            rates = [number(raw) or 0.0] + [
                number(dig(f, "events_per_s")) or 0.0
                for f in (services.get("services") or {}).values()
            ]
            axes.bar(names, rates, color=["#888"] + ["#3a7"] * (len(names) - 1))
            axes.set_ylabel("events/s (one process)")
            axes.set_title("Drain throughput per service vs raw aiokafka")

        report.plot("services", draw)
    consumer = report.results.get("consumer")
    if consumer is not None:
        raw = consumer.get("raw_events_per_s")
        rounds = consumer.get("rounds")
        taken = f"median of {rounds} interleaved rounds" if rounds else "one run"
        out += table(
            [f"runtime alone (in-process, {taken})", "events/s", "vs raw aiokafka"],
            [
                ["raw aiokafka consumer", fmt(raw), f"1.00{TIMES}"],
                ["EventConsumer, wildcard no-op handler", fmt(consumer.get("runtime_events_per_s")),
                 ratio(consumer.get("runtime_events_per_s"), raw)],
                ["EventConsumer, batch sink", fmt(consumer.get("batch_events_per_s")),
                 ratio(consumer.get("batch_events_per_s"), raw)],
            ],
        )  # fmt: skip
        samples = consumer.get("samples")
        if isinstance(samples, dict) and samples.get("raw") and samples.get("runtime"):
            per_round = ", ".join(
                f"{r / w:.2f}" for r, w in zip(samples["runtime"], samples["raw"], strict=False)
            )
            out += ["", f"No-op handler against raw, round by round: {per_round}. Target ≥ 0.5."]
        out.append("")
    metrics = report.results.get("metrics")
    if metrics is not None:
        raw = metrics.get("raw_aiokafka_getmany")
        out += table(
            ["metrics service stages", "events/s", "vs raw aiokafka"],
            [
                [name.replace("_", " "), fmt(metrics.get(name)), ratio(metrics.get(name), raw)]
                for name in (
                    "raw_aiokafka_getmany",
                    "fleet_metrics_only",
                    "decode_validated_and_fleet_metrics",
                    "service_end_to_end",
                )
            ],
        )
        rounds = metrics.get("rounds")
        if isinstance(rounds, dict) and rounds.get("service_end_to_end"):
            runs = ", ".join(fmt(r) for r in rounds["service_end_to_end"])
            raws = ", ".join(fmt(r) for r in rounds.get("raw_aiokafka_getmany") or [])
            out += [
                "",
                f"End to end, the median of interleaved rounds: the service {runs} events/s; "
                f"raw aiokafka {raws or MISSING}.",
            ]
        out.append("")


def _latency_rows(
    by_rate: list[dict[str, Any]], what: str
) -> tuple[list[list[str]], list[float], list[float], list[float]]:
    rows, rates, p50s, p99s = [], [], [], []
    for entry in by_rate:
        rate = number(entry.get("offered_rate_per_s"))
        rows.append(
            [
                what,
                fmt(rate, "events/s"),
                fmt(entry.get("achieved_rate_per_s"), "events/s"),
                fmt(entry.get("p50_ms"), "ms", 1),
                fmt(entry.get("p99_ms"), "ms", 1),
                fmt(entry.get("samples", entry.get("alerts_received"))),
            ]
        )
        if rate is not None and number(entry.get("p99_ms")) is not None:
            rates.append(rate)
            p50s.append(number(entry.get("p50_ms")) or 0.0)
            p99s.append(number(entry.get("p99_ms")) or 0.0)
    return rows, rates, p50s, p99s


def latency_section(report: Report) -> None:
    out = report.lines
    out += ["## End-to-end latency against load", ""]
    series: list[tuple[str, list[float], list[float], list[float]]] = []
    rows: list[list[str]] = []
    persistence = report.results.get("persistence")
    stored = dig(persistence, "stored_latency")
    if isinstance(stored, list) and stored:
        found = _latency_rows(stored, "emit → stored (SQLite)")
        rows += found[0]
        series.append(("emit → stored", *found[1:]))
    else:
        out.append(
            "*Missing: emit → stored latency (`stored_latency` in `persistence.json`); run "
            "`python benchmarks/bench_persistence.py`.*"
        )
        out.append("")
    loops = report.results.get("loops")
    alert = dig(loops, "latency_by_rate")
    if not isinstance(alert, list) and isinstance(dig(loops, "latency"), dict):
        alert = [dig(loops, "latency")]  # one load only (an older result)
    if isinstance(alert, list) and alert:
        found = _latency_rows(alert, "emit → alert (loop block)")
        rows += found[0]
        series.append(("emit → alert", *found[1:]))
    else:
        out.append(
            "*Missing: emit → alert latency (`latency_by_rate` in `loops.json`); run "
            "`python benchmarks/bench_loops.py`.*"
        )
        out.append("")
    if rows:
        out += table(["path", "offered", "achieved", "p50", "p99", "samples"], rows)
        out += [
            "",
            "Latency is measured from the moment an event is handed to the Kafka client (its "
            "timestamp) to the row's `ingested_at` in the store, or to the alert's arrival at a "
            "reader of the alerts topic. Services run as their own processes with their default "
            "settings. A latency that stays flat as the load grows is waiting, not work: the "
            "persistence service collects a batch for up to `batch_max_wait_ms` (200 ms by "
            "default) before one write; lowering it trades store round trips for latency.",
            "",
        ]

        def draw(axes: Any) -> None:
            for (name, rates, p50s, p99s), colour in zip(series, ("#37a", "#a53"), strict=False):
                axes.plot(rates, p50s, "o-", color=colour, label=f"{name} p50")
                axes.plot(rates, p99s, "s--", color=colour, label=f"{name} p99")
            axes.set_xlabel("offered load (events/s)")
            axes.set_ylabel("latency (ms)")
            axes.set_title("Latency against load")
            axes.set_ylim(bottom=0)
            axes.legend(fontsize="small")

        report.plot("latency", draw)


def services_table(report: Report) -> None:
    out = report.lines
    out += ["## Per-service throughput (each service's own benchmark)", ""]
    rows = []
    entries = [
        ("persistence", "SQLite, in-process, end to end", ("sqlite_end_to_end", "events_per_s")),
        ("persistence", "PostgreSQL, in-process", ("postgres_end_to_end", "events_per_s")),
        ("persistence", "SQLite writes alone", ("sqlite_write_path", "one_writer_events_per_s")),
        ("loops", "one service process, backlog", ("throughput", "events_per_s")),
        ("budget", "one service, backlog", ("service", "events_per_s")),
        ("metrics", "service end to end", ("service_end_to_end",)),
        ("tracing", "end to end", ("stages", "end-to-end", "events_per_s")),
    ]  # fmt: skip
    for area, what, keys in entries:
        data = report.results.get(area)
        rows.append([f"{area}: {what}", fmt(dig(data, *keys)) if data else MISSING])
    out += table(["measure", "events/s"], rows)
    out.append("")


def memory_section(report: Report) -> None:
    out = report.lines
    out += ["## Memory per process", ""]
    services = report.results.get("services")
    figures = (services or {}).get("services") or {}
    if not figures:
        out += [
            "*Missing: RSS per service (`services.json`); run "
            "`python benchmarks/bench_services.py`.*",
            "",
        ]
        return
    rows = []
    for name, data in figures.items():
        idle, peak = number(data.get("rss_idle_bytes")), number(data.get("rss_peak_bytes"))
        rows.append(
            [
                f"`agentstream consume {name}`",
                fmt(idle / 2**20 if idle else None, "MiB", 1),
                fmt(peak / 2**20 if peak else None, "MiB", 1),
            ]
        )
    out += table(["process", "RSS ready, idle", "RSS peak while draining"], rows)
    out += ["", "Resident set size from `/proc/<pid>/status`, sampled every 100 ms.", ""]

    def draw(axes: Any) -> None:
        names = list(figures)
        idle = [(number(figures[n].get("rss_idle_bytes")) or 0) / 2**20 for n in names]
        peak = [(number(figures[n].get("rss_peak_bytes")) or 0) / 2**20 for n in names]
        xs = range(len(names))
        axes.bar([x - 0.2 for x in xs], idle, width=0.4, label="ready, idle", color="#aaa")
        axes.bar([x + 0.2 for x in xs], peak, width=0.4, label="peak under load", color="#37a")
        axes.set_xticks(list(xs), names)
        axes.set_ylabel("RSS (MiB)")
        axes.set_title("Memory per service process")
        axes.legend(fontsize="small")

    report.plot("memory", draw)


def scaling_section(report: Report) -> None:
    out = report.lines
    out += ["## Scaling: partitions and service instances", ""]
    data = report.need("scaling")
    if data is None:
        return
    subject = data.get("subject", "?")
    rows = []
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in data.get("runs") or []:
        kind = "partitions" if entry.get("vary") == "partitions" else "instances"
        rows.append(
            [
                f"{fmt(entry.get('instances'))} instance(s), {fmt(entry.get('partitions'))} "
                f"partitions",
                fmt(entry.get("events_per_s"), "events/s"),
                fmt(entry.get("seconds"), "s", 2),
            ]
        )
        x = number(entry.get(kind))
        y = number(entry.get("events_per_s"))
        if x is not None and y is not None:
            xs, ys = series.setdefault(kind, ([], []))
            xs.append(x)
            ys.append(y)
    out += table([f"`agentstream consume {subject}`", "throughput", "drain time"], rows)
    out += [
        "",
        f"{fmt(data.get('events'))} events per run. {data.get('note', '')}".rstrip(),
        "",
    ]

    def draw(axes: Any) -> None:
        for (kind, (xs, ys)), style in zip(sorted(series.items()), ("o-", "s--"), strict=False):
            axes.plot(xs, ys, style, label=f"by {kind}")
        axes.set_xlabel("partitions (1 instance) / instances")
        axes.set_ylabel("events/s")
        axes.set_title(f"Scaling of the {subject} service")
        axes.set_ylim(bottom=0)
        axes.legend(fontsize="small")

    if series:
        report.plot("scaling", draw)


def render(results: Results, images: Path, image_link: str, problems: Sequence[str] = ()) -> Report:
    try:
        import matplotlib  # noqa: F401

        plots = True
    except ImportError:
        plots = False
    report = Report(results, images, image_link, plots)
    report.lines += [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`benchmarks/report.py` from `benchmarks/results/*.json`); "
        "do not edit by hand. All figures are from one shared machine with the embedded broker "
        "(Tansu) on loopback; each ratio compares two figures measured in the same run. "
        "Consumers, raw ones included, wait 50 ms per fetch (`fetch_max_wait_ms`, as "
        "`agentstream up` sets it: Tansu holds every fetch for the whole wait), and services run "
        "in-process with the garbage-collector policy of `agentstream consume`.",
        "",
    ]
    for problem in problems:
        report.lines += [f"*Problem: {problem}.*", ""]
    for section in (
        machine_section,
        emit_section,
        producer_section,
        consumer_section,
        latency_section,
        services_table,
        memory_section,
        scaling_section,
    ):
        section(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "img")
    options = parser.parse_args(argv)
    results, problems = load_results(options.results)
    link = os.path.relpath(options.images, options.out.parent)
    report = render(results, options.images, link, problems)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(report.lines).rstrip() + "\n")
    print(f"wrote {options.out} ({len(report.drawn)} plots)")
    if report.missing:
        print("missing results: " + ", ".join(sorted(set(report.missing))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
