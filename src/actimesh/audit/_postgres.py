"""An agency's PostgreSQL ledger, read for audit: one read-only snapshot of its schema.

A ``REPEATABLE READ READ ONLY`` transaction sees the chain and the query tables as of
one moment while engines go on appending, as SQLite's read transaction does. Records are
streamed through a server-side cursor, so verifying a long chain does not hold it all in
memory. Nothing here writes: a read-only transaction cannot even make the temporary
table the SQLite snapshot indexes hashes in, so a hash is looked up in ``records``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from actimesh.audit._store import Snapshot
from actimesh.errors import AuditError, LedgerError
from actimesh.ledger import GENESIS_HASH, ActivationRow, DecisionRow, shown_location
from actimesh.ledger.postgres import (
    DECISION_COLUMNS,
    POSITIONS_VERSION,
    SCHEMA_VERSION,
    schema_name,
)

__all__ = ["postgres_snapshot"]

Conn = psycopg.Connection[tuple[Any, ...]]

_CONNECT_TIMEOUT_S = 10
#: A statement of audit may read the whole chain: far longer than an engine's.
_STATEMENT_TIMEOUT_MS = 600_000
_names = itertools.count()


_NO_POSITIONS = DECISION_COLUMNS.replace("lat, lon", "NULL, NULL")
_SELECT_DECISIONS = (
    "SELECT {columns} FROM decisions WHERE aid = ? ORDER BY commanded DESC, device_id"
)


def _pg(query: str) -> str:
    return query.replace("?", "%s")


class _PostgresSnapshot:
    def __init__(self, conn: Conn, shown: str, version: int) -> None:
        self._conn = conn
        self.shown = shown
        # A ledger not yet upgraded (audit only reads) has no positions: NULL.
        columns = DECISION_COLUMNS if version >= POSITIONS_VERSION else _NO_POSITIONS
        self._select_decisions = _SELECT_DECISIONS.format(columns=columns)

    def rows(self, query: str, args: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        # A named (server-side) cursor: rows arrive in batches, never all at once.
        with self._conn.cursor(name=f"audit_{next(_names)}") as cur:
            cur.itersize = 2000
            cur.execute(_pg(query), args)
            yield from cur

    def one(self, query: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._conn.cursor() as cur:
            cur.execute(_pg(query), args)
            return cur.fetchone()

    def seq_of_hash(self, digest: str) -> int | None:
        if digest == GENESIS_HASH:
            return 0
        found = self.one("SELECT seq FROM records WHERE hash = ? ORDER BY seq LIMIT 1", (digest,))
        return None if found is None else int(found[0])

    def activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        found = self.one(
            "SELECT aid, src, eid, type, event_ts, received_ts, decided_ts, lat, lon, acc, "
            "position_source, radius_m, pre_roll_s, rule, initiated_by, engine "
            "FROM activations WHERE aid = ?",
            (aid,),
        )
        if found is None:
            return None
        values = list(found)
        values[13] = json.loads(values[13])
        decisions = [
            DecisionRow(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9])
            for r in self.rows(
                self._select_decisions,
                (aid,),
            )
        ]
        return ActivationRow(*values), decisions


@contextlib.contextmanager
def postgres_snapshot(url: str, agency: str) -> Iterator[Snapshot]:
    """The ledger of ``agency`` in the database at ``url``, read-only, as of one moment."""
    shown = f"{shown_location(url)} (agency {agency})"
    try:
        schema = schema_name(agency)
    except LedgerError as exc:
        raise AuditError(str(exc)) from exc
    try:
        conn: Conn = psycopg.connect(
            url,
            connect_timeout=_CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}",
            application_name=f"actimesh-audit/{agency}",
        )
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
    except psycopg.Error as exc:
        raise AuditError(f"cannot connect to the ledger at {shown}: {_line(exc)}") from exc
    try:
        with conn:
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            version = _check_version(conn, shown)
            yield _PostgresSnapshot(conn, shown, version)
            conn.rollback()  # read only: nothing to commit
    except psycopg.Error as exc:
        raise AuditError(f"{shown} is not a readable actimesh ledger: {_line(exc)}") from exc
    finally:
        conn.close()


def _check_version(conn: Conn, shown: str) -> int:
    try:
        found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except psycopg.errors.UndefinedTable:
        raise AuditError(
            f"no ledger at {shown}: check the [ledger] url and the agency, or start the "
            "engine once to create it"
        ) from None
    version = 0 if found is None or found[0] is None else int(found[0])
    if version > SCHEMA_VERSION:
        raise AuditError(
            f"the ledger at {shown} has schema {version}, newer than this actimesh "
            f"({SCHEMA_VERSION}); use a newer actimesh"
        )
    return version


def _line(exc: BaseException) -> str:
    """One line about ``exc`` (libpq's messages span several)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
