"""``actimesh bench``: run, print the table, write the JSON report and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from actimesh.bench.clusterrun import run_cluster_bench
from actimesh.bench.report import growth, machine, plot, table, write_json
from actimesh.bench.run import make_progress, run_bench, side_by_side_growth
from actimesh.bench.settings import SWEEP_DEVICES, BenchSettings
from actimesh.bench.trace import describe
from actimesh.errors import ConfigError

__all__ = ["bench"]


async def bench(
    settings: BenchSettings,
    console: Console,
    *,
    sweep: bool = False,
    json_path: Path,
    plot_path: Path | None,
) -> dict[str, Any]:
    """One run (or the sweep); returns the report written to ``json_path``."""
    if sweep and settings.cluster:
        raise ConfigError("--sweep runs on one machine only: drop --sweep or --cluster")
    sizes = SWEEP_DEVICES if sweep else (settings.devices,)
    one = run_cluster_bench if settings.cluster else run_bench
    with make_progress(console) as progress:
        runs = [await one(settings.for_devices(n), progress) for n in sizes]
        side = await side_by_side_growth(settings, sizes, progress) if sweep else None
    console.print(table(runs))
    for run in runs:
        if "trace" in run:
            console.print(f"trace, {run['devices']:,} devices:\n{describe(run['trace'])}")
    info = machine()
    report: dict[str, Any]
    if sweep:
        assert side is not None
        report = {"machine": info, "runs": runs, "growth": growth(runs, side)}
        g = report["growth"]
        console.print(
            f"index query p99 growth {g['from_devices']:,} → {g['to_devices']:,} devices, "
            f"timed side by side at the same density: {g['index_query_p99_growth']:.2f}x "
            f"(target ≤ 1.2x; p50 {g['index_query_p50_growth']:.2f}x). In the runs' 20 km "
            f"city: {g['index_query_p99_growth_same_city']:.2f}x; across the runs above: "
            f"{g['index_query_p99_growth_across_runs']:.2f}x"
        )
    else:
        report = {**runs[0], "machine": info}
    write_json(report, json_path)
    console.print(f"JSON report: {json_path}")
    if plot_path is not None:
        if plot(runs, plot_path):
            console.print(f"latency plot: {plot_path}")
        else:
            console.print("no plot: matplotlib is missing (pip install 'actimesh\\[bench]')")
    return report
