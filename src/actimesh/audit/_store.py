"""Reading a ledger for audit: read-only, one consistent snapshot, records as stored."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actimesh.errors import AuditError
from actimesh.ledger import GENESIS_HASH, SCHEMA_VERSION, ChainRecord, Head

__all__ = ["SELECT_RECORDS", "as_text", "parse_head", "read_head", "record", "snapshot"]

#: Every column of ``records`` in ChainRecord order, then ``aid``.
SELECT_RECORDS = (
    "SELECT seq, time, component, event_type, subject, outcome, body, body_sha256, "
    "prev_hash, hash, aid FROM records"
)
_HEAD = re.compile(r"^(\d+):([0-9a-f]{64})$")


@contextlib.contextmanager
def snapshot(path: Path) -> Iterator[sqlite3.Connection]:
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
        yield conn
    except sqlite3.Error as exc:
        raise AuditError(f"{path} is not a readable actimesh ledger: {exc}") from exc
    finally:
        conn.close()


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


def read_head(path: Path) -> Head:
    """The chain's last record, read without opening the ledger for writing."""
    with snapshot(path) as db:
        last = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    return Head(0, GENESIS_HASH) if last is None else Head(int(last[0]), as_text(last[1]))
