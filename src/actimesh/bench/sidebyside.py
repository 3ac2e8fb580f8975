"""``actimesh bench --side-by-side``: the same fleet at 1 Hz, then motion-scaled, in one run.

Issue 17 asks what motion-scaled telemetry buys the engine at 100,000 devices. The
answer is only worth something against the same fleet at 1 Hz measured on the same
machine in the same minutes, because this machine is shared and its broker's own
delivery rate moves by a factor of two from one day to the next. So one invocation
runs two complete benchmark runs (:func:`~actimesh.bench.run.run_bench`), one after the
other, each with its own fresh broker, engine and workers and its own same-run
baselines (the echo client's broker two-hop, the plain subscriber's delivery rate):

1. the fleet of ``(devices, seed)`` sending a message per device every GPS epoch;
2. the very same fleet, scenes and triggers, each device reporting by the motion-scaled
   rule (:mod:`.motion`).

One after the other rather than interleaved: two engines or two streams at once would
share the two cores and measure each other. Each half starts from an empty broker and
engine, so neither inherits the other's queues. The report puts each figure beside its
counterpart and the ratio of the two; the issue's target (with motion-scaled telemetry,
trigger-to-command p99 at most 1.5 times the broker's two-hop p99, no command missing)
is judged on the motion-scaled half.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from actimesh.bench.report import P99_RATIO_MAX, machine, plot, ratio, write_json
from actimesh.bench.run import make_progress, run_bench
from actimesh.bench.settings import BenchSettings
from actimesh.bench.trace import describe
from actimesh.errors import ConfigError

__all__ = ["FIGURES", "MODES", "bench_side_by_side", "side_by_side", "side_by_side_table"]

#: The two halves, in the order they run.
MODES = ("1hz", "motion")

#: The figures put side by side: ``(label, key in a run's report, digits)``.
FIGURES: tuple[tuple[str, str, int], ...] = (
    ("telemetry offered (msg/s)", "telemetry_sent_msgs_per_s", 0),
    ("telemetry per device (msg/s)", "telemetry_per_device_s", 3),
    ("telemetry into the engine (msg/s)", "telemetry_ingested_msgs_per_s", 0),
    ("telemetry dropped", "telemetry_dropped", 0),
    ("telemetry skipped by the load generator", "telemetry_skipped_by_loadgen", 0),
    ("broker → plain subscriber (msg/s)", "broker_delivery_msgs_per_s", 0),
    ("offered / broker delivery", "load_vs_broker", 2),
    ("engine CPU, steady (% of a core)", "engine_cpu_percent", 1),
    ("broker CPU, steady (% of a core)", "broker_cpu_percent", 1),
    ("load generator CPU (% of a core)", "loadgen_cpu_percent", 1),
    ("load generator nice, steady (bench/priority.py)", "loadgen_nice", 0),
    ("trigger→command p50 (ms)", "trigger_to_command_p50_ms", 2),
    ("trigger→command p99 (ms)", "trigger_to_command_p99_ms", 2),
    ("broker two-hop p50 (ms)", "broker_two_hop_p50_ms", 2),
    ("broker two-hop p99 (ms)", "broker_two_hop_p99_ms", 2),
    ("p99 ratio vs broker (≤ 1.5)", "p99_ratio_vs_broker", 2),
    ("commands expected", "commands_expected", 0),
    ("commands missing", "commands_missing", 0),
    ("engine RSS (MB)", "engine_rss_mb", 1),
)


def _derived(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run's report with the figures only a comparison needs."""
    out = dict(run)
    out["telemetry_per_device_s"] = run["telemetry_sent_msgs_per_s"] / run["devices"]
    out["load_vs_broker"] = ratio(
        run["telemetry_sent_msgs_per_s"], run["broker_delivery_msgs_per_s"]
    )
    return out


def side_by_side(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Each figure of the two halves (``1hz``, ``motion``) and motion over 1 Hz; the
    issue's target judged on the motion-scaled half."""
    fixed, motion = _derived(runs["1hz"]), _derived(runs["motion"])
    figures = {
        key: {
            "1hz": fixed.get(key, math.nan),
            "motion": motion.get(key, math.nan),
            "motion_over_1hz": ratio(
                float(motion.get(key, math.nan)), float(fixed.get(key, math.nan))
            ),
        }
        for _, key, _ in FIGURES
    }
    target = {
        "p99_ratio_vs_broker": motion["p99_ratio_vs_broker"],
        "max": P99_RATIO_MAX,
        "commands_missing": motion["commands_missing"],
        "met": motion["p99_ratio_vs_broker"] <= P99_RATIO_MAX and motion["commands_missing"] == 0,
    }
    return {"devices": fixed["devices"], "figures": figures, "target_motion": target}


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def side_by_side_table(report: Mapping[str, Any]) -> Table:
    """1 Hz, motion-scaled and their ratio, one row per figure."""
    t = Table(title=f"actimesh bench --side-by-side, {report['devices']:,} devices")
    t.add_column("figure")
    t.add_column("1 Hz", justify="right")
    t.add_column("motion-scaled", justify="right")
    t.add_column("motion / 1 Hz", justify="right")
    figures = report["figures"]
    for label, key, digits in FIGURES:
        row = figures[key]
        t.add_row(
            label,
            _fmt(row["1hz"], digits),
            _fmt(row["motion"], digits),
            _fmt(row["motion_over_1hz"], 2),
        )
    return t


async def bench_side_by_side(
    settings: BenchSettings, console: Console, *, json_path: Path, plot_path: Path | None
) -> dict[str, Any]:
    """Both halves, the table, the JSON report and the plot (one panel per half)."""
    if settings.cluster:
        raise ConfigError("--side-by-side runs on one machine only: drop --cluster")
    runs: dict[str, dict[str, Any]] = {}
    with make_progress(console) as progress:
        for mode in MODES:
            runs[mode] = await run_bench(replace(settings, telemetry=mode), progress)
    report: dict[str, Any] = {**side_by_side(runs), "machine": machine(), "runs": runs}
    console.print(side_by_side_table(report))
    target = report["target_motion"]
    verdict = "[green]met[/green]" if target["met"] else "[red]not met[/red]"
    console.print(
        f"motion-scaled target (p99 ratio ≤ {P99_RATIO_MAX:g}, 0 commands missing): "
        f"{verdict} (ratio {target['p99_ratio_vs_broker']:.2f}, "
        f"{target['commands_missing']:,} missing)"
    )
    for mode, run in runs.items():
        if "trace" in run:
            console.print(f"trace, {mode}:\n{describe(run['trace'])}")
    write_json(report, json_path)
    console.print(f"JSON report: {json_path}")
    if plot_path is not None and plot(list(runs.values()), plot_path):
        console.print(f"latency plot: {plot_path}")
    return report
