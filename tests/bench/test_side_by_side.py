"""`actimesh bench --side-by-side`: the same fleet at 1 Hz and motion-scaled, one run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from actimesh.bench import REQUIRED_KEYS
from actimesh.bench.sidebyside import FIGURES, side_by_side, side_by_side_table
from actimesh.cli import main


def _run(**figures: Any) -> dict[str, Any]:
    base = {key: 1.0 for _, key, _ in FIGURES}
    base |= {
        "devices": 1_000,
        "telemetry_sent_msgs_per_s": 1_000.0,
        "broker_delivery_msgs_per_s": 4_000.0,
        "p99_ratio_vs_broker": 1.2,
        "commands_missing": 0,
    }
    return base | figures


def test_each_figure_is_put_beside_its_counterpart_with_the_ratio() -> None:
    report = side_by_side(
        {
            "1hz": _run(engine_cpu_percent=80.0),
            "motion": _run(telemetry_sent_msgs_per_s=570.0, engine_cpu_percent=40.0),
        }
    )
    figures = report["figures"]
    assert figures["engine_cpu_percent"] == {"1hz": 80.0, "motion": 40.0, "motion_over_1hz": 0.5}
    assert figures["telemetry_per_device_s"]["1hz"] == pytest.approx(1.0)
    assert figures["telemetry_per_device_s"]["motion"] == pytest.approx(0.57)
    assert figures["load_vs_broker"]["motion"] == pytest.approx(570.0 / 4_000.0)
    assert report["target_motion"]["met"] is True
    assert side_by_side_table(report).row_count == len(FIGURES)


@pytest.mark.parametrize(
    ("ratio", "missing"), [(1.6, 0), (1.0, 1)], ids=["slow", "a command missing"]
)
def test_the_target_is_judged_on_the_motion_scaled_half(ratio: float, missing: int) -> None:
    fine = _run()
    report = side_by_side(
        {"1hz": fine, "motion": _run(p99_ratio_vs_broker=ratio, commands_missing=missing)}
    )
    assert report["target_motion"]["met"] is False
    # And a 1 Hz half that misses it does not fail the motion-scaled one.
    report = side_by_side(
        {"1hz": _run(p99_ratio_vs_broker=ratio, commands_missing=missing), "motion": fine}
    )
    assert report["target_motion"]["met"] is True


@pytest.mark.integration
@pytest.mark.time_limit(120)
def test_smoke_side_by_side_runs_both_halves_and_reports_them_together(tmp_path: Path) -> None:
    report_path, plot_path = tmp_path / "side.json", tmp_path / "side.png"
    argv = ["bench", "--smoke", "--side-by-side", "--json", str(report_path)]
    assert main([*argv, "--plot", str(plot_path)]) == 0
    report = json.loads(report_path.read_text())
    runs = report["runs"]
    assert runs["1hz"]["settings"]["telemetry"] == "1hz"
    assert runs["motion"]["settings"]["telemetry"] == "motion"
    for mode, run in runs.items():
        for key in REQUIRED_KEYS:
            assert math.isfinite(run[key]), (mode, key)
        # Every message sent reached the engine, and every scene camera its command:
        # under the motion rule its heartbeat keeps its fix fresh.
        assert run["telemetry_dropped"] == 0, mode
        assert run["commands_missing"] == 0, mode
        assert run["commands_received"] == run["commands_expected"] > 0, mode
        assert run["broker_delivery_msgs_per_s"] > 0, mode
    motion = runs["motion"]["motion"]
    assert "ok" not in motion  # the reply's envelope stays out of the report
    assert motion["reports"] < motion["epochs"]
    assert set(motion["mixture"]) == {"driving", "at a scene", "at the station"}
    per_device = report["figures"]["telemetry_per_device_s"]
    assert per_device["motion"] < per_device["1hz"]
    assert report["target_motion"]["commands_missing"] == 0
    assert report["figures"]["loadgen_nice"]["motion"] == 10
    assert report["machine"]["cores"] >= 1
    assert plot_path.read_bytes().startswith(b"\x89PNG")
