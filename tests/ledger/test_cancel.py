"""False activations in the ledger: a camera's ``cancelled`` acknowledgement."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from actimesh.audit import verify_ledger
from actimesh.errors import LedgerError
from actimesh.ledger import FALSE_ACTIVATION, AckRow, SqliteLedger
from tests.ledger.test_sqlite_store import DECISIONS, activation

CANCELLED = AckRow("act-1", "bwc1", "cancelled", 30.0, "rec-1", 104.5, 104.6, "false")


async def test_cancelled_ack_is_an_ack_and_a_false_activation_record(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(ts=100.0), DECISIONS)
        await ledger.record_ack(AckRow("act-1", "bwc1", "recording", 30.0, "rec-1", 100.2, 100.3))
        seq = await ledger.record_cancel(CANCELLED, "Cst. Rivera")
        assert seq is not None
        assert [a.status for a in await ledger.acks("act-1")] == ["recording", "cancelled"]
        (false,) = await ledger.false_activations("act-1")
        assert await ledger.false_activations("act-2") == []
    assert false.seq == seq
    assert (false.aid, false.device_id, false.by) == ("act-1", "bwc1", "Cst. Rivera")
    assert false.cancelled_ts == 104.5
    assert false.after_event_s == pytest.approx(4.5)
    assert (false.eid, false.event_type, false.recording) == ("e1", "taser_draw", "rec-1")
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT component, subject, outcome, aid FROM records WHERE event_type = ?",
            (FALSE_ACTIVATION,),
        ).fetchone()
    assert row == ("device/bwc1", "bwc1", "cancelled", "act-1")
    report = verify_ledger(path)
    assert report.ok, report.summary()


async def test_redelivered_cancel_is_recorded_once(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        await ledger.record_activation(activation(), DECISIONS)
        assert await ledger.record_cancel(CANCELLED, "Cst. Rivera") is not None
        assert await ledger.record_cancel(CANCELLED, "Cst. Rivera") is None
        assert len(await ledger.false_activations()) == 1


async def test_cancel_before_its_activation_is_recorded_without_event_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await ledger.record_cancel(CANCELLED, "Cst. Rivera")
        (false,) = await ledger.false_activations()
    assert false.after_event_s is None
    assert false.eid is None
    assert verify_ledger(path).ok


async def test_false_activation_is_written_only_by_the_ledger(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        with pytest.raises(LedgerError, match="written by the ledger itself"):
            await ledger.record_event("engine/e", FALSE_ACTIVATION, "bwc1", "cancelled", {})
        with pytest.raises(LedgerError, match="needs a cancelled ack"):
            await ledger.record_cancel(
                AckRow("act-1", "bwc1", "recording", 1.0, None, 1.0, 1.0), "Cst. Rivera"
            )
        with pytest.raises(LedgerError, match="who cancelled"):
            await ledger.record_cancel(CANCELLED, "")
