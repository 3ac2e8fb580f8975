"""`actimesh bench --smoke`: the whole benchmark runs end to end in seconds.

CI checks that it works and that the report has every figure with a sane type; the
figures themselves belong to the benchmark (docs/PERFORMANCE.md), not to timed tests.

One traced smoke run serves both the figures' test and the trace's: a run takes 15-20 s
on 2 cores, and the trace only adds to the report. The untraced run is the one
`--side-by-side` makes twice (tests/bench/test_side_by_side.py).
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from actimesh.bench import REQUIRED_KEYS
from actimesh.bench.run import make_progress, side_by_side_growth
from actimesh.bench.settings import BenchSettings
from actimesh.cli import main
from tests.guards import ExceptionCollector

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def traced_smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """``actimesh bench --smoke --trace``: its report, and where it drew the plot."""
    folder = tmp_path_factory.mktemp("smoke")
    report_path, plot_path = folder / "bench.json", folder / "bench.png"
    argv = ["bench", "--smoke", "--trace", "--json", str(report_path), "--plot", str(plot_path)]
    # A module-scoped fixture runs before the guard that fails a test on logged
    # exceptions (tests/guards.py) is in place, so it keeps a collector of its own.
    logged = ExceptionCollector()
    logging.getLogger().addHandler(logged)
    try:
        assert main(argv) == 0
    finally:
        logging.getLogger().removeHandler(logged)
    assert not logged.records, [f"{r.name}: {r.getMessage()}" for r in logged.records]
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report, plot_path


def test_smoke_run_writes_every_figure_and_the_plot(
    traced_smoke_run: tuple[dict[str, Any], Path],
) -> None:
    report, plot_path = traced_smoke_run
    for key in REQUIRED_KEYS:
        assert key in report, key
        value = report[key]
        assert isinstance(value, int | float)
        assert not isinstance(value, bool), key
        assert math.isfinite(value)
        assert value >= 0, (key, value)
    assert report["devices"] == 200
    assert report["commands_received"] > 0
    assert report["commands_received"] + report["commands_missing"] == report["commands_expected"]
    assert report["telemetry_dropped"] == 0
    assert report["naive_mismatches"] == 0
    assert set(report["targets"]) >= {"p99_ratio_vs_broker", "naive_scan_ratio"}
    assert report["machine"]["cores"] >= 1
    # The load generator streamed at the lower priority, and the report says so.
    assert report["loadgen_nice"] == BenchSettings().loadgen_nice == 10
    assert report["loadgen_priority"]["how"] in {"autogroup", "process"}
    assert plot_path.read_bytes().startswith(b"\x89PNG")


async def test_sweep_growth_is_timed_side_by_side_in_a_worker() -> None:
    console = Console(file=io.StringIO())
    with make_progress(console) as progress:
        side = await side_by_side_growth(BenchSettings.smoke(), (200, 1_000), progress)
    assert (side["from_devices"], side["to_devices"]) == (200, 1_000)
    assert side["queries_per_size"] == BenchSettings.smoke().growth_queries
    assert math.isfinite(side["p99_growth"])
    assert side["p99_growth"] > 0
    assert "ok" not in side  # the reply's envelope stays out of the report


def test_a_traced_smoke_run_splits_triggers_and_echoes_into_hops(
    traced_smoke_run: tuple[dict[str, Any], Path],
) -> None:
    trace = traced_smoke_run[0]["trace"]
    for path in ("engine", "echo"):
        assert trace[path]["traced"] > 0, path
        for stage in ("to_handler", "work", "to_cameras"):
            assert 0 <= trace[path][stage]["p50_ms"] <= trace[path][stage]["p99_ms"], stage
    lag = trace["engine_loop_lag_ms"]
    assert lag["samples"] > 0
    assert 0 <= lag["p50"] <= lag["p99"]
