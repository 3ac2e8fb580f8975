"""Retention in the SQLite ledger: redacting records older than the retention period.

A redacted record keeps its ``body_sha256``, so the chain still verifies; the query-table
rows it described are deleted, and one ``retention_delete`` record per activation (or
other subject) lists what went. Records linked to a case, and the records that prove
links and deletions, are never redacted.
"""

from __future__ import annotations

import json
import sqlite3

from actimesh.ledger.chain import EventType
from actimesh.ledger.rows import Redaction, ack_from_body, redaction_entry
from actimesh.ledger.sqlite.schema import append_record

__all__ = ["redact_batch"]


def redact_batch(
    db: sqlite3.Connection,
    cutoff: str,
    after: tuple[str, int],
    *,
    limit: int,
    now: float,
    dry_run: bool,
) -> tuple[list[Redaction], tuple[str, int] | None]:
    """Redact up to ``limit`` expired records after ``after`` (time, seq).

    A record is expired when its time is before ``cutoff``, its type is not kept, and
    neither its activation nor its subject is linked to a case. The caller holds the
    write transaction.
    """
    # The WHERE repeats the partial index's condition so that the index is used.
    found = db.execute(
        "SELECT time, seq, subject, event_type, body, aid FROM records "
        "WHERE body IS NOT NULL "
        "AND event_type NOT IN ('case_link', 'retention_delete', 'ledger_import') "
        "AND time < ? AND (time, seq) > (?, ?) "
        "AND (aid IS NULL OR aid NOT IN (SELECT aid FROM case_links)) "
        "AND subject NOT IN (SELECT aid FROM case_links UNION SELECT case_id FROM "
        "case_links) ORDER BY time, seq LIMIT ?",
        (cutoff, *after, limit),
    ).fetchall()
    if not found:
        return [], None
    groups: dict[tuple[str, str | None], list[tuple[int, str, str]]] = {}
    for _time, seq, subject, event_type, body, aid in found:
        key = (aid if aid is not None else subject, aid)
        groups.setdefault(key, []).append((seq, event_type, body))
    done = [
        _redact_group(db, subject, aid, items, cutoff=cutoff, now=now, dry_run=dry_run)
        for (subject, aid), items in groups.items()
    ]
    last = found[-1]
    return done, (str(last[0]), int(last[1]))


def _redact_group(
    db: sqlite3.Connection,
    subject: str,
    aid: str | None,
    items: list[tuple[int, str, str]],
    *,
    cutoff: str,
    now: float,
    dry_run: bool,
) -> Redaction:
    rows = {"activations": 0, "decisions": 0, "acks": 0}
    recordings: set[str] = set()
    for _seq, event_type, body in items:
        if event_type == EventType.ACTIVATION:
            rows["decisions"] += db.execute(
                "DELETE FROM decisions WHERE aid = ?", (subject,)
            ).rowcount
            rows["activations"] += db.execute(
                "DELETE FROM activations WHERE aid = ?", (subject,)
            ).rowcount
        elif event_type == EventType.ACK:
            try:
                ack = ack_from_body(json.loads(body))
            except (ValueError, KeyError, TypeError):
                continue  # verify reports the bad body; nothing to delete by key
            if ack.recording is not None:
                recordings.add(f"{ack.device_id}/{ack.recording}")
            rows["acks"] += db.execute(
                "DELETE FROM acks WHERE aid = ? AND device_id = ? AND status = ? AND device_ts = ?",
                (ack.aid, ack.device_id, ack.status, ack.device_ts),
            ).rowcount
    seqs = tuple(seq for seq, _t, _b in items)
    db.executemany("UPDATE records SET body = NULL WHERE seq = ?", [(s,) for s in seqs])
    seq = None
    if not dry_run:
        entry = redaction_entry(subject, aid, seqs, rows, sorted(recordings), cutoff=cutoff, at=now)
        seq = append_record(db, entry)
    return Redaction(subject, aid, seqs, rows, tuple(sorted(recordings)), seq)
