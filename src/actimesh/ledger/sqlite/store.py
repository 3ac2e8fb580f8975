"""The ledger in one SQLite file: the store for one machine.

Every write also appends to ``records``, the hash chain of truth (encoding in
:mod:`actimesh.ledger.chain`), **in the same transaction** as the rows it describes. The
tables ``activations``, ``decisions``, ``acks`` and ``case_links`` are indexes of the
chain for queries; ``actimesh audit verify`` checks that they agree with it.
``records.aid`` repeats the body's ``aid`` so that everything about one activation
(including alerts and false activations, whose subject is a camera) is found by one
index; verify checks it against the body too.

Several engine processes may share one ledger file: appends take the write lock with
``BEGIN IMMEDIATE`` (waiting up to ``busy_timeout_s``) and read the chain's head inside
it, so the chain stays contiguous. A redelivered acknowledgement is ignored, and so is
its record.

The connection lives on one worker thread (SQLite connections are not shared across
threads); the async methods hand work to it so the event loop never blocks on disk.
The database runs in WAL mode with ``synchronous=FULL``: an activation that was reported
written survives a power cut. ``secure_delete`` is on, so retention's deletions overwrite
the freed space instead of leaving it readable in the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

from actimesh.errors import LedgerError, NotCommandedError
from actimesh.ledger.chain import GENESIS_HASH, EventType, format_time
from actimesh.ledger.rows import (
    FALSE_ACTIVATION,
    RETENTION_COMPONENT,
    AckRow,
    AckWrite,
    ActivationRow,
    DecisionRow,
    Entry,
    FalseActivation,
    Head,
    Redaction,
    ack_entry,
    activation_entry,
    case_link_entry,
    check_cancel,
    check_case_id,
    check_event,
    false_activation_entry,
)
from actimesh.ledger.sqlite.retention import redact_batch
from actimesh.ledger.sqlite.schema import (
    ACKS_UNIQUE,
    INSERT_DECISION,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_HEAD,
    add_positions,
    append_record,
    read_acks,
    read_activation,
)

__all__ = ["SqliteLedger"]

T = TypeVar("T")

_IMPORT_COMPONENT = "ledger/import"


class SqliteLedger:
    """The SQLite activation ledger. Use as ``async with SqliteLedger(path) as ledger``.

    Its methods do what :class:`~actimesh.ledger.Ledger` documents. Here, a group of
    acknowledgements is one synced transaction, and retention redacts in batches of
    ``batch`` records, each its own transaction, so engines sharing the file are held
    up for one batch at most.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0, create: bool = True) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        #: False for tools that work on an existing ledger (audit): never make an empty one.
        self.create = create
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ lifecycle
    def _open(self) -> None:
        if not self.create and not self.path.is_file():
            raise LedgerError(
                f"no ledger at {self.path}; give the --data-dir of an actimesh data directory "
                "or the --ledger file itself"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(
                f"cannot open the ledger at {self.path}: {exc}; check the --data-dir "
                "is writable and not used by another actimesh"
            ) from exc
        try:
            # First, so that the pragmas below wait for another process too.
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")
            self._conn = conn
            self._migrate()
        except BaseException as exc:
            self._conn = None
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(
                    f"cannot open the ledger at {self.path}: {exc}; check it is an actimesh "
                    "ledger and the disk is writable"
                ) from exc
            raise

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
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

    @contextlib.contextmanager
    def _immediate(self, what: str, *, commit: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; sqlite errors become ``LedgerError("cannot <what>")``.

        ``commit=False`` rolls it back at the end (a dry run).
        """
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT" if commit else "ROLLBACK")
        except BaseException as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"cannot {what}: {exc}") from exc
            raise

    def _migrate(self) -> None:
        if self._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the usual case: no write lock needed to open
        with self._immediate(f"prepare the ledger at {self.path}") as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"the ledger at {self.path} has schema {version}, newer than this "
                    f"actimesh understands ({SCHEMA_VERSION}); upgrade actimesh"
                )
            for statement in SCHEMA.split(";"):
                db.execute(statement)
            # Older decision rows keep NULL positions: their records never had one.
            add_positions(db)
            self._import_unchained(db)
            db.execute(ACKS_UNIQUE)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _import_unchained(self, db: sqlite3.Connection) -> None:
        """Chain the rows of a ledger written before the chain existed (schema 0)."""
        if db.execute("SELECT count(*) FROM records").fetchone()[0]:
            return
        activations = db.execute("SELECT count(*) FROM activations").fetchone()[0]
        acks = db.execute("SELECT count(*) FROM acks").fetchone()[0]
        if not activations and not acks:
            return
        duplicates = db.execute(
            "DELETE FROM acks WHERE rowid NOT IN (SELECT min(rowid) FROM acks "
            "GROUP BY aid, device_id, status, device_ts)"
        ).rowcount
        body = {
            "activations": activations,
            "acks": acks - duplicates,
            "duplicate_acks_removed": duplicates,
            "from_schema": 0,
        }
        append_record(
            db,
            Entry(
                time.time(),
                _IMPORT_COMPONENT,
                EventType.LEDGER_IMPORT,
                self.path.name,
                "imported",
                body,
            ),
        )
        aids = [r[0] for r in db.execute("SELECT aid FROM activations ORDER BY decided_ts, aid")]
        for aid in aids:
            found = self._activation(aid)
            assert found is not None  # read in this same transaction
            self._append_activation(db, *found)
        for ack in self._acks(None):
            self._append_ack(db, ack)

    # ------------------------------------------------------------------ the chain
    def _append_activation(
        self, db: sqlite3.Connection, row: ActivationRow, decisions: Sequence[DecisionRow]
    ) -> int:
        return append_record(db, activation_entry(row, decisions))

    def _append_ack(self, db: sqlite3.Connection, ack: AckRow) -> int:
        return append_record(db, ack_entry(ack))

    # ------------------------------------------------------------------ writes
    def _write_activation(self, row: ActivationRow, decisions: Sequence[DecisionRow]) -> bool:
        with self._immediate(f"write activation {row.aid}") as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO activations VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.aid,
                    row.src,
                    row.eid,
                    row.type,
                    row.event_ts,
                    row.received_ts,
                    row.decided_ts,
                    row.lat,
                    row.lon,
                    row.acc,
                    row.position_source,
                    row.radius_m,
                    row.pre_roll_s,
                    json.dumps(row.rule, sort_keys=True),
                    row.initiated_by,
                    row.engine,
                ),
            )
            inserted = cur.rowcount == 1
            if inserted:
                db.executemany(
                    INSERT_DECISION,
                    [
                        (
                            row.aid,
                            d.device_id,
                            d.device_kind,
                            int(d.commanded),
                            d.reason,
                            d.distance_m,
                            d.margin_m,
                            d.fix_age_s,
                            d.acc_m,
                            d.lat,
                            d.lon,
                        )
                        for d in decisions
                    ],
                )
                self._append_activation(db, row, decisions)
        return inserted

    async def record_activation(self, row: ActivationRow, decisions: Sequence[DecisionRow]) -> bool:
        return await self._run(lambda: self._write_activation(row, decisions))

    def _insert_ack(self, db: sqlite3.Connection, ack: AckRow) -> bool:
        cur = db.execute(
            "INSERT OR IGNORE INTO acks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ack.aid,
                ack.device_id,
                ack.status,
                ack.pre_cov_s,
                ack.recording,
                ack.device_ts,
                ack.received_ts,
                ack.detail,
            ),
        )
        return cur.rowcount == 1

    @staticmethod
    def _commanded(db: sqlite3.Connection, ack: AckRow) -> bool:
        """``ack``'s camera was commanded in its activation (one primary-key lookup)."""
        return (
            db.execute(
                "SELECT 1 FROM decisions WHERE aid = ? AND device_id = ? AND commanded",
                (ack.aid, ack.device_id),
            ).fetchone()
            is not None
        )

    def _write_acks(self, acks: Sequence[AckRow], only_commanded: bool) -> AckWrite:
        what = f"write {len(acks)} ack(s), first {acks[0].aid}/{acks[0].device_id}"
        inserted = 0
        refused: list[str] = []
        with self._immediate(what) as db:
            for ack in acks:
                if only_commanded and not self._commanded(db, ack):
                    refused.append(ack.device_id)
                    continue
                if self._insert_ack(db, ack):
                    self._append_ack(db, ack)
                    inserted += 1
        return AckWrite(inserted, tuple(refused))

    async def record_ack(self, ack: AckRow) -> None:
        await self.record_acks([ack])

    async def record_acks(
        self, acks: Sequence[AckRow], *, only_commanded: bool = False
    ) -> AckWrite:
        if not acks:
            return AckWrite(0)
        rows = list(acks)
        return await self._run(lambda: self._write_acks(rows, only_commanded))

    def _write_cancel(self, ack: AckRow, by: str, only_commanded: bool) -> int | None:
        check_cancel(ack, by)
        with self._immediate(f"write the false activation {ack.aid}/{ack.device_id}") as db:
            if only_commanded and not self._commanded(db, ack):
                raise NotCommandedError(
                    f"{ack.device_id} was not commanded in {ack.aid}: its cancel is not recorded"
                )
            if not self._insert_ack(db, ack):
                return None  # redelivered: recorded the first time
            self._append_ack(db, ack)
            found = db.execute(
                "SELECT src, eid, type, event_ts FROM activations WHERE aid = ?", (ack.aid,)
            ).fetchone()
            return append_record(db, false_activation_entry(ack, by, found))

    async def record_cancel(
        self, ack: AckRow, by: str, *, only_commanded: bool = False
    ) -> int | None:
        return await self._run(lambda: self._write_cancel(ack, by, only_commanded))

    def _write_event(
        self,
        component: str,
        event_type: str,
        subject: str,
        outcome: str,
        body: Mapping[str, Any],
        *,
        at: float | None,
    ) -> int:
        check_event(component, event_type, subject, outcome)
        with self._immediate(f"write {event_type} for {subject}") as db:
            entry = Entry(
                time.time() if at is None else at, component, event_type, subject, outcome, body
            )
            return append_record(db, entry)

    async def record_event(
        self,
        component: str,
        event_type: str,
        subject: str,
        outcome: str,
        body: Mapping[str, Any],
        *,
        at: float | None = None,
    ) -> int:
        return await self._run(
            lambda: self._write_event(component, event_type, subject, outcome, body, at=at)
        )

    def _link_case(self, case_id: str, aid: str, by: str, at: float | None) -> tuple[int, bool]:
        check_case_id(case_id, by)
        with self._immediate(f"link activation {aid} to case {case_id}") as db:
            found = db.execute(
                "SELECT seq, body IS NULL FROM records WHERE aid = ? AND event_type = ? "
                "ORDER BY seq LIMIT 1",
                (aid, EventType.ACTIVATION.value),
            ).fetchone()
            if found is None:
                raise LedgerError(
                    f"no activation {aid!r} in the ledger at {self.path}; check the id"
                )
            if found[1]:
                raise LedgerError(
                    f"activation {aid!r} was deleted by retention (record {found[0]} redacted); "
                    "it can no longer be linked to a case"
                )
            existing = db.execute(
                "SELECT seq FROM records WHERE aid = ? AND event_type = ? AND subject = ?",
                (aid, EventType.CASE_LINK.value, case_id),
            ).fetchone()
            if existing is not None:
                return int(existing[0]), False
            now = time.time() if at is None else at
            db.execute("INSERT INTO case_links VALUES (?, ?, ?, ?)", (case_id, aid, by, now))
            return append_record(db, case_link_entry(case_id, aid, by, now)), True

    async def link_case(
        self, case_id: str, aid: str, by: str, *, at: float | None = None
    ) -> tuple[int, bool]:
        return await self._run(lambda: self._link_case(case_id, aid, by, at))

    def _write_retention(self, subject: str, outcome: str, body: Mapping[str, Any]) -> int:
        with self._immediate(f"record the deletion of {subject}") as db:
            entry = Entry(
                time.time(), RETENTION_COMPONENT, EventType.RETENTION_DELETE, subject, outcome, body
            )
            return append_record(db, entry)

    async def record_retention(self, subject: str, outcome: str, body: Mapping[str, Any]) -> int:
        return await self._run(lambda: self._write_retention(subject, outcome, body))

    # ------------------------------------------------------------------ retention
    def _redact_batch(
        self, cutoff: str, after: tuple[str, int], *, limit: int, now: float, dry_run: bool
    ) -> tuple[list[Redaction], tuple[str, int] | None]:
        with self._immediate("apply retention", commit=not dry_run) as db:
            return redact_batch(db, cutoff, after, limit=limit, now=now, dry_run=dry_run)

    async def redact_expired(
        self, cutoff: float, *, now: float | None = None, dry_run: bool = False, batch: int = 500
    ) -> list[Redaction]:
        cutoff_text = format_time(cutoff)
        at = time.time() if now is None else now
        after: tuple[str, int] | None = ("", 0)
        out: list[Redaction] = []
        while after is not None:
            done, after = await self._run(
                functools.partial(
                    self._redact_batch, cutoff_text, after, limit=batch, now=at, dry_run=dry_run
                )
            )
            out.extend(done)
        if not dry_run and out:
            await self._run(self._checkpoint)
        return out

    def _checkpoint(self) -> None:
        # Old page images of what was deleted stay in the WAL until a checkpoint. Best
        # effort: a reader holding an old snapshot only delays it to the next run.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ------------------------------------------------------------------ reads
    def _find(self, src: str, eid: str) -> str | None:
        db = self._db
        found = db.execute(
            "SELECT aid FROM activations WHERE src = ? AND eid = ?", (src, eid)
        ).fetchone()
        if found is None:
            found = db.execute(
                "SELECT subject FROM records WHERE event_type = 'merge' "
                "AND json_extract(body, '$.src') = ? AND json_extract(body, '$.eid') = ?",
                (src, eid),
            ).fetchone()
        return None if found is None else str(found[0])

    async def find(self, src: str, eid: str) -> str | None:
        return await self._run(lambda: self._find(src, eid))

    def _recent_events(self, since: float) -> list[tuple[str, str, str]]:
        db = self._db
        own = db.execute("SELECT src, eid, aid FROM activations WHERE event_ts >= ?", (since,))
        out = [(str(src), str(eid), str(aid)) for src, eid, aid in own]
        merged = db.execute(
            "SELECT json_extract(body, '$.src'), json_extract(body, '$.eid'), subject "
            "FROM records WHERE event_type = 'merge' "
            "AND json_extract(body, '$.event_ts') >= ?",
            (since,),
        )
        out += [(str(src), str(eid), str(aid)) for src, eid, aid in merged]
        return out

    async def recent_events(self, since: float) -> list[tuple[str, str, str]]:
        return await self._run(lambda: self._recent_events(since))

    def _activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        return read_activation(self._db, aid)

    async def activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        return await self._run(lambda: self._activation(aid))

    def _acks(self, aid: str | None) -> list[AckRow]:
        return read_acks(self._db, aid)

    async def acks(self, aid: str) -> list[AckRow]:
        return await self._run(lambda: self._acks(aid))

    def _false_activations(self, aid: str | None) -> list[FalseActivation]:
        sql = "SELECT seq, body FROM records WHERE event_type = ? AND body IS NOT NULL"
        args: tuple[str, ...] = (FALSE_ACTIVATION,)
        if aid is not None:
            sql, args = sql + " AND aid = ?", (*args, aid)
        out = []
        for seq, text in self._db.execute(sql + " ORDER BY seq", args):
            b = json.loads(text)
            out.append(
                FalseActivation(
                    seq,
                    b["aid"],
                    b["device_id"],
                    b["by"],
                    b["cancelled_ts"],
                    b["received_ts"],
                    b["after_event_s"],
                    b["recording"],
                    b["eid"],
                    b["event_type"],
                    b["detail"],
                )
            )
        return out

    async def false_activations(self, aid: str | None = None) -> list[FalseActivation]:
        return await self._run(lambda: self._false_activations(aid))

    def _activation_ids(self, since: float, limit: int) -> list[str]:
        return [
            str(r[0])
            for r in self._db.execute(
                "SELECT aid FROM activations WHERE event_ts >= ? ORDER BY event_ts LIMIT ?",
                (since, limit),
            )
        ]

    async def activation_ids(self, since: float = 0.0, limit: int = 1000) -> list[str]:
        return await self._run(lambda: self._activation_ids(since, limit))

    def _head(self) -> Head:
        last = self._db.execute(SELECT_HEAD).fetchone()
        return Head(0, GENESIS_HASH) if last is None else Head(int(last[0]), str(last[1]))

    async def head(self) -> Head:
        return await self._run(self._head)

    def _activation_states(self, aids: Sequence[str]) -> dict[str, str]:
        db = self._db
        out: dict[str, str] = {}
        for aid in aids:
            if db.execute("SELECT 1 FROM case_links WHERE aid = ?", (aid,)).fetchone():
                out[aid] = "linked"
                continue
            found = db.execute(
                "SELECT body IS NULL FROM records WHERE aid = ? AND event_type = ? LIMIT 1",
                (aid, EventType.ACTIVATION.value),
            ).fetchone()
            out[aid] = "unknown" if found is None else "redacted" if found[0] else "kept"
        return out

    async def activation_states(self, aids: Sequence[str]) -> dict[str, str]:
        return await self._run(lambda: self._activation_states(aids))

    def _recording_aids(self, device_id: str, recording_id: str) -> set[str]:
        return {
            str(r[0])
            for r in self._db.execute(
                "SELECT DISTINCT aid FROM acks WHERE device_id = ? AND recording = ?",
                (device_id, recording_id),
            )
        }

    async def recording_aids(self, device_id: str, recording_id: str) -> set[str]:
        return await self._run(lambda: self._recording_aids(device_id, recording_id))

    def _retention_recorded(self, subject: str) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM records WHERE event_type = ? AND subject = ? LIMIT 1",
                (EventType.RETENTION_DELETE.value, subject),
            ).fetchone()
            is not None
        )

    async def retention_recorded(self, subject: str) -> bool:
        return await self._run(lambda: self._retention_recorded(subject))
