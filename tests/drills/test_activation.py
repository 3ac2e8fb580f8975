"""`actimesh drill`: it passes on a correct engine and catches a wrong one."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from actimesh.drills import default_scenarios, run_drill
from actimesh.geofence import InclusionMode, InclusionPolicy


def recording_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, highlight=False), out


async def test_drill_passes_on_a_correct_engine(tmp_path: Path) -> None:
    console, out = recording_console()
    report = await run_drill(console, rounds=1, data_dir=tmp_path)
    assert report.ok, out.getvalue()
    assert "drill passed" in out.getvalue()
    assert len(report.latencies_ms) == sum(len(r.expected) for r in report.results)
    assert (tmp_path / "ledger.sqlite3").exists()


async def test_drill_fails_when_the_engine_misses_a_camera(tmp_path: Path) -> None:
    """The drill's expectations are its own: an engine with another policy fails it."""
    console, out = recording_console()
    expect_inclusive = default_scenarios(InclusionPolicy(mode=InclusionMode.INCLUSIVE))
    report = await run_drill(
        console,
        rounds=1,
        data_dir=tmp_path,
        policy=InclusionPolicy(mode=InclusionMode.CENTRE),
        scenarios=expect_inclusive,
    )
    assert not report.ok
    assert report.results[0].missed == {"s1-bwc-10m-acc1_5"}
    assert "MISSED s1-bwc-10m-acc1_5" in out.getvalue()
    assert "drill FAILED" in out.getvalue()
