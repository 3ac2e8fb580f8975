"""The PostgreSQL ledger's tables: one schema per agency, so one hash chain per agency.

An agency's ledger is the schema ``am_<agency id>`` of the database: its own ``records``
chain and the query tables that index it (``activations``, ``decisions``, ``acks``,
``case_links``), the same as the SQLite file's, with PostgreSQL types. Bodies are
``TEXT``, never ``JSONB``: the canonical JSON text is what the chain hashes, and JSONB
would store a re-encoding of it; queries that need a field cast to ``jsonb``. ``records.time`` is
collated ``"C"``: the chain's time text orders by its bytes, as in SQLite, whatever the
database's locale. The table ``schema_version`` plays the part of SQLite's ``PRAGMA user_version``.

Every write to an agency's chain holds the transaction-level advisory lock
:func:`lock_key` names. Its key is a digest of the schema name, so engines on any host
agree on it without a table of keys; two agencies whose keys collided would only take
turns, never fork a chain.
"""

from __future__ import annotations

import hashlib

from actimesh.broker.topics import is_identifier
from actimesh.errors import LedgerError

__all__ = [
    "DECISION_COLUMNS",
    "INSERT_DECISION",
    "POSITIONS_VERSION",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_ACKS",
    "SELECT_DECISIONS",
    "SELECT_HEAD",
    "lock_key",
    "schema_name",
]

#: The row of ``schema_version`` of an agency's schema this actimesh writes (1: decision
#: rows without the camera's position).
SCHEMA_VERSION = 2
#: The first schema whose decision rows hold the camera's position.
POSITIONS_VERSION = 2
#: PostgreSQL truncates longer names (NAMEDATALEN - 1 bytes), which could make two
#: agencies share one schema; such names are refused instead.
_MAX_NAME = 63
_PREFIX = "am_"

#: Run in the agency's schema (``search_path``), statement by statement.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS activations (
    aid             TEXT PRIMARY KEY,
    src             TEXT NOT NULL,
    eid             TEXT NOT NULL,
    type            TEXT NOT NULL,
    event_ts        DOUBLE PRECISION NOT NULL,
    received_ts     DOUBLE PRECISION NOT NULL,
    decided_ts      DOUBLE PRECISION NOT NULL,
    lat             DOUBLE PRECISION,
    lon             DOUBLE PRECISION,
    acc             DOUBLE PRECISION,
    position_source TEXT NOT NULL,
    radius_m        DOUBLE PRECISION NOT NULL,
    pre_roll_s      DOUBLE PRECISION NOT NULL,
    rule            TEXT NOT NULL,
    initiated_by    TEXT,
    engine          TEXT NOT NULL,
    UNIQUE (src, eid)
)""",
    "CREATE INDEX IF NOT EXISTS activations_by_time ON activations (event_ts)",
    """CREATE TABLE IF NOT EXISTS decisions (
    aid         TEXT NOT NULL REFERENCES activations (aid),
    device_id   TEXT NOT NULL,
    device_kind TEXT,
    commanded   BOOLEAN NOT NULL,
    reason      TEXT NOT NULL,
    distance_m  DOUBLE PRECISION,
    margin_m    DOUBLE PRECISION,
    fix_age_s   DOUBLE PRECISION,
    acc_m       DOUBLE PRECISION,
    lat         DOUBLE PRECISION,
    lon         DOUBLE PRECISION,
    PRIMARY KEY (aid, device_id)
)""",
    # Schema 1 had no positions: its rows keep NULL, as their records never had one.
    "ALTER TABLE decisions ADD COLUMN IF NOT EXISTS lat DOUBLE PRECISION",
    "ALTER TABLE decisions ADD COLUMN IF NOT EXISTS lon DOUBLE PRECISION",
    "CREATE INDEX IF NOT EXISTS decisions_by_device ON decisions (device_id)",
    # id: the insertion order SQLite gets from rowid.
    """CREATE TABLE IF NOT EXISTS acks (
    id          BIGSERIAL PRIMARY KEY,
    aid         TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    status      TEXT NOT NULL,
    pre_cov_s   DOUBLE PRECISION NOT NULL,
    recording   TEXT,
    device_ts   DOUBLE PRECISION NOT NULL,
    received_ts DOUBLE PRECISION NOT NULL,
    detail      TEXT,
    UNIQUE (aid, device_id, status, device_ts)
)""",
    "CREATE INDEX IF NOT EXISTS acks_by_recording ON acks (device_id, recording) "
    "WHERE recording IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS case_links (
    case_id   TEXT NOT NULL,
    aid       TEXT NOT NULL,
    linked_by TEXT NOT NULL,
    linked_ts DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (case_id, aid)
)""",
    "CREATE INDEX IF NOT EXISTS case_links_by_aid ON case_links (aid)",
    """CREATE TABLE IF NOT EXISTS records (
    seq         BIGINT PRIMARY KEY,
    time        TEXT COLLATE "C" NOT NULL,
    component   TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    subject     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    body        TEXT,
    body_sha256 TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    aid         TEXT
)""",
    "CREATE INDEX IF NOT EXISTS records_by_aid ON records (aid, event_type) WHERE aid IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS records_by_type ON records (event_type, subject)",
    "CREATE INDEX IF NOT EXISTS records_to_retain ON records (time, seq) "
    "WHERE body IS NOT NULL "
    "AND event_type NOT IN ('case_link', 'retention_delete', 'ledger_import')",
    # Merged triggers have no row of their own: dedupe after a restart finds them here.
    "CREATE INDEX IF NOT EXISTS records_merged ON records "
    "((body::jsonb ->> 'src'), (body::jsonb ->> 'eid')) WHERE event_type = 'merge'",
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
)
#: The columns of a decision row, in ``DecisionRow``'s order.
DECISION_COLUMNS = (
    "device_id, device_kind, commanded, reason, distance_m, margin_m, fix_age_s, acc_m, lat, lon"
)
_ORDERED = "FROM decisions WHERE aid = %s ORDER BY commanded DESC, device_id"
#: The decision rows of an activation, commanded first.
SELECT_DECISIONS = f"SELECT {DECISION_COLUMNS} {_ORDERED}"
#: Insert one decision row of an activation.
INSERT_DECISION = (
    "INSERT INTO decisions (aid, device_id, device_kind, commanded, reason, distance_m, "
    "margin_m, fix_age_s, acc_m, lat, lon) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
SELECT_HEAD = "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"
SELECT_ACKS = (
    "SELECT aid, device_id, status, pre_cov_s, recording, device_ts, received_ts, detail FROM acks"
)


def schema_name(agency: str) -> str:
    """The schema that holds ``agency``'s ledger (not yet quoted)."""
    if not is_identifier(agency):
        raise LedgerError(
            f"agency id {agency!r} must be letters, digits, '.', '_' or '-' (starting with a "
            "letter or digit); check the [mesh] agency setting"
        )
    name = _PREFIX + agency
    if len(name) > _MAX_NAME:
        raise LedgerError(
            f"agency id {agency!r} is too long for a PostgreSQL ledger (at most "
            f"{_MAX_NAME - len(_PREFIX)} characters); use a shorter agency id"
        )
    return name


def lock_key(schema: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of the chain in ``schema``."""
    digest = hashlib.sha256(f"actimesh.ledger:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
