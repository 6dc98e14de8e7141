"""``benchmarks/report.py`` on sample results: the report renders with tables and plots, every
ratio comes from the figures given, and absent results are reported as missing, not invented."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPORT = Path(__file__).resolve().parents[2] / "benchmarks" / "report.py"

MACHINE = {
    "cores": 2,
    "memory_bytes": 8 * 2**30,
    "cpu_model": "Test CPU 9000",
    "platform": "Linux-test",
    "python": "3.11.7",
    "aiokafka": "0.14.0",
    "msgspec": "0.22.0",
    "confluent_kafka": "2.16.1",
    "broker": "embedded tansu 0.6.0",
    "load_average_1m": 1.5,
    "speed_probe_us": {"start": 512.3, "end": 1034.9},
    "date": "2026-11-22T03:00:00+00:00",
}

SAMPLES = {
    "emit": {
        "target_median_us": 5.0,
        "target_met": False,
        "rows": [
            {"case": "bus: await emit", "kind": "baseline", "median_us": 2.0, "p99_us": 3.0},
            {"case": "bus: await emit", "kind": "agentstream", "median_us": 5.0, "p99_us": 9.0},
        ],
    },
    "producer": {
        "events": 1000,
        "partitions": 6,
        "linger_ms": 5,
        "repeats": 3,
        "target_ratio": 0.8,
        "events_per_second_median": {"agentstream": 40_000, "librdkafka (encoded)": 160_000},
    },
    "loops": {
        "latency_by_rate": [
            {"offered_rate_per_s": 1000, "achieved_rate_per_s": 999, "p50_ms": 8.0,
             "p99_ms": 20.0, "alerts_received": 100},
            {"offered_rate_per_s": 5000, "achieved_rate_per_s": 4990, "p50_ms": 17.0,
             "p99_ms": 33.0, "alerts_received": 500},
        ],
        "throughput": {"events_per_s": 18_000},
    },
    "services": {
        "events": 10_000,
        "partitions": 4,
        "raw": {"events_per_s": 100_000},
        "services": {
            "metrics": {"events_per_s": 50_000, "rss_idle_bytes": 60 * 2**20,
                        "rss_peak_bytes": 80 * 2**20},
        },
    },
}  # fmt: skip


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def write_samples(folder: Path, samples: dict[str, object]) -> None:
    folder.mkdir()
    for area, data in samples.items():
        (folder / f"{area}.json").write_text(json.dumps(data))


def test_report_renders_tables_plots_and_ratios_from_the_samples(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = load_report()
    results = tmp_path / "results"
    write_samples(results, {k: {**v, "machine": MACHINE} for k, v in SAMPLES.items()})
    out = tmp_path / "docs" / "benchmarks.md"
    images = tmp_path / "docs" / "img"
    assert report.main(["--results", str(results), "--out", str(out), "--images", str(images)]) == 0
    text = out.read_text()
    assert "Test CPU 9000" in text and "embedded tansu 0.6.0" in text and "8.0 GiB" in text
    assert "| `emit.json` | 2026-11-22T03:00:00+00:00 | 1.50 | 512 → 1,035 µs |" in text
    assert "| bus: await emit | 2.00 µs | 5.00 µs | 9.00 µs | 2.50\u00d7 |" in text
    assert "| agentstream | 40,000 events/s | 0.25\u00d7 |" in text
    assert "| `agentstream consume metrics` | 50,000 events/s | 0.50\u00d7 |" in text
    assert (
        "| emit → alert (loop block) | 5,000 events/s | 4,990 events/s | 17.0 ms | 33.0 ms |"
        in (text)
    )
    assert "| `agentstream consume metrics` | 60.0 MiB | 80.0 MiB |" in text
    for name in ("services", "latency", "memory"):
        png = images / f"bench-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}](img/bench-{name}.png)" in text


def test_missing_results_are_reported_missing_not_invented(tmp_path: Path) -> None:
    report = load_report()
    results = tmp_path / "results"
    write_samples(results, {"producer": SAMPLES["producer"]})
    (results / "broken.json").write_text("{not json")
    out = tmp_path / "benchmarks.md"
    assert (
        report.main(["--results", str(results), "--out", str(out), "--images", str(tmp_path)]) == 0
    )
    text = out.read_text()
    for area in ("emit", "scaling"):
        assert f"*Missing: no `benchmarks/results/{area}.json`" in text
    assert "*Missing: emit → stored latency" in text
    assert "*Missing: RSS per service" in text
    assert "*Missing: no result records its machine" in text
    assert "`broken.json` could not be read" in text
    assert "| agentstream | 40,000 events/s | 0.25\u00d7 |" in text
    assert "µs" not in text  # no emit figures without emit results
    assert not list(tmp_path.glob("*.png"))  # nothing to plot from the producer alone


def test_results_from_different_machines_are_labelled(tmp_path: Path) -> None:
    report = load_report()
    results = tmp_path / "results"
    other = {**MACHINE, "cpu_model": "Other CPU 1", "date": "2026-12-01T00:00:00+00:00"}
    del other["speed_probe_us"]  # results written before the probe existed
    write_samples(
        results,
        {
            "emit": {**SAMPLES["emit"], "machine": other},
            "producer": {**SAMPLES["producer"], "machine": MACHINE},
        },
    )
    out = tmp_path / "benchmarks.md"
    assert (
        report.main(["--results", str(results), "--out", str(out), "--images", str(tmp_path)]) == 0
    )
    text = out.read_text()
    assert "**The results come from 2 different machines**" in text
    assert "| `emit.json` | 2026-12-01T00:00:00+00:00 | 1.50 | not recorded | Other CPU 1 |" in text
    assert (
        "| `producer.json` | 2026-11-22T03:00:00+00:00 | 1.50 | 512 → 1,035 µs | Test CPU 9000 |"
        in text
    )
    one = tmp_path / "one.md"
    write_samples(tmp_path / "same", {"producer": {**SAMPLES["producer"], "machine": MACHINE}})
    report.main(["--results", str(tmp_path / "same"), "--out", str(one), "--images", str(tmp_path)])
    assert "different machines" not in one.read_text()


def test_metrics_rounds_are_listed_with_their_medians(tmp_path: Path) -> None:
    report = load_report()
    results = tmp_path / "results"
    metrics = {
        "raw_aiokafka_getmany": 200_000,
        "service_end_to_end": 80_000,
        "rounds": {
            "raw_aiokafka_getmany": [190_000, 200_000, 210_000],
            "service_end_to_end": [70_000, 80_000, 90_000],
        },
    }
    write_samples(results, {"metrics": metrics})
    out = tmp_path / "benchmarks.md"
    assert (
        report.main(["--results", str(results), "--out", str(out), "--images", str(tmp_path)]) == 0
    )
    text = out.read_text()
    assert "| service end to end | 80,000 | 0.40\u00d7 |" in text
    assert (
        "End to end, the median of interleaved rounds: the service 70,000, 80,000, 90,000 "
        "events/s; raw aiokafka 190,000, 200,000, 210,000." in text
    )
