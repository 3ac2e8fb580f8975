"""The benchmark's outputs: figures from raw measurements, targets, JSON, table and plot.

Percentiles are nearest-rank (a reported p99 is a real sample), as in ``actimesh drill``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from actimesh.bench.settings import BenchSettings
from actimesh.stats import percentile

__all__ = [
    "REQUIRED_KEYS",
    "bench_report",
    "evaluate_targets",
    "growth",
    "latency_figures",
    "machine",
    "plot",
    "ratio",
    "table",
    "write_json",
]

#: Keys every run's JSON has (issue #6); the smoke test checks them.
REQUIRED_KEYS = (
    "devices",
    "trigger_to_command_p50_ms",
    "trigger_to_command_p99_ms",
    "broker_two_hop_p99_ms",
    "p99_ratio_vs_broker",
    "ingest_msgs_per_s",
    "broker_delivery_msgs_per_s",
    "ingest_ratio_vs_broker",
    "rss_bytes_per_device",
    "naive_scan_ratio",
)

#: Issue #6's targets on the 2-core machine.
P99_RATIO_MAX = 1.5
INGEST_RATIO_MIN = 0.8
QUERY_GROWTH_MAX = 1.2
RSS_PER_DEVICE_MAX = 1024.0
NAIVE_RATIO_MIN = 1000.0


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when the denominator is not a positive number."""
    return num / den if den > 0 else float("nan")


def latency_figures(prefix: str, samples_ms: Sequence[float]) -> dict[str, float]:
    values = list(samples_ms)
    return {
        f"{prefix}_p50_ms": percentile(values, 50),
        f"{prefix}_p95_ms": percentile(values, 95),
        f"{prefix}_p99_ms": percentile(values, 99),
        f"{prefix}_max_ms": max(values) if values else float("nan"),
    }


def bench_report(
    s: BenchSettings,
    figures: dict[str, Any],
    started: float,
    *,
    publisher: str,
    head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A run's report: ``head`` (what only this kind of run has), the load offered, the
    ``figures`` measured, when it started, the settings, and the targets evaluated."""
    out = {
        **(head or {}),
        "devices": s.devices,
        "rate_hz": s.rate_hz,
        "telemetry_offered_msgs_per_s": s.telemetry_rate,
        "triggers_per_s": s.triggers_per_s,
        "duration_s": s.duration_s,
        "publisher": publisher,
        "acks": s.acks,
        "clock": "time.perf_counter() in the probe process (sender and cameras)",
        **figures,
        "started": started,
        "settings": asdict(s),
    }
    out["targets"] = evaluate_targets(out)
    return out


def evaluate_targets(run: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of one run: the figure, the bound, and whether it was met."""
    targets: dict[str, dict[str, Any]] = {
        "p99_ratio_vs_broker": {
            "value": run["p99_ratio_vs_broker"],
            "max": P99_RATIO_MAX,
            "met": run["p99_ratio_vs_broker"] <= P99_RATIO_MAX and run["commands_missing"] == 0,
        },
        "ingest_ratio_vs_broker": {
            "value": run["ingest_ratio_vs_broker"],
            "min": INGEST_RATIO_MIN,
            "met": run["ingest_ratio_vs_broker"] >= INGEST_RATIO_MIN and run["ingest_dropped"] == 0,
        },
        "rss_bytes_per_device": {
            "value": run["rss_bytes_per_device"],
            "max": RSS_PER_DEVICE_MAX,
            "met": run["rss_bytes_per_device"] <= RSS_PER_DEVICE_MAX,
        },
    }
    # A cluster run has no naive scan: a property of the index, not of the broker.
    if "naive_scan_ratio" in run:
        targets["naive_scan_ratio"] = {
            "value": run["naive_scan_ratio"],
            "min": NAIVE_RATIO_MIN,
            "met": run["naive_scan_ratio"] >= NAIVE_RATIO_MIN,
        }
    return targets


def growth(
    runs: Sequence[Mapping[str, Any]], side: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """How query latency grows from the smallest fleet to the largest of a sweep.

    ``side`` is :func:`actimesh.bench.scaling.side_by_side` over the sweep's sizes: the
    target's figure when present (its ``same_density`` layout), because the runs' own
    query timings are minutes apart and their p99 moves more between runs of one size
    than between sizes.
    """
    if len(runs) < 2:
        return {}
    small, large = min(runs, key=lambda r: r["devices"]), max(runs, key=lambda r: r["devices"])
    across = ratio(large["index_query_p99_us"], small["index_query_p99_us"])
    value = across if side is None else float(side["p99_growth"])
    out: dict[str, Any] = {
        "from_devices": small["devices"],
        "to_devices": large["devices"],
        "index_query_p99_growth": value,
        "index_query_p99_growth_across_runs": across,
        "engine_query_p99_growth": ratio(large["query_p99_us"], small["query_p99_us"]),
        "trigger_to_command_p99_growth": ratio(
            large["trigger_to_command_p99_ms"], small["trigger_to_command_p99_ms"]
        ),
        "target": {"value": value, "max": QUERY_GROWTH_MAX, "met": value <= QUERY_GROWTH_MAX},
    }
    if side is not None:
        out["index_query_p50_growth"] = float(side["p50_growth"])
        city = side.get("same_city")
        if city is not None:  # the runs' 20 km city, where density grows with the fleet
            out["index_query_p99_growth_same_city"] = float(city["p99_growth"])
        out["side_by_side"] = dict(side)
    else:
        out["index_query_p50_growth"] = ratio(
            large["index_query_p50_us"], small["index_query_p50_us"]
        )
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    mosquitto = "unknown"
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run(  # noqa: S603 (fixed argv)
            [binary, "-h"], capture_output=True, text=True, timeout=5, check=False
        )
        mosquitto = (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "broker": mosquitto,
        # Anything else running shares the two cores: say so next to the figures.
        "load_average_1_5_15": list(os.getloadavg()),
    }


def write_json(report: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _mark(ok: bool | None) -> str:
    if ok is None:
        return ""
    return " [green]✓[/green]" if ok else " [red]✗[/red]"


def table(runs: Sequence[Mapping[str, Any]]) -> Table:
    """One column per fleet size; ✓/✗ beside each figure that has a target."""
    t = Table(title="actimesh bench", show_lines=False)
    t.add_column("figure")
    for run in runs:
        t.add_column(f"{run['devices']:,} devices", justify="right")
    rows: list[tuple[str, str, int, str | None]] = [
        ("telemetry offered (msg/s)", "telemetry_offered_msgs_per_s", 0, None),
        ("trigger→command p50 (ms)", "trigger_to_command_p50_ms", 3, None),
        ("trigger→command p95 (ms)", "trigger_to_command_p95_ms", 3, None),
        ("trigger→command p99 (ms)", "trigger_to_command_p99_ms", 3, None),
        ("trigger→command max (ms)", "trigger_to_command_max_ms", 3, None),
        ("broker two-hop p50 (ms)", "broker_two_hop_p50_ms", 3, None),
        ("broker two-hop p99 (ms)", "broker_two_hop_p99_ms", 3, None),
        ("p99 ratio vs broker (≤ 1.5)", "p99_ratio_vs_broker", 2, "p99_ratio_vs_broker"),
        ("commands missing", "commands_missing", 0, None),
        ("engine ingest (msg/s)", "ingest_msgs_per_s", 0, None),
        ("broker → plain subscriber (msg/s)", "broker_delivery_msgs_per_s", 0, None),
        ("ingest ratio vs broker (≥ 0.8)", "ingest_ratio_vs_broker", 2, "ingest_ratio_vs_broker"),
        ("ingest dropped", "ingest_dropped", 0, None),
        ("steady telemetry dropped", "telemetry_dropped", 0, None),
        ("engine CPU, steady (% of a core)", "engine_cpu_percent", 1, None),
        ("broker CPU, steady (% of a core)", "broker_cpu_percent", 1, None),
        ("engine RSS (MB)", "engine_rss_mb", 1, None),
        ("RSS per device (bytes, ≤ 1024)", "rss_bytes_per_device", 0, "rss_bytes_per_device"),
        ("index query p99 (µs)", "index_query_p99_us", 1, None),
        ("engine query p99 (µs)", "query_p99_us", 1, None),
        ("naive geopy scan (ms)", "naive_scan_median_ms", 1, None),
        ("naive scan ratio (≥ 1000)", "naive_scan_ratio", 0, "naive_scan_ratio"),
    ]
    for label, key, digits, target in rows:
        cells = []
        for run in runs:
            value = run.get(key, float("nan"))
            met = run["targets"].get(target, {}).get("met") if target else None
            cells.append(_fmt(value, digits) + _mark(met))
        t.add_row(label, *cells)
    for key in ("ingest_max_msgs_per_s", "broker_max_msgs_per_s"):
        if any(key in run for run in runs):
            label = "search: " + ("engine" if key.startswith("ingest") else "broker")
            t.add_row(label + " max (msg/s)", *(_fmt(r.get(key, float("nan")), 0) for r in runs))
    return t


def _load(run: Mapping[str, Any]) -> str:
    if run.get("settings", {}).get("telemetry") == "motion":
        return "motion-scaled"
    return f"{run['rate_hz']:g} Hz"


def plot(runs: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Latency distributions side by side, one panel per fleet size. False without
    matplotlib (``pip install actimesh[bench]``)."""
    try:
        import matplotlib as mpl  # noqa: PLC0415 - optional, heavy

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.6), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        samples = run["samples"]
        data = [samples["broker_two_hop_ms"], samples["trigger_to_command_ms"]]
        labels = ["broker two-hop\n(echo client)", "actimesh\ntrigger → command"]
        parts = ax.violinplot(data, showextrema=False, quantiles=[[0.5, 0.99]] * 2)
        for body, colour in zip(parts["bodies"], ("#7f7f7f", "#1f77b4"), strict=True):
            body.set_facecolor(colour)
            body.set_alpha(0.55)
        for i, key in enumerate(("broker_two_hop", "trigger_to_command"), start=1):
            p99 = run[f"{key}_p99_ms"]
            ax.annotate(
                f"p99 {p99:.2f}",
                (i, p99),
                xytext=(8, 0),
                textcoords="offset points",
                fontsize=8,
                va="center",
            )
        ax.set_xticks([1, 2], labels)
        ax.set_yscale("log")
        ax.set_ylabel("latency at the receiving camera (ms)")
        ax.set_title(
            f"{run['devices']:,} devices, {_load(run)}, "
            f"{run['triggers_per_s']:g} triggers/s\n"
            f"p99 ratio {run['p99_ratio_vs_broker']:.2f}",
            fontsize=10,
        )
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
