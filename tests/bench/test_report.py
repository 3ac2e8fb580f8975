"""Figures, targets, growth and the table of the benchmark report."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console

from actimesh.bench.report import (
    REQUIRED_KEYS,
    evaluate_targets,
    growth,
    latency_figures,
    ratio,
    table,
)


def run(devices: int, **figures: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(REQUIRED_KEYS, 1.0)
    out.update(
        devices=devices,
        commands_missing=0,
        ingest_dropped=0,
        index_query_p50_us=8.0,
        index_query_p99_us=10.0,
        query_p99_us=20.0,
        rate_hz=1.0,
        triggers_per_s=20.0,
    )
    out.update(figures)
    out["targets"] = evaluate_targets(out)
    return out


def test_percentiles_are_real_samples() -> None:
    samples = [float(v) for v in range(1, 201)]
    figures = latency_figures("x", samples)
    assert figures["x_max_ms"] == 200.0
    assert figures["x_p50_ms"] <= figures["x_p95_ms"] <= figures["x_p99_ms"] <= 200.0
    assert all(v in samples for v in figures.values())
    assert math.isnan(latency_figures("x", [])["x_p99_ms"])


def test_ratio_of_nothing_is_not_a_number() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))


def test_targets_need_the_figure_and_nothing_lost() -> None:
    good = run(
        10_000,
        p99_ratio_vs_broker=1.4,
        ingest_ratio_vs_broker=0.9,
        rss_bytes_per_device=500.0,
        naive_scan_ratio=5000.0,
    )
    assert all(t["met"] for t in good["targets"].values())
    lossy = run(10_000, ingest_ratio_vs_broker=0.9, ingest_dropped=1)
    assert not lossy["targets"]["ingest_ratio_vs_broker"]["met"]
    missing = run(10_000, p99_ratio_vs_broker=1.0, commands_missing=1)
    assert not missing["targets"]["p99_ratio_vs_broker"]["met"]


def test_growth_compares_the_smallest_and_largest_fleet() -> None:
    g = growth([run(100_000, index_query_p99_us=11.0), run(1_000, index_query_p99_us=10.0)])
    assert g["from_devices"] == 1_000
    assert g["to_devices"] == 100_000
    assert g["index_query_p99_growth"] == 1.1
    assert g["target"]["met"]
    assert growth([run(1_000)]) == {}


def test_growth_target_is_the_side_by_side_figure_when_there_is_one() -> None:
    runs = [run(1_000, index_query_p99_us=10.0), run(100_000, index_query_p99_us=14.0)]
    side = {"p50_growth": 1.05, "p99_growth": 1.1, "same_city": {"p99_growth": 1.3}}
    g = growth(runs, side)
    assert g["index_query_p99_growth"] == 1.1
    assert g["index_query_p50_growth"] == 1.05
    assert g["target"] == {"value": 1.1, "max": 1.2, "met": True}
    assert g["index_query_p99_growth_across_runs"] == 1.4  # kept, and labelled as such
    assert g["index_query_p99_growth_same_city"] == 1.3
    assert g["side_by_side"] == side


def test_table_has_a_column_per_fleet_size() -> None:
    console = Console(width=200, record=True)
    console.print(table([run(1_000), run(10_000, ingest_max_msgs_per_s=5.0)]))
    text = console.export_text()
    assert "1,000 devices" in text
    assert "10,000 devices" in text
    assert "search: engine max" in text
