"""The ledger in a PostgreSQL database: the store of a cluster, where engines on several
hosts append to one chain per agency.

**Why psycopg 3.** It is maintained as the reference PostgreSQL driver for Python, and it
speaks through libpq, PostgreSQL's own client library: the protocol handling, the
connection string, TLS and its certificate checks are the server project's, not a
re-implementation. One driver also serves both the engine's asyncio code and the
synchronous CLI. asyncpg is faster per query, but a ledger write costs the fsync at
commit, not the driver.

**Concurrent writers.** Every write is one transaction that first takes the agency's
``pg_advisory_xact_lock`` *in a statement of its own*, then reads the chain's head and
inserts its rows and records. Under READ COMMITTED each statement sees what was committed
before it began, so the head is read after the lock is held and is the true head.
Measured here with 120 concurrent appends: taking the lock inside the statement that
reads the head forked the chain 13 times (that statement's snapshot predates the lock),
and SERIALIZABLE without the lock aborted 86 of them. The lock is released at commit or
rollback, and by the server when a client's connection dies.

**Timeouts.** Every await on the network is bounded: ``connect_timeout`` (libpq) for the
connection; ``statement_timeout`` and ``lock_timeout`` (server settings, so the server
itself gives up on a slow statement, and sooner on a lock it waits for, the agency's
advisory lock included);
``idle_in_transaction_session_timeout``, so a writer that froze mid-transaction does not
hold the agency's lock for ever; TCP keepalives and ``tcp_user_timeout`` for a peer that
vanished; and around each whole operation an ``asyncio.timeout``, after which the
connection is dropped and the next operation opens a new one.

One connection per store, used by one operation at a time (an ``asyncio.Lock``): its
calls are short, and the engine's writes are already batched (a group of
acknowledgements is one transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from actimesh.errors import LedgerError, NotCommandedError
from actimesh.ledger.chain import GENESIS_HASH, EventType, format_time
from actimesh.ledger.postgres.retention import redact_batch
from actimesh.ledger.postgres.schema import (
    INSERT_DECISION,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_ACKS,
    SELECT_DECISIONS,
    SELECT_HEAD,
    lock_key,
    schema_name,
)
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

__all__ = ["Chain", "PostgresLedger"]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Cursor = psycopg.AsyncCursor[tuple[Any, ...]]


class Chain:
    """The agency's chain inside one write transaction that holds its advisory lock."""

    def __init__(self, cur: Cursor, head: Head) -> None:
        self.cur = cur
        self.head = head

    @classmethod
    async def locked(cls, cur: Cursor, key: int) -> Chain:
        # Its own statement: the head is read by a later one, whose snapshot is taken
        # once the lock is held (see the module docstring).
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        await cur.execute(SELECT_HEAD)
        last = await cur.fetchone()
        head = Head(0, GENESIS_HASH) if last is None else Head(int(last[0]), str(last[1]))
        return cls(cur, head)

    async def append(self, entry: Entry) -> int:
        """Insert the record of ``entry`` after the head; its ``seq``."""
        record = entry.after(self.head.seq, self.head.hash)
        await self.cur.execute(
            "INSERT INTO records VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
        self.head = Head(record.seq, record.hash)
        return record.seq


class PostgresLedger:
    """The PostgreSQL activation ledger of one agency.

    Use as ``async with PostgresLedger(url, agency="calgary-ps") as ledger``. Its methods
    do what :class:`~actimesh.ledger.Ledger` documents. ``create=False`` (the tools that
    work on an existing ledger) refuses to open an agency whose schema is not there.
    Retention redacts in batches of ``batch`` records, each its own transaction. Rows
    deleted by retention stay in the table files until PostgreSQL vacuums them.
    """

    def __init__(
        self,
        url: str,
        *,
        agency: str,
        create: bool = True,
        connect_timeout_s: float = 10.0,
        statement_timeout_s: float = 10.0,
        operation_timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.agency = agency
        self.create = create
        self.schema = schema_name(agency)
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        #: The bound on a whole operation (several statements), seen from this side.
        self.operation_timeout_s = operation_timeout_s
        self._key = lock_key(self.schema)
        self._lock = asyncio.Lock()
        self._conn: Conn | None = None
        self._open = False

    def __repr__(self) -> str:
        return f"PostgresLedger(agency={self.agency!r})"  # never the URL: it may hold a password

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        async with self._lock:
            await self._connect()
            self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._lock:
            self._open = False
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _connect(self) -> Conn:
        statement_ms = int(self.statement_timeout_s * 1000)
        # lock_timeout below statement_timeout, or the statement timeout always fires
        # first: "lock timeout" then says another writer held the chain too long.
        options = (
            f"-c statement_timeout={statement_ms} -c lock_timeout={statement_ms // 2} "
            f"-c idle_in_transaction_session_timeout={statement_ms * 6}"
        )
        try:
            async with asyncio.timeout(self.connect_timeout_s + 5.0):
                conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    # libpq takes whole seconds, and treats 1 as 2.
                    connect_timeout=max(2, round(self.connect_timeout_s)),
                    options=options,
                    # Names the agency in pg_stat_activity (truncated past 63 bytes).
                    application_name=f"actimesh-ledger/{self.agency}",
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                    tcp_user_timeout=int(self.operation_timeout_s * 1000),
                )
        except (psycopg.Error, TimeoutError) as exc:
            raise LedgerError(
                f"cannot connect to the PostgreSQL ledger of {self.agency}: {_reason(exc)}; "
                "check the [ledger] url and that the server is up"
            ) from exc
        try:
            await self._prepare(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def _prepare(self, conn: Conn) -> None:
        try:
            async with asyncio.timeout(self.operation_timeout_s):
                cur = conn.cursor()
                await cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
                exists = await cur.fetchone() is not None
                await cur.execute(
                    sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
                )
                version = await self._version(cur) if exists else None
                if version == SCHEMA_VERSION:
                    return  # the usual case: no lock needed to open
                if not self.create and version is None:
                    raise LedgerError(
                        f"no ledger for agency {self.agency} in this PostgreSQL database "
                        f"(schema {self.schema} {'is empty' if exists else 'missing'}); "
                        "check the [ledger] url and the agency id"
                    )
                await self._migrate(conn)
        except (psycopg.Error, TimeoutError) as exc:
            raise LedgerError(
                f"cannot prepare the PostgreSQL ledger of {self.agency}: {_reason(exc)}; "
                "check the database user may create schemas and tables"
            ) from exc

    async def _version(self, cur: Cursor) -> int | None:
        """The schema version of the agency's schema (None before its tables exist)."""
        await cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
        found = await cur.fetchone()
        if found is None or not found[0]:
            return None
        await cur.execute("SELECT max(version) FROM schema_version")
        found = await cur.fetchone()
        version = None if found is None else found[0]
        if version is not None and version > SCHEMA_VERSION:
            raise LedgerError(
                f"the PostgreSQL ledger of {self.agency} has schema {version}, newer than "
                f"this actimesh understands ({SCHEMA_VERSION}); upgrade actimesh"
            )
        return None if version is None else int(version)

    async def _migrate(self, conn: Conn) -> None:
        async with conn.transaction():
            cur = conn.cursor()
            # Engines starting together: one creates, the others wait and find it done.
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._key,))
            await cur.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            for statement in SCHEMA:
                await cur.execute(statement)
            version = await self._version(cur)
            if version is None or version < SCHEMA_VERSION:
                await cur.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))

    @contextlib.asynccontextmanager
    async def _session(self, what: str) -> AsyncIterator[Cursor]:
        """The connection for one operation; its errors become ``LedgerError("cannot
        <what>")``. A connection lost or timed out is dropped, and the next operation
        opens a new one."""
        async with self._lock:
            if not self._open:
                raise LedgerError("the ledger is not open")
            conn = self._conn
            if conn is None or conn.closed:
                conn = await self._connect()
            try:
                async with asyncio.timeout(self.operation_timeout_s):
                    yield conn.cursor()
            except BaseException as exc:
                # Lost, timed out, or cancelled in the middle of a statement: a connection
                # not back at rest is not reused.
                if conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
                    await self._drop()
                if isinstance(exc, psycopg.Error | TimeoutError):
                    raise LedgerError(f"cannot {what}: {_reason(exc)}") from exc
                raise

    @contextlib.asynccontextmanager
    async def _write(self, what: str, *, commit: bool = True) -> AsyncIterator[Chain]:
        """One write transaction holding the agency's chain. ``commit=False`` rolls it
        back at the end (a dry run)."""
        async with (
            self._session(what) as cur,
            cur.connection.transaction(force_rollback=not commit),
        ):
            yield await Chain.locked(cur, self._key)

    # ------------------------------------------------------------------ writes
    async def record_activation(self, row: ActivationRow, decisions: Sequence[DecisionRow]) -> bool:
        async with self._write(f"write activation {row.aid}") as chain:
            await chain.cur.execute(
                "INSERT INTO activations VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
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
            if chain.cur.rowcount != 1:
                return False
            await chain.cur.executemany(
                INSERT_DECISION,
                [
                    (
                        row.aid,
                        d.device_id,
                        d.device_kind,
                        d.commanded,
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
            await chain.append(activation_entry(row, decisions))
        return True

    @staticmethod
    async def _insert_ack(cur: Cursor, ack: AckRow) -> bool:
        await cur.execute(
            "INSERT INTO acks (aid, device_id, status, pre_cov_s, recording, device_ts, "
            "received_ts, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
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
    async def _commanded(cur: Cursor, ack: AckRow) -> bool:
        """``ack``'s camera was commanded in its activation (one primary-key lookup)."""
        await cur.execute(
            "SELECT 1 FROM decisions WHERE aid = %s AND device_id = %s AND commanded",
            (ack.aid, ack.device_id),
        )
        return await cur.fetchone() is not None

    async def record_ack(self, ack: AckRow) -> None:
        await self.record_acks([ack])

    async def record_acks(
        self, acks: Sequence[AckRow], *, only_commanded: bool = False
    ) -> AckWrite:
        if not acks:
            return AckWrite(0)
        what = f"write {len(acks)} ack(s), first {acks[0].aid}/{acks[0].device_id}"
        inserted = 0
        refused: list[str] = []
        async with self._write(what) as chain:
            for ack in acks:
                if only_commanded and not await self._commanded(chain.cur, ack):
                    refused.append(ack.device_id)
                    continue
                if await self._insert_ack(chain.cur, ack):
                    await chain.append(ack_entry(ack))
                    inserted += 1
        return AckWrite(inserted, tuple(refused))

    async def record_cancel(
        self, ack: AckRow, by: str, *, only_commanded: bool = False
    ) -> int | None:
        check_cancel(ack, by)
        async with self._write(f"write the false activation {ack.aid}/{ack.device_id}") as chain:
            cur = chain.cur
            if only_commanded and not await self._commanded(cur, ack):
                raise NotCommandedError(
                    f"{ack.device_id} was not commanded in {ack.aid}: its cancel is not recorded"
                )
            if not await self._insert_ack(cur, ack):
                return None  # redelivered: recorded the first time
            await chain.append(ack_entry(ack))
            await cur.execute(
                "SELECT src, eid, type, event_ts FROM activations WHERE aid = %s", (ack.aid,)
            )
            found = await cur.fetchone()
            event = None if found is None else (found[0], found[1], found[2], found[3])
            return await chain.append(false_activation_entry(ack, by, event))

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
        check_event(component, event_type, subject, outcome)
        entry = Entry(
            time.time() if at is None else at, component, event_type, subject, outcome, body
        )
        async with self._write(f"write {event_type} for {subject}") as chain:
            return await chain.append(entry)

    async def link_case(
        self, case_id: str, aid: str, by: str, *, at: float | None = None
    ) -> tuple[int, bool]:
        check_case_id(case_id, by)
        async with self._write(f"link activation {aid} to case {case_id}") as chain:
            cur = chain.cur
            await cur.execute(
                "SELECT seq, body IS NULL FROM records WHERE aid = %s AND event_type = %s "
                "ORDER BY seq LIMIT 1",
                (aid, EventType.ACTIVATION.value),
            )
            found = await cur.fetchone()
            if found is None:
                raise LedgerError(
                    f"no activation {aid!r} in the ledger of {self.agency}; check the id"
                )
            if found[1]:
                raise LedgerError(
                    f"activation {aid!r} was deleted by retention (record {found[0]} redacted); "
                    "it can no longer be linked to a case"
                )
            await cur.execute(
                "SELECT seq FROM records WHERE aid = %s AND event_type = %s AND subject = %s",
                (aid, EventType.CASE_LINK.value, case_id),
            )
            existing = await cur.fetchone()
            if existing is not None:
                return int(existing[0]), False
            now = time.time() if at is None else at
            await cur.execute(
                "INSERT INTO case_links VALUES (%s, %s, %s, %s)", (case_id, aid, by, now)
            )
            return await chain.append(case_link_entry(case_id, aid, by, now)), True

    async def record_retention(self, subject: str, outcome: str, body: Mapping[str, Any]) -> int:
        entry = Entry(
            time.time(), RETENTION_COMPONENT, EventType.RETENTION_DELETE, subject, outcome, body
        )
        async with self._write(f"record the deletion of {subject}") as chain:
            return await chain.append(entry)

    async def redact_expired(
        self, cutoff: float, *, now: float | None = None, dry_run: bool = False, batch: int = 500
    ) -> list[Redaction]:
        cutoff_text = format_time(cutoff)
        at = time.time() if now is None else now
        after: tuple[str, int] | None = ("", 0)
        out: list[Redaction] = []
        while after is not None:
            async with self._write("apply retention", commit=not dry_run) as chain:
                done, after = await redact_batch(
                    chain, cutoff_text, after, limit=batch, now=at, dry_run=dry_run
                )
            out.extend(done)
        return out

    # ------------------------------------------------------------------ reads
    async def _rows(self, what: str, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._session(what) as cur:
            await cur.execute(query, args)
            return await cur.fetchall()

    async def find(self, src: str, eid: str) -> str | None:
        async with self._session(f"find {src}/{eid}") as cur:
            await cur.execute("SELECT aid FROM activations WHERE src = %s AND eid = %s", (src, eid))
            found = await cur.fetchone()
            if found is None:
                await cur.execute(
                    "SELECT subject FROM records WHERE event_type = 'merge' "
                    "AND body::jsonb ->> 'src' = %s AND body::jsonb ->> 'eid' = %s "
                    "ORDER BY seq LIMIT 1",
                    (src, eid),
                )
                found = await cur.fetchone()
        return None if found is None else str(found[0])

    async def recent_events(self, since: float) -> list[tuple[str, str, str]]:
        async with self._session("read recent events") as cur:
            await cur.execute(
                "SELECT src, eid, aid FROM activations WHERE event_ts >= %s", (since,)
            )
            out = [(str(src), str(eid), str(aid)) for src, eid, aid in await cur.fetchall()]
            await cur.execute(
                "SELECT body::jsonb ->> 'src', body::jsonb ->> 'eid', subject FROM records "
                "WHERE event_type = 'merge' AND (body::jsonb ->> 'event_ts')::float8 >= %s",
                (since,),
            )
            out += [(str(src), str(eid), str(aid)) for src, eid, aid in await cur.fetchall()]
        return out

    async def activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        # One transaction: the row and its decisions as of one moment.
        async with self._session(f"read activation {aid}") as cur, cur.connection.transaction():
            await cur.execute(
                "SELECT aid, src, eid, type, event_ts, received_ts, decided_ts, lat, lon, "
                "acc, position_source, radius_m, pre_roll_s, rule, initiated_by, engine "
                "FROM activations WHERE aid = %s",
                (aid,),
            )
            found = await cur.fetchone()
            if found is None:
                return None
            await cur.execute(
                SELECT_DECISIONS,
                (aid,),
            )
            decisions = [DecisionRow(*r) for r in await cur.fetchall()]
        values = list(found)
        values[13] = json.loads(values[13])
        return ActivationRow(*values), decisions

    async def acks(self, aid: str) -> list[AckRow]:
        rows = await self._rows(
            f"read the acks of {aid}",
            f"{SELECT_ACKS} WHERE aid = %s ORDER BY received_ts, id",
            (aid,),
        )
        return [AckRow(*r) for r in rows]

    async def false_activations(self, aid: str | None = None) -> list[FalseActivation]:
        query = "SELECT seq, body FROM records WHERE event_type = %s AND body IS NOT NULL"
        args: tuple[str, ...] = (FALSE_ACTIVATION,)
        if aid is not None:
            query, args = query + " AND aid = %s", (*args, aid)
        out = []
        for seq, text in await self._rows("read false activations", query + " ORDER BY seq", args):
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

    async def activation_ids(self, since: float = 0.0, limit: int = 1000) -> list[str]:
        rows = await self._rows(
            "read activation ids",
            "SELECT aid FROM activations WHERE event_ts >= %s ORDER BY event_ts, aid LIMIT %s",
            (since, limit),
        )
        return [str(r[0]) for r in rows]

    async def head(self) -> Head:
        rows = await self._rows("read the head of the chain", SELECT_HEAD)
        return Head(0, GENESIS_HASH) if not rows else Head(int(rows[0][0]), str(rows[0][1]))

    async def activation_states(self, aids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        async with self._session("read activation states") as cur:
            for aid in aids:
                await cur.execute("SELECT 1 FROM case_links WHERE aid = %s LIMIT 1", (aid,))
                if await cur.fetchone() is not None:
                    out[aid] = "linked"
                    continue
                await cur.execute(
                    "SELECT body IS NULL FROM records WHERE aid = %s AND event_type = %s LIMIT 1",
                    (aid, EventType.ACTIVATION.value),
                )
                found = await cur.fetchone()
                out[aid] = "unknown" if found is None else "redacted" if found[0] else "kept"
        return out

    async def recording_aids(self, device_id: str, recording_id: str) -> set[str]:
        rows = await self._rows(
            f"read the activations of recording {device_id}/{recording_id}",
            "SELECT DISTINCT aid FROM acks WHERE device_id = %s AND recording = %s",
            (device_id, recording_id),
        )
        return {str(r[0]) for r in rows}

    async def retention_recorded(self, subject: str) -> bool:
        rows = await self._rows(
            f"read the retention of {subject}",
            "SELECT 1 FROM records WHERE event_type = %s AND subject = %s LIMIT 1",
            (EventType.RETENTION_DELETE.value, subject),
        )
        return bool(rows)


def _reason(exc: BaseException) -> str:
    """One line about ``exc`` (libpq's messages span several)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
