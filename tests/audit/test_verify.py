"""``verify_ledger``: every kind of tampering is named, with its records; intact passes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from actimesh.audit import Finding, Tamper, verify_ledger
from actimesh.errors import AuditError
from actimesh.ledger import Head
from tests.audit.helpers import chain_hash, rehash, tamper, write_activations

# Five activations, each with one ack: activation n is seq 2n-1, its ack seq 2n.
LAST = 10


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    asyncio.run(write_activations(path, range(1, 6)))
    return path


def findings(path: Path, head: Head | None = None) -> list[tuple[str, Tamper, int | None]]:
    report = verify_ledger(path, head=head)
    assert not report.ok
    return [(f.where, f.kind, f.first) for f in report.findings]


def only(path: Path) -> Finding:
    report = verify_ledger(path)
    assert len(report.findings) == 1, report.findings
    return report.findings[0]


def test_an_untouched_ledger_verifies(ledger: Path) -> None:
    report = verify_ledger(ledger)
    assert report.ok
    assert report.records == LAST
    assert report.summary().startswith("ledger intact: 10 records (0 redacted by retention)")


def test_a_changed_body_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("UPDATE records SET body = replace(body, 'too_far', 'proximity') WHERE seq = 5")
    finding = only(ledger)
    assert (finding.kind, finding.first) == (Tamper.CHANGED, 5)
    assert "body does not match its body_sha256" in str(finding)


def test_a_changed_outcome_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("UPDATE records SET outcome = 'failed' WHERE seq = 4")
    finding = only(ledger)
    assert (finding.kind, finding.first) == (Tamper.CHANGED, 4)
    assert "fields do not match its hash" in finding.detail


def test_a_record_changed_and_rehashed_is_caught_by_its_successor(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("UPDATE records SET outcome = 'failed' WHERE seq = 4")
        prev, when, component, kind, subject, outcome, body_sha = db.execute(
            "SELECT prev_hash, time, component, event_type, subject, outcome, body_sha256 "
            "FROM records WHERE seq = 4"
        ).fetchone()
        db.execute(
            "UPDATE records SET hash = ? WHERE seq = 4",
            (chain_hash(prev, 4, when, component, kind, subject, outcome, body_sha),),
        )
    finding = only(ledger)
    assert (finding.kind, finding.first) == (Tamper.CHANGED, 4)
    assert "hash recomputed: seq 5 was written after a different seq 4" in finding.detail


def test_a_removed_record_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("DELETE FROM records WHERE seq = 6")
    assert findings(ledger) == [("chain", Tamper.REMOVED, 6), ("acks", Tamper.INSERTED, None)]
    assert str(verify_ledger(ledger).findings[0]) == "chain seq 6: removed: missing from the chain"


def test_a_removed_record_with_the_rest_renumbered_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("DELETE FROM records WHERE seq = 6")
        db.execute("UPDATE records SET seq = seq - 1 WHERE seq > 6")
    report = verify_ledger(ledger)
    chain = [(f.kind, f.first, f.last) for f in report.findings if f.where == "chain"]
    assert chain == [(Tamper.REMOVED, 6, None), (Tamper.REORDERED, 6, 9)]
    assert "written as seq 6 is gone" in report.findings[0].detail
    assert "written as seq 7..10 (renumbered down by 1)" in report.findings[1].detail


def _forge(db: sqlite3.Connection, seq: int, prev: str) -> None:
    body = json.dumps({"detail": "camera was never here"}, separators=(",", ":"))
    body_sha = hashlib.sha256(body.encode()).hexdigest()
    when = "2020-09-13T12:26:41.000000Z"
    digest = chain_hash(prev, seq, when, "engine/engine-1", "alert", "bwc9", "ok", body_sha)
    db.execute(
        "INSERT INTO records VALUES (?, ?, 'engine/engine-1', 'alert', 'bwc9', 'ok', ?, ?, ?, ?, "
        "NULL)",
        (seq, when, body, body_sha, prev, digest),
    )


def test_a_forged_record_inserted_in_the_middle_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("UPDATE records SET seq = -seq WHERE seq > 4")
        db.execute("UPDATE records SET seq = -seq + 1 WHERE seq < 0")
        (prev,) = db.execute("SELECT hash FROM records WHERE seq = 4").fetchone()
        _forge(db, 5, prev)  # links correctly to 4 and hashes correctly: a careful forger
    report = verify_ledger(ledger)
    assert [(f.kind, f.first, f.last) for f in report.findings] == [
        (Tamper.INSERTED, 5, None),
        (Tamper.REORDERED, 6, 11),
    ]
    assert "not part of the chain: seq 6 was written right after seq 4" in str(report.findings[0])
    assert "renumbered up by 1" in report.findings[1].detail


def test_a_record_forged_at_the_end_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        _forge(db, LAST + 1, prev="ab" * 32)
    finding = only(ledger)
    assert (finding.kind, finding.first) == (Tamper.INSERTED, LAST + 1)
    assert f"does not link to seq {LAST}" in finding.detail


def test_two_swapped_records_are_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("UPDATE records SET seq = -5 WHERE seq = 5")
        db.execute("UPDATE records SET seq = 5 WHERE seq = 6")
        db.execute("UPDATE records SET seq = 6 WHERE seq = -5")
    finding = only(ledger)
    assert (finding.kind, finding.first, finding.last) == (Tamper.REORDERED, 5, 6)
    assert str(finding) == "chain seq 5..6: reordered: seq 5 and seq 6 were swapped"


def test_a_record_moved_elsewhere_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute(f"UPDATE records SET seq = {LAST + 1} WHERE seq = 3")
    report = verify_ledger(ledger)
    assert [(f.kind, f.first) for f in report.findings] == [
        (Tamper.REMOVED, 3),
        (Tamper.REORDERED, LAST + 1),
    ]
    assert "holds the record written as seq 3" in report.findings[1].detail


def test_a_truncated_tail_needs_the_recorded_head(ledger: Path) -> None:
    head = verify_ledger(ledger).head
    with tamper(ledger) as db:  # a careful attacker removes the rows as well
        db.execute("DELETE FROM records WHERE seq > 8")
        db.execute("DELETE FROM acks WHERE aid = 'act-5'")
        db.execute("DELETE FROM decisions WHERE aid = 'act-5'")
        db.execute("DELETE FROM activations WHERE aid = 'act-5'")
    assert verify_ledger(ledger).ok  # a chain alone cannot tell
    report = verify_ledger(ledger, head=head)
    assert [(f.kind, f.first, f.last) for f in report.findings] == [(Tamper.TRUNCATED, 9, 10)]
    assert "the tail was cut off" in str(report.findings[0])


def test_a_rewritten_chain_differs_from_the_recorded_head(ledger: Path) -> None:
    head = verify_ledger(ledger).head
    with tamper(ledger) as db:
        db.execute("UPDATE records SET outcome = 'none_commanded' WHERE seq = 3")
        rehash(db, start=3)
    assert verify_ledger(ledger).ok
    report = verify_ledger(ledger, head=head)
    assert [(f.kind, f.first) for f in report.findings] == [(Tamper.CHANGED, LAST)]
    assert "rewritten" in report.findings[0].detail
    assert verify_ledger(ledger, head=Head(3, head.hash)).findings[0].kind is Tamper.CHANGED


def test_a_changed_decision_row_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute(
            "UPDATE decisions SET reason = 'stale' WHERE aid = 'act-2' AND device_id = 'bwc3'"
        )
    finding = only(ledger)
    assert (finding.where, finding.kind) == ("decisions", Tamper.CHANGED)
    assert finding.detail == (
        "activation act-2 (record seq 3) camera bwc3: reason is 'stale' in the table, "
        "'too_far' in the chain"
    )


def test_table_rows_removed_or_added_are_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("DELETE FROM decisions WHERE aid = 'act-1' AND device_id = 'bwc2'")
        db.execute("UPDATE activations SET lat = 52.0 WHERE aid = 'act-4'")
        db.execute(
            "INSERT INTO acks VALUES ('act-3', 'bwc7', 'recording', 30.0, NULL, 1.0, 2.0, NULL)"
        )
        db.execute("DELETE FROM acks WHERE aid = 'act-5'")
    assert findings(ledger) == [
        ("decisions", Tamper.REMOVED, None),
        ("activations", Tamper.CHANGED, None),
        ("acks", Tamper.REMOVED, None),
        ("acks", Tamper.INSERTED, None),
    ]
    text = "\n".join(str(f) for f in verify_ledger(ledger).findings)
    assert "activation act-1 (record seq 1) camera bwc2: decision row missing" in text
    assert "activation act-4 (record seq 7): lat is 52.0 in the table, 51.0 in the chain" in text
    assert "ack of act-3 by bwc7 (recording) is in the table but not in the chain" in text
    assert "ack of act-5 by bwc1 (recording, record seq 10): row missing" in text


def test_an_activation_row_outside_the_chain_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute(
            "INSERT INTO activations SELECT 'act-x', src, 'ex', type, event_ts, received_ts, "
            "decided_ts, lat, lon, acc, position_source, radius_m, pre_roll_s, rule, "
            "initiated_by, engine FROM activations WHERE aid = 'act-1'"
        )
    finding = only(ledger)
    assert (
        str(finding)
        == "activations: inserted: activation act-x is in the table but not in the chain"
    )


def test_a_body_removed_without_a_retention_record_is_tampering(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("UPDATE records SET body = NULL WHERE seq IN (3, 4)")
        db.execute("DELETE FROM acks WHERE aid = 'act-2'")
        db.execute("DELETE FROM decisions WHERE aid = 'act-2'")
        db.execute("DELETE FROM activations WHERE aid = 'act-2'")
    finding = only(ledger)
    assert (finding.kind, finding.first, finding.last) == (Tamper.CHANGED, 3, 4)
    assert "body removed without a retention_delete record" in finding.detail


def test_a_changed_aid_column_is_named(ledger: Path) -> None:
    with tamper(ledger) as db:
        db.execute("UPDATE records SET aid = 'act-9' WHERE seq = 4")
    finding = only(ledger)
    assert (finding.kind, finding.first) == (Tamper.CHANGED, 4)
    assert "aid column is 'act-9' but its body says 'act-2'" in finding.detail


def test_what_is_not_a_ledger_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"no ledger at .*give the --data-dir"):
        verify_ledger(tmp_path / "missing.sqlite3")
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(AuditError, match="is not a readable actimesh ledger"):
        verify_ledger(junk)
    old = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(old)) as db:
        db.execute("CREATE TABLE activations (aid TEXT)")
    with pytest.raises(AuditError, match="has no hash chain yet"):
        verify_ledger(old)
