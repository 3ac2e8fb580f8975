"""The fault drill itself: a real fault, a real engine process, and an honest count."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from actimesh.drills import SCENARIOS, run_fault_drill
from tests.drills.faults import assert_nothing_lost


async def test_broker_kill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    report = await run_fault_drill(
        Console(file=out, width=200), root=tmp_path, short=True, only="broker kill -9"
    )
    (result,) = report.results
    assert_nothing_lost(result, out.getvalue())
    assert (tmp_path / "fault-drill.json").exists()
    assert "fault drill passed" in out.getvalue()


def test_every_fault_named_in_the_issue_has_a_scenario() -> None:
    names = {name for name, _, _ in SCENARIOS}
    assert {
        "broker restart",
        "broker kill -9",
        "engine kill -9",
        "replica killed",
        "cameras drop out",
        "slow camera",
    } <= names
