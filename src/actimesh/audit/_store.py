"""Reading a ledger for audit: read-only, one consistent snapshot, records as stored.

The checks of :mod:`._verify` and :mod:`._export` are written once, against
:class:`Snapshot`; a SQLite file and an agency's PostgreSQL schema each give one. Their
queries use ``?`` for parameters and only SQL both stores speak; the PostgreSQL snapshot
turns ``?`` into psycopg's ``%s``.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from actimesh.errors import AuditError
from actimesh.ledger import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    ActivationRow,
    ChainRecord,
    DecisionRow,
    Head,
    is_database_url,
    read_activation,
)

__all__ = [
    "SELECT_RECORDS",
    "Snapshot",
    "as_text",
    "parse_head",
    "read_head",
    "record",
    "snapshot",
]

#: Every column of ``records`` in ChainRecord order, then ``aid``.
SELECT_RECORDS = (
    "SELECT seq, time, component, event_type, subject, outcome, body, body_sha256, "
    "prev_hash, hash, aid FROM records"
)
_HEAD = re.compile(r"^(\d+):([0-9a-f]{64})$")


class Snapshot(Protocol):
    """One consistent, read-only view of a ledger's chain and query tables."""

    #: Where the ledger is, as reports show it (never with a password).
    shown: str

    def rows(self, query: str, args: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of ``query`` (``?`` parameters), streamed."""
        ...

    def one(self, query: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of ``query``, if any."""
        ...

    def seq_of_hash(self, digest: str) -> int | None:
        """The lowest seq whose stored hash is ``digest`` (0 for the genesis hash)."""
        ...

    def activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        """One activation and its decisions from the query tables."""
        ...


class _SqliteSnapshot:
    def __init__(self, db: sqlite3.Connection, shown: str) -> None:
        self._db = db
        self.shown = shown
        self._hashes_built = False

    def rows(self, query: str, args: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        yield from self._db.execute(query, args)

    def one(self, query: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        found: tuple[Any, ...] | None = self._db.execute(query, args).fetchone()
        return found

    def seq_of_hash(self, digest: str) -> int | None:
        if digest == GENESIS_HASH:
            return 0
        if not self._hashes_built:
            # Built only once a link is found broken. A temporary table lives outside
            # the read-only ledger file.
            self._db.execute("CREATE TEMP TABLE chain_hashes AS SELECT hash, seq FROM records")
            self._db.execute("CREATE INDEX temp.chain_hashes_by_hash ON chain_hashes (hash)")
            self._hashes_built = True
        found = self._db.execute(
            "SELECT seq FROM chain_hashes WHERE hash = ? ORDER BY seq LIMIT 1", (digest,)
        ).fetchone()
        return None if found is None else int(found[0])

    def activation(self, aid: str) -> tuple[ActivationRow, list[DecisionRow]] | None:
        return read_activation(self._db, aid)


@contextlib.contextmanager
def _sqlite_snapshot(path: Path) -> Iterator[Snapshot]:
    """A read-only connection inside one read transaction (one consistent snapshot).

    Engines may go on writing meanwhile (WAL); nothing here can change the file.
    """
    if not path.is_file():
        raise AuditError(
            f"no ledger at {path}; give the --data-dir of an actimesh data directory "
            "or the --ledger file itself"
        )
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open the ledger at {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            raise AuditError(
                f"the ledger at {path} has no hash chain yet (written before it existed); "
                "start this actimesh on it once to chain its rows"
            )
        if version > SCHEMA_VERSION:
            raise AuditError(
                f"the ledger at {path} has schema {version}, newer than this actimesh "
                f"({SCHEMA_VERSION}); use a newer actimesh"
            )
        conn.execute("BEGIN")
        yield _SqliteSnapshot(conn, str(path))
    except sqlite3.Error as exc:
        raise AuditError(f"{path} is not a readable actimesh ledger: {exc}") from exc
    finally:
        conn.close()


@contextlib.contextmanager
def snapshot(location: Path | str, *, agency: str | None = None) -> Iterator[Snapshot]:
    """The ledger at ``location`` read-only, as of one moment.

    A ``postgresql://`` URL is the agency's chain in that database (``agency`` needed);
    any other location is a SQLite file.
    """
    if is_database_url(location):
        if agency is None:
            raise AuditError(
                "a PostgreSQL ledger holds one chain per agency: give the agency (agency = "
                "... in the --config file) with the [ledger] url"
            )
        # Imported here: psycopg loads libpq, which a one-machine deployment never needs.
        from actimesh.audit._postgres import postgres_snapshot  # noqa: PLC0415

        with postgres_snapshot(location, agency) as snap:
            yield snap
        return
    with _sqlite_snapshot(Path(location)) as snap:
        yield snap


def as_text(value: object) -> str:
    """A column as text: a tampered row may hold any SQLite type."""
    return value if isinstance(value, str) else str(value)


def record(row: tuple[Any, ...]) -> tuple[ChainRecord, str | None]:
    """A row of :data:`SELECT_RECORDS` as (the record as stored, its ``aid`` column)."""
    seq, when, component, event_type, subject, outcome, body, body_sha, prev, digest, aid = row
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    chain_record = ChainRecord(
        seq=int(seq),
        time=as_text(when),
        component=as_text(component),
        event_type=as_text(event_type),
        subject=as_text(subject),
        outcome=as_text(outcome),
        body=None if body is None else as_text(body),
        body_sha256=as_text(body_sha),
        prev_hash=as_text(prev),
        hash=as_text(digest),
    )
    return chain_record, None if aid is None else as_text(aid)


def parse_head(text: str) -> Head:
    """``SEQ:HASH`` as printed by ``actimesh audit head``."""
    match = _HEAD.fullmatch(text.strip())
    if match is None:
        raise AuditError(f"{text!r} is not SEQ:HASH as printed by `actimesh audit head`")
    return Head(int(match[1]), match[2])


def read_head(location: Path | str, *, agency: str | None = None) -> Head:
    """The chain's last record, read without opening the ledger for writing."""
    with snapshot(location, agency=agency) as db:
        last = db.one("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")
    return Head(0, GENESIS_HASH) if last is None else Head(int(last[0]), as_text(last[1]))
