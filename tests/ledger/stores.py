"""Each ledger store under test, and the chain check every contract test ends with.

A :class:`StoreUnderTest` opens its store as often as a test likes and reads the chain
back as stored, without the store's own code, so that the check is independent of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from actimesh.ledger import GENESIS_HASH, ChainRecord, Ledger, SqliteLedger
from actimesh.ledger.postgres import PostgresLedger, schema_name

_SELECT_RECORDS = f"SELECT {', '.join(ChainRecord.COLUMNS)} FROM records ORDER BY seq"


@dataclass(frozen=True)
class StoreUnderTest:
    kind: str
    open: Callable[..., Ledger]  # open(create=True)
    records: Callable[[], list[ChainRecord]]


def sqlite_store(path: Path) -> StoreUnderTest:
    def records() -> list[ChainRecord]:
        if not path.exists():
            return []  # never opened (or refused to open)
        with sqlite3.connect(path) as db:
            return [ChainRecord(*r) for r in db.execute(_SELECT_RECORDS)]

    def open_(*, create: bool = True) -> Ledger:
        return SqliteLedger(path, create=create)

    return StoreUnderTest("sqlite", open_, records)


def postgres_records(url: str, agency: str) -> list[ChainRecord]:
    """The agency's chain as stored in PostgreSQL."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema_name(agency))))
        try:
            return [ChainRecord(*r) for r in conn.execute(_SELECT_RECORDS).fetchall()]
        except psycopg.errors.UndefinedTable:
            return []  # never opened (or refused to open)


def postgres_store(url: str, agency: str) -> StoreUnderTest:
    def open_(*, create: bool = True) -> Ledger:
        return PostgresLedger(url, agency=agency, create=create)

    return StoreUnderTest("postgres", open_, lambda: postgres_records(url, agency))


def assert_chain_verifies(records: list[ChainRecord]) -> None:
    """Seq 1..N without a gap, each ``prev_hash`` the hash before it, each hash and body
    digest recomputed from the stored fields: one chain, never a fork."""
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    prev = GENESIS_HASH
    for record in records:
        assert record.prev_hash == prev, f"record {record.seq} does not follow its predecessor"
        assert record.computed_hash() == record.hash, f"record {record.seq} does not hash"
        assert record.body_matches(), f"the body of record {record.seq} was changed"
        prev = record.hash
