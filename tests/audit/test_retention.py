"""Retention: old and unlinked goes, on the record; linked stays; the chain still verifies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from actimesh.audit import apply_retention, retain, retention_loop, verify_ledger
from actimesh.errors import LedgerError
from actimesh.ledger import SqliteLedger
from tests.audit.helpers import (
    DECISIONS,
    NOW,
    RECENT,
    T0,
    ack,
    activation,
    record_recording,
    write_activations,
)
from tests.waiting import eventually


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


async def _ledger(path: Path) -> None:
    """act-1..3 are old; act-2 is linked to a case; act-4 is recent."""
    await write_activations(path, range(1, 4))
    async with SqliteLedger(path) as ledger:
        await ledger.record_event(
            "engine/engine-1",
            "alert",
            "bwc2",
            "no_ack",
            {"aid": "act-2", "device": "bwc2"},
            at=T0 + 40,
        )
        await ledger.record_event(
            "engine/engine-1",
            "alert",
            "bwc3",
            "no_ack",
            {"aid": "act-3", "device": "bwc3"},
            at=T0 + 41,
        )
        await ledger.link_case("CR-1", "act-2", "Sgt Smith", at=T0 + 50)
        await ledger.record_activation(activation(4, RECENT), DECISIONS)
        await ledger.record_ack(ack(4, RECENT))


async def test_old_unlinked_records_are_redacted_and_the_chain_still_verifies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    await _ledger(path)
    before = {r[0]: r[1] for r in _query(path, "SELECT seq, body_sha256 FROM records")}
    async with SqliteLedger(path) as ledger:
        report = await apply_retention(ledger, 396, now=NOW)
    assert [(r.subject, r.seqs, r.record_seq) for r in report.redactions] == [
        ("act-1", (1, 2), 12),
        ("act-3", (5, 6, 8), 13),
    ]
    assert report.redactions[0].rows_deleted == {"activations": 1, "decisions": 3, "acks": 1}
    assert report.redactions[0].recordings == ("bwc1/rec-1",)
    redacted = _query(path, "SELECT seq FROM records WHERE body IS NULL ORDER BY seq")
    assert [r[0] for r in redacted] == [1, 2, 5, 6, 8]
    after = {r[0]: r[1] for r in _query(path, "SELECT seq, body_sha256 FROM records")}
    assert all(after[seq] == digest for seq, digest in before.items())  # hashes kept
    assert _query(path, "SELECT aid FROM activations ORDER BY aid") == [("act-2",), ("act-4",)]
    assert _query(path, "SELECT DISTINCT aid FROM acks ORDER BY aid") == [("act-2",), ("act-4",)]
    retention = _query(
        path, "SELECT component, event_type, subject, outcome, body FROM records WHERE seq = 12"
    )[0]
    assert retention[:4] == ("audit/retention", "retention_delete", "act-1", "redacted")
    assert json.loads(str(retention[4]))["redacted_seqs"] == [1, 2]
    verified = verify_ledger(path)
    assert verified.ok, verified.findings
    assert verified.redacted == 5
    assert "5 redacted by retention" in verified.summary()
    async with SqliteLedger(path) as ledger:  # nothing more to do the second time
        assert (await apply_retention(ledger, 396, now=NOW)).redactions == []


async def test_a_case_linked_activation_and_everything_about_it_survive(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    await _ledger(path)
    async with SqliteLedger(path) as ledger:
        await apply_retention(ledger, 396, now=NOW + 3650 * 86_400.0)  # ten years on
        found = await ledger.activation("act-2")
        assert found is not None
        assert found[0] == activation(2)
        assert len(await ledger.acks("act-2")) == 1
    kept = _query(
        path,
        "SELECT seq, event_type FROM records WHERE aid = 'act-2' AND body IS NOT NULL ORDER BY seq",
    )
    assert kept == [(3, "activation"), (4, "ack"), (7, "alert"), (9, "case_link")]
    assert verify_ledger(path).ok


async def test_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    await _ledger(path)
    dump = _query(path, "SELECT * FROM records")
    report = await retain(path, 396, now=NOW, dry_run=True)
    assert [r.subject for r in report.redactions] == ["act-1", "act-3"]
    assert all(r.record_seq is None for r in report.redactions)
    assert report.summary().startswith("retention before 2020-12-26T")
    assert "would redact 5 records (2 activations)" in report.summary()
    assert _query(path, "SELECT * FROM records") == dump
    assert len(_query(path, "SELECT * FROM activations")) == 4


async def test_linking_after_retention_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    await _ledger(path)
    async with SqliteLedger(path) as ledger:
        await apply_retention(ledger, 396, now=NOW)
        with pytest.raises(LedgerError, match="was deleted by retention"):
            await ledger.link_case("CR-1", "act-1", "Sgt Smith")


async def test_recordings_go_with_their_activations_and_each_deletion_is_recorded(
    tmp_path: Path,
) -> None:
    path, store = tmp_path / "ledger.sqlite3", tmp_path / "recordings"
    await _ledger(path)
    old = record_recording(store, "bwc1", "rec-1", ["act-1"], T0)  # act-1 goes
    linked = record_recording(store, "bwc1", "rec-2", ["act-2"], T0)  # linked to CR-1
    record_recording(store, "bwc1", "rec-4", ["act-4"], RECENT)  # recent
    # In the manifest only act-1, but its acknowledgement also names the recent act-4.
    shared = record_recording(store, "bwc2", "rec-9", ["act-1"], T0)
    async with SqliteLedger(path) as ledger:
        await ledger.record_ack(replace(ack(4, RECENT, device="bwc2"), recording="rec-9"))
    unknown = record_recording(store, "bwc3", "rec-x", ["act-elsewhere"], T0)
    (store / "bwc3" / "rec-broken").mkdir()
    tomb = store / "bwc2" / ".rec-7.deleting"  # left by a run that crashed mid-way
    tomb.mkdir()
    async with SqliteLedger(path) as ledger:
        report = await apply_retention(ledger, 396, recordings=store, now=NOW)
    assert report.recordings_deleted == ["bwc2/rec-7", "bwc1/rec-1"]
    assert not old.exists()
    assert not tomb.exists()
    assert linked.exists()
    assert shared.exists()
    assert unknown.exists()
    assert report.recordings_kept == {
        "bwc3/rec-broken": "unreadable manifest",
        "bwc3/rec-x": "activation act-elsewhere is not in this ledger",
    }
    deletions = _query(
        path,
        "SELECT subject, outcome, body FROM records WHERE event_type = "
        "'retention_delete' AND subject LIKE '%/%' ORDER BY seq",
    )
    assert [d[:2] for d in deletions] == [("bwc2/rec-7", "deleted"), ("bwc1/rec-1", "deleted")]
    body = json.loads(str(deletions[1][2]))
    assert body["aids"] == ["act-1"]
    assert body["segments"] == 1
    assert len(body["manifest_sha256"]) == 64
    assert verify_ledger(path).ok
    assert "deleted 2 recordings, kept 2 to look at" in report.summary()


async def test_retention_runs_in_the_background_until_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    await write_activations(path, range(1, 3))  # 2020: older than 13 months now
    task = asyncio.create_task(retention_loop(path, 396, interval_s=3600), name="retention")
    try:
        await eventually(
            lambda: _query(path, "SELECT 1 FROM records WHERE event_type = 'retention_delete'")
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert verify_ledger(path).ok
