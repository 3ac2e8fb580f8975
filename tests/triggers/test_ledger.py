"""The SQLite ledger: activations with their decisions, acknowledgements, dedupe lookups."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh.errors import LedgerError
from actimesh.triggers.ledger import AckRow, ActivationRow, DecisionRow, Ledger


def activation(aid: str = "act-1", eid: str = "e1", ts: float = 100.0) -> ActivationRow:
    return ActivationRow(
        aid=aid, src="cew1", eid=eid, type="taser_draw", event_ts=ts, received_ts=ts + 0.01,
        decided_ts=ts + 0.02, lat=51.0, lon=-114.0, acc=3.0, position_source="event",
        radius_m=9.144, pre_roll_s=30.0, rule={"event_type": "taser_draw"},
        initiated_by=None, engine="engine-1",
    )  # fmt: skip


DECISIONS = [
    DecisionRow("bwc1", "body_cam", True, "paired"),
    DecisionRow("bwc2", "body_cam", True, "proximity", 9.0, 0.0, 0.5, 0.0),
    DecisionRow("bwc3", "body_cam", False, "too_far", 9.3, 0.0, 0.5, 0.0),
]


async def test_activation_and_decisions_round_trip(tmp_path: Path) -> None:
    async with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        assert await ledger.record_activation(activation(), DECISIONS)
        found = await ledger.activation("act-1")
    assert found is not None
    row, decisions = found
    assert row == activation()
    assert {d.device_id: (d.commanded, d.reason) for d in decisions} == {
        "bwc1": (True, "paired"),
        "bwc2": (True, "proximity"),
        "bwc3": (False, "too_far"),
    }


async def test_same_activation_twice_is_written_once(tmp_path: Path) -> None:
    async with Ledger(tmp_path / "l.sqlite3") as ledger:
        assert await ledger.record_activation(activation(), DECISIONS)
        assert not await ledger.record_activation(activation(), DECISIONS)
        assert await ledger.find("cew1", "e1") == "act-1"
        assert await ledger.find("cew1", "nope") is None
        assert await ledger.activation_ids() == ["act-1"]


async def test_ledger_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with Ledger(path) as ledger:
        await ledger.record_activation(activation(ts=500.0), DECISIONS)
        await ledger.record_ack(AckRow("act-1", "bwc1", "recording", 30.0, "rec-1", 501.0, 501.1))
    async with Ledger(path) as ledger:
        assert await ledger.recent_events(since=400.0) == [("cew1", "e1")]
        assert await ledger.recent_events(since=600.0) == []
        acks = await ledger.acks("act-1")
    assert [(a.device_id, a.pre_cov_s, a.recording) for a in acks] == [("bwc1", 30.0, "rec-1")]


async def test_unwritable_ledger_says_how_to_fix_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LedgerError, match="check the --data-dir"):
        async with Ledger(blocker / "ledger.sqlite3"):
            pass


async def test_closed_ledger_refuses_work(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    with pytest.raises(LedgerError, match="not open"):
        await ledger.find("a", "b")
