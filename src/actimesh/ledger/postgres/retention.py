"""Retention in the PostgreSQL ledger: redacting records older than the retention period.

The same rules as the SQLite store's (:mod:`actimesh.ledger.sqlite.retention`): a
redacted record keeps its ``body_sha256``, so the chain still verifies; the query-table
rows it described are deleted; one ``retention_delete`` record per activation (or other
subject) lists what went; records linked to a case, and the records that prove links and
deletions, are never redacted. Each batch is one transaction holding the agency's chain.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from actimesh.ledger.chain import EventType
from actimesh.ledger.rows import Redaction, ack_from_body, redaction_entry

if TYPE_CHECKING:
    from actimesh.ledger.postgres.store import Chain

__all__ = ["redact_batch"]


async def redact_batch(
    chain: Chain,
    cutoff: str,
    after: tuple[str, int],
    *,
    limit: int,
    now: float,
    dry_run: bool,
) -> tuple[list[Redaction], tuple[str, int] | None]:
    """Redact up to ``limit`` expired records after ``after`` (time, seq).

    A record is expired when its time is before ``cutoff``, its type is not kept, and
    neither its activation nor its subject is linked to a case.
    """
    # The WHERE repeats the partial index's condition so that the index is used.
    await chain.cur.execute(
        "SELECT time, seq, subject, event_type, body, aid FROM records "
        "WHERE body IS NOT NULL "
        "AND event_type NOT IN ('case_link', 'retention_delete', 'ledger_import') "
        "AND time < %s AND (time, seq) > (%s, %s) "
        "AND (aid IS NULL OR aid NOT IN (SELECT aid FROM case_links)) "
        "AND subject NOT IN (SELECT aid FROM case_links UNION SELECT case_id FROM "
        "case_links) ORDER BY time, seq LIMIT %s",
        (cutoff, *after, limit),
    )
    found = await chain.cur.fetchall()
    if not found:
        return [], None
    groups: dict[tuple[str, str | None], list[tuple[int, str, str]]] = {}
    for _time, seq, subject, event_type, body, aid in found:
        key = (aid if aid is not None else subject, aid)
        groups.setdefault(key, []).append((seq, event_type, body))
    done = [
        await _redact_group(chain, subject, aid, items, cutoff=cutoff, now=now, dry_run=dry_run)
        for (subject, aid), items in groups.items()
    ]
    last = found[-1]
    return done, (str(last[0]), int(last[1]))


async def _redact_group(
    chain: Chain,
    subject: str,
    aid: str | None,
    items: list[tuple[int, str, str]],
    *,
    cutoff: str,
    now: float,
    dry_run: bool,
) -> Redaction:
    cur = chain.cur
    rows = {"activations": 0, "decisions": 0, "acks": 0}
    recordings: set[str] = set()
    for _seq, event_type, body in items:
        if event_type == EventType.ACTIVATION:
            await cur.execute("DELETE FROM decisions WHERE aid = %s", (subject,))
            rows["decisions"] += cur.rowcount
            await cur.execute("DELETE FROM activations WHERE aid = %s", (subject,))
            rows["activations"] += cur.rowcount
        elif event_type == EventType.ACK:
            try:
                ack = ack_from_body(json.loads(body))
            except (ValueError, KeyError, TypeError):
                continue  # verify reports the bad body; nothing to delete by key
            if ack.recording is not None:
                recordings.add(f"{ack.device_id}/{ack.recording}")
            await cur.execute(
                "DELETE FROM acks WHERE aid = %s AND device_id = %s AND status = %s "
                "AND device_ts = %s",
                (ack.aid, ack.device_id, ack.status, ack.device_ts),
            )
            rows["acks"] += cur.rowcount
    seqs = tuple(seq for seq, _t, _b in items)
    await cur.execute("UPDATE records SET body = NULL WHERE seq = ANY(%s)", (list(seqs),))
    seq = None
    if not dry_run:
        entry = redaction_entry(subject, aid, seqs, rows, sorted(recordings), cutoff=cutoff, at=now)
        seq = await chain.append(entry)
    return Redaction(subject, aid, seqs, rows, tuple(sorted(recordings)), seq)
