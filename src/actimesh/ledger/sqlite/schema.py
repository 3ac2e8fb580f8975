"""The SQLite ledger's tables, and the reads that other tools share.

``records`` is the hash chain (see :mod:`actimesh.ledger.chain`); ``activations``,
``decisions``, ``acks`` and ``case_links`` index it for queries. ``PRAGMA user_version``
says which schema a file has: 0 is a ledger from before the chain, which opening it
upgrades (see :meth:`SqliteLedger`).
"""

from __future__ import annotations

import json
import sqlite3

from actimesh.ledger.chain import GENESIS_HASH
from actimesh.ledger.rows import AckRow, ActivationRow, DecisionRow, Entry

__all__ = [
    "ACKS_UNIQUE",
    "DECISION_COLUMNS",
    "INSERT_DECISION",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_ACKS",
    "SELECT_HEAD",
    "add_positions",
    "append_record",
    "read_acks",
    "read_activation",
]

#: ``PRAGMA user_version`` of a ledger with the chain. 0 is a ledger from before it;
#: 1 one whose decision rows have no camera position (``lat``/``lon``).
SCHEMA_VERSION = 2
#: The first schema whose decision rows hold the camera's position.
POSITIONS_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS activations (
    aid             TEXT PRIMARY KEY,
    src             TEXT NOT NULL,
    eid             TEXT NOT NULL,
    type            TEXT NOT NULL,
    event_ts        REAL NOT NULL,
    received_ts     REAL NOT NULL,
    decided_ts      REAL NOT NULL,
    lat             REAL,
    lon             REAL,
    acc             REAL,
    position_source TEXT NOT NULL,
    radius_m        REAL NOT NULL,
    pre_roll_s      REAL NOT NULL,
    rule            TEXT NOT NULL,
    initiated_by    TEXT,
    engine          TEXT NOT NULL,
    UNIQUE (src, eid)
);
CREATE INDEX IF NOT EXISTS activations_by_time ON activations (event_ts);
CREATE TABLE IF NOT EXISTS decisions (
    aid         TEXT NOT NULL REFERENCES activations (aid),
    device_id   TEXT NOT NULL,
    device_kind TEXT,
    commanded   INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    distance_m  REAL,
    margin_m    REAL,
    fix_age_s   REAL,
    acc_m       REAL,
    lat         REAL,
    lon         REAL,
    PRIMARY KEY (aid, device_id)
);
CREATE INDEX IF NOT EXISTS decisions_by_device ON decisions (device_id);
CREATE TABLE IF NOT EXISTS acks (
    aid         TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    status      TEXT NOT NULL,
    pre_cov_s   REAL NOT NULL,
    recording   TEXT,
    device_ts   REAL NOT NULL,
    received_ts REAL NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS acks_by_activation ON acks (aid, device_id);
CREATE INDEX IF NOT EXISTS acks_by_recording ON acks (device_id, recording)
    WHERE recording IS NOT NULL;
CREATE TABLE IF NOT EXISTS case_links (
    case_id   TEXT NOT NULL,
    aid       TEXT NOT NULL,
    linked_by TEXT NOT NULL,
    linked_ts REAL NOT NULL,
    PRIMARY KEY (case_id, aid)
);
CREATE INDEX IF NOT EXISTS case_links_by_aid ON case_links (aid);
CREATE TABLE IF NOT EXISTS records (
    seq         INTEGER PRIMARY KEY,
    time        TEXT NOT NULL,
    component   TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    subject     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    body        TEXT,
    body_sha256 TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    aid         TEXT
);
CREATE INDEX IF NOT EXISTS records_by_aid ON records (aid, event_type) WHERE aid IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_to_retain ON records (time)
    WHERE body IS NOT NULL
    AND event_type NOT IN ('case_link', 'retention_delete', 'ledger_import');
-- Merged triggers have no row of their own: dedupe after a restart finds them here.
CREATE INDEX IF NOT EXISTS records_merged ON records (seq) WHERE event_type = 'merge'
"""
# Built after old duplicates are removed (a ledger from before the chain may have some).
ACKS_UNIQUE = (
    "CREATE UNIQUE INDEX IF NOT EXISTS acks_once ON acks (aid, device_id, status, device_ts)"
)
#: The columns of a decision row, in :class:`DecisionRow`'s order.
DECISION_COLUMNS = (
    "device_id, device_kind, commanded, reason, distance_m, margin_m, fix_age_s, acc_m, lat, lon"
)
_NO_POSITIONS = DECISION_COLUMNS.replace("lat, lon", "NULL, NULL")
_ORDERED = "FROM decisions WHERE aid = ? ORDER BY commanded DESC, device_id"
_SELECT_DECISIONS = f"SELECT {DECISION_COLUMNS} {_ORDERED}"
_SELECT_OLD_DECISIONS = f"SELECT {_NO_POSITIONS} {_ORDERED}"
#: Insert one decision row of an activation.
INSERT_DECISION = (
    "INSERT INTO decisions (aid, device_id, device_kind, commanded, reason, distance_m, "
    "margin_m, fix_age_s, acc_m, lat, lon) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_HEAD = "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"
SELECT_ACKS = (
    "SELECT aid, device_id, status, pre_cov_s, recording, device_ts, received_ts, detail FROM acks"
)


def add_positions(db: sqlite3.Connection) -> None:
    """Give the decision rows of an older ledger their position columns (NULL for the
    rows already there); the caller holds the write lock."""
    have = {r[1] for r in db.execute("PRAGMA table_info(decisions)")}
    for column in ("lat", "lon"):
        if column not in have:
            db.execute(f"ALTER TABLE decisions ADD COLUMN {column} REAL")


def _select_decisions(db: sqlite3.Connection) -> str:
    """The decision rows of an activation; a ledger not yet upgraded (read only, by the
    audit) reads NULL for the positions it does not have."""
    if int(db.execute("PRAGMA user_version").fetchone()[0]) >= POSITIONS_VERSION:
        return _SELECT_DECISIONS
    return _SELECT_OLD_DECISIONS


def read_activation(
    db: sqlite3.Connection, aid: str
) -> tuple[ActivationRow, list[DecisionRow]] | None:
    """One activation and its decisions from the query tables of an open connection."""
    found = db.execute(
        "SELECT aid, src, eid, type, event_ts, received_ts, decided_ts, lat, lon, acc, "
        "position_source, radius_m, pre_roll_s, rule, initiated_by, engine "
        "FROM activations WHERE aid = ?",
        (aid,),
    ).fetchone()
    if found is None:
        return None
    values = list(found)
    values[13] = json.loads(values[13])
    row = ActivationRow(*values)
    decisions = [
        DecisionRow(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9])
        for r in db.execute(_select_decisions(db), (aid,))
    ]
    return row, decisions


def read_acks(db: sqlite3.Connection, aid: str | None) -> list[AckRow]:
    """The acks of ``aid`` by time received, or (None) every ack in the order written."""
    if aid is None:
        cur = db.execute(f"{SELECT_ACKS} ORDER BY received_ts, rowid")
    else:
        cur = db.execute(f"{SELECT_ACKS} WHERE aid = ? ORDER BY received_ts", (aid,))
    return [AckRow(*r) for r in cur]


def append_record(db: sqlite3.Connection, entry: Entry) -> int:
    """Append one record; the caller holds the write lock (``BEGIN IMMEDIATE``)."""
    last = db.execute(SELECT_HEAD).fetchone()
    prev_seq, prev_hash = (0, GENESIS_HASH) if last is None else (int(last[0]), str(last[1]))
    record = entry.after(prev_seq, prev_hash)
    db.execute(
        "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.seq,
            record.time,
            record.component,
            record.event_type,
            record.subject,
            record.outcome,
            record.body,
            record.body_sha256,
            record.prev_hash,
            record.hash,
            entry.aid,
        ),
    )
    return record.seq
