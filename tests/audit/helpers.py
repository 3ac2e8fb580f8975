"""Ledgers to audit, written through the real Ledger; tampering done directly in SQLite.

``chain_hash`` re-implements the documented encoding independently of
:mod:`actimesh.ledger.chain`, so the tests check the documentation as well as the code.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from actimesh.devices.media import Segment
from actimesh.devices.recorder import ActivationRecord, RecordingStore
from actimesh.ledger import AckRow, ActivationRow, DecisionRow, open_ledger

T0 = 1_600_000_000.0  # September 2020: long past any retention period
DAY = 86_400.0
NOW = T0 + 500 * DAY
RECENT = NOW - 10 * DAY

DECISIONS = [
    DecisionRow("bwc1", "body_cam", True, "paired"),
    DecisionRow("bwc2", "body_cam", True, "proximity", 9.0, 0.0, 0.5, 0.0),
    DecisionRow("bwc3", "body_cam", False, "too_far", 9.3, 0.0, 0.5, 0.0),
]


def activation(n: int, ts: float = T0, src: str = "cew1") -> ActivationRow:
    return ActivationRow(
        aid=f"act-{n}",
        src=src,
        eid=f"e{n}",
        type="taser_draw",
        event_ts=ts + n,
        received_ts=ts + n + 0.01,
        decided_ts=ts + n + 0.02,
        lat=51.0,
        lon=-114.0,
        acc=3.0,
        position_source="event",
        radius_m=9.144,
        pre_roll_s=30.0,
        rule={"event_type": "taser_draw", "radius_m": 9.144},
        initiated_by=None,
        engine="engine-1",
    )


def ack(n: int, ts: float = T0, device: str = "bwc1") -> AckRow:
    return AckRow(f"act-{n}", device, "recording", 30.0, f"rec-{n}", ts + n + 1.0, ts + n + 1.1)


async def write_activations(
    location: Path | str, numbers: range, ts: float = T0, *, agency: str | None = None
) -> None:
    """Activation n is seq 2n-1 and its ack seq 2n when numbering starts at 1 (in the
    SQLite file at ``location``, or ``agency``'s chain at a PostgreSQL URL)."""
    async with open_ledger(location, agency=agency) as ledger:
        for n in numbers:
            assert await ledger.record_activation(activation(n, ts), DECISIONS)
            await ledger.record_ack(ack(n, ts))


def chain_hash(
    prev: str,
    seq: int,
    time: str,
    component: str,
    kind: str,
    subject: str,
    outcome: str,
    body_sha: str,
) -> str:
    """The record hash as docs/OPERATIONS.md describes it (netstrings, then SHA-256)."""
    fields = [
        "actimesh.ledger.v1",
        prev,
        str(seq),
        time,
        component,
        kind,
        subject,
        outcome,
        body_sha,
    ]
    data = b"".join(b"%d:%s," % (len(f.encode()), f.encode()) for f in fields)
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def tamper(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the ledger file, committed on exit: the attacker's tool."""
    db = sqlite3.connect(path)
    try:
        yield db
        db.commit()
    finally:
        db.close()


def rehash(db: sqlite3.Connection, start: int) -> None:
    """Recompute body hashes and the chain from ``start`` on, as a careful forger would."""
    prev_row = db.execute("SELECT hash FROM records WHERE seq = ?", (start - 1,)).fetchone()
    prev = prev_row[0] if prev_row else "0" * 64
    rows = db.execute(
        "SELECT seq, time, component, event_type, subject, outcome, body, body_sha256 "
        "FROM records WHERE seq >= ? ORDER BY seq",
        (start,),
    ).fetchall()
    for seq, time, component, kind, subject, outcome, body, stored_sha in rows:
        body_sha = stored_sha if body is None else hashlib.sha256(body.encode()).hexdigest()
        digest = chain_hash(prev, seq, time, component, kind, subject, outcome, body_sha)
        db.execute(
            "UPDATE records SET body_sha256 = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (body_sha, prev, digest, seq),
        )
        prev = digest


def record_recording(
    root: Path, device: str, recording: str, aids: list[str], start: float
) -> Path:
    """A stopped recording with one segment, attached to ``aids``."""
    store = RecordingStore(root, durable=False)
    rec = store.open(recording, device, start)
    for aid in aids:
        rec.attach(
            ActivationRecord(aid, "e", "taser_draw", "cew1", start, 30.0, 30.0, start),
            [Segment.of(0, start, start + 2.0, b"video")],
        )
    rec.stop(start + 60.0)
    return rec.path
