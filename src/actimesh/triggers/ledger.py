"""The activation ledger: what the engine did about each trigger, and why, in SQLite.

For each activation it keeps the event (who raised it, when, where, which rule), every
camera commanded and why (paired, or its distance and the margin allowed), every camera
considered and left out and why (too far, stale fix, offline), and each camera's
acknowledgement as it arrives. Rows are only ever inserted: a decision, once written, is
not updated, so the table reads as the history of what happened.

The connection lives on one worker thread (SQLite connections are not shared across
threads); the async methods hand work to it so the event loop never blocks on disk.
The database runs in WAL mode with ``synchronous=FULL``: an activation that was reported
written survives a power cut.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from actimesh.errors import LedgerError

__all__ = ["AckRow", "ActivationRow", "DecisionRow", "Ledger"]

T = TypeVar("T")

_SCHEMA = """
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
"""


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One camera considered for an activation."""

    device_id: str
    device_kind: str | None
    commanded: bool
    reason: str
    distance_m: float | None = None
    margin_m: float | None = None
    fix_age_s: float | None = None
    acc_m: float | None = None


@dataclass(frozen=True, slots=True)
class ActivationRow:
    """One activation: the event and the rule applied."""

    aid: str
    src: str
    eid: str
    type: str
    event_ts: float
    received_ts: float
    decided_ts: float
    lat: float | None
    lon: float | None
    acc: float | None
    position_source: str
    radius_m: float
    pre_roll_s: float
    rule: dict[str, Any]
    initiated_by: str | None
    engine: str


@dataclass(frozen=True, slots=True)
class AckRow:
    """A camera's acknowledgement of an activation command."""

    aid: str
    device_id: str
    status: str
    pre_cov_s: float
    recording: str | None
    device_ts: float
    received_ts: float
    detail: str | None = None


class Ledger:
    """The SQLite activation ledger. Use as ``async with Ledger(path) as ledger``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle
    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(
                f"cannot open the ledger at {self.path}: {exc}; check the --data-dir "
                "is writable and not used by another actimesh"
            ) from exc
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def __aenter__(self) -> Ledger:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._run(self._close)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise LedgerError("the ledger is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError("the ledger is not open")
        return self._conn

    # ------------------------------------------------------------------ writes
    def _write_activation(self, row: ActivationRow, decisions: Sequence[DecisionRow]) -> bool:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "INSERT OR IGNORE INTO activations VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.aid, row.src, row.eid, row.type, row.event_ts, row.received_ts,
                    row.decided_ts, row.lat, row.lon, row.acc, row.position_source,
                    row.radius_m, row.pre_roll_s, json.dumps(row.rule, sort_keys=True),
                    row.initiated_by, row.engine,
                ),
            )  # fmt: skip
            inserted = cur.rowcount == 1
            if inserted:
                db.executemany(
                    "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            row.aid, d.device_id, d.device_kind, int(d.commanded), d.reason,
                            d.distance_m, d.margin_m, d.fix_age_s, d.acc_m,
                        )
                        for d in decisions
                    ],
                )  # fmt: skip
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise LedgerError(f"cannot write activation {row.aid}: {exc}") from exc
        return inserted

    async def record_activation(self, row: ActivationRow, decisions: Sequence[DecisionRow]) -> bool:
        """Write an activation and its decisions atomically. False if it was already there."""
        return await self._run(lambda: self._write_activation(row, decisions))

    def _write_ack(self, ack: AckRow) -> None:
        try:
            self._db.execute(
                "INSERT INTO acks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ack.aid, ack.device_id, ack.status, ack.pre_cov_s, ack.recording,
                    ack.device_ts, ack.received_ts, ack.detail,
                ),
            )  # fmt: skip
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write ack {ack.aid}/{ack.device_id}: {exc}") from exc

    async def record_ack(self, ack: AckRow) -> None:
        """Append a camera's acknowledgement."""
        await self._run(lambda: self._write_ack(ack))

    # ------------------------------------------------------------------ reads
    def _find(self, src: str, eid: str) -> str | None:
        cur = self._db.execute("SELECT aid FROM activations WHERE src = ? AND eid = ?", (src, eid))
        found = cur.fetchone()
        return None if found is None else str(found[0])

    async def find(self, src: str, eid: str) -> str | None:
        """The activation id already recorded for this device's event, if any."""
        return await self._run(lambda: self._find(src, eid))

    def _recent_events(self, since: float) -> list[tuple[str, str]]:
        cur = self._db.execute("SELECT src, eid FROM activations WHERE event_ts >= ?", (since,))
        return [(str(src), str(eid)) for src, eid in cur]

    async def recent_events(self, since: float) -> list[tuple[str, str]]:
        """(source, event id) of activations with event time at or after ``since``."""
        return await self._run(lambda: self._recent_events(since))

    def _activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        db = self._db
        found = db.execute("SELECT * FROM activations WHERE aid = ?", (aid,)).fetchone()
        if found is None:
            return None
        values = list(found)
        values[13] = json.loads(values[13])
        row = ActivationRow(*values)
        decisions = [
            DecisionRow(r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8])
            for r in db.execute(
                "SELECT * FROM decisions WHERE aid = ? ORDER BY commanded DESC, device_id", (aid,)
            )
        ]
        return row, decisions

    async def activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        """One activation with its decisions."""
        return await self._run(lambda: self._activation(aid))

    def _acks(self, aid: str) -> list[AckRow]:
        return [
            AckRow(*r)
            for r in self._db.execute(
                "SELECT * FROM acks WHERE aid = ? ORDER BY received_ts", (aid,)
            )
        ]

    async def acks(self, aid: str) -> list[AckRow]:
        """Every acknowledgement received for an activation, oldest first."""
        return await self._run(lambda: self._acks(aid))

    def _activation_ids(self, since: float, limit: int) -> list[str]:
        return [
            str(r[0])
            for r in self._db.execute(
                "SELECT aid FROM activations WHERE event_ts >= ? ORDER BY event_ts LIMIT ?",
                (since, limit),
            )
        ]

    async def activation_ids(self, since: float = 0.0, limit: int = 1000) -> list[str]:
        """Activation ids with event time at or after ``since``, oldest first."""
        return await self._run(lambda: self._activation_ids(since, limit))
