"""``actimesh audit`` on each store: a PostgreSQL ledger verifies, exports and names
tampering exactly as a SQLite file does, because the checks are written once over a
reader per store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from actimesh.audit import export_case, link_case, read_head, verify_ledger
from actimesh.errors import AuditError
from actimesh.ledger import DecisionRow, open_ledger
from actimesh.ledger.postgres import schema_name
from tests.audit.helpers import activation, chain_hash, write_activations

# Five activations, each with one ack: activation n is seq 2n-1, its ack seq 2n.
LAST = 10


class _Tamperer:
    """The attacker's plain connection to either store; ``?`` marks in both."""

    def __init__(self, conn: sqlite3.Connection | psycopg.Connection[tuple[Any, ...]]) -> None:
        self._conn = conn

    def execute(self, query: str, args: tuple[Any, ...] = ()) -> Any:
        if isinstance(self._conn, sqlite3.Connection):
            return self._conn.execute(query, args)
        return self._conn.execute(query.replace("?", "%s"), args)


@dataclass(frozen=True)
class Written:
    """A ledger written through the store's own operations."""

    location: Path | str
    agency: str

    @contextlib.contextmanager
    def tamper(self) -> Iterator[_Tamperer]:
        if isinstance(self.location, Path):
            db = sqlite3.connect(self.location)
            try:
                yield _Tamperer(db)
                db.commit()
            finally:
                db.close()
            return
        with psycopg.connect(self.location) as conn:
            schema = sql.Identifier(schema_name(self.agency))
            conn.execute(sql.SQL("SET search_path TO {}").format(schema))
            yield _Tamperer(conn)

    def findings(self) -> list[str]:
        return [str(f) for f in verify_ledger(self.location, agency=self.agency).findings]


@pytest.fixture(params=["sqlite", "postgres"])
def written(request: pytest.FixtureRequest, tmp_path: Path, agency: str) -> Written:
    location: Path | str = tmp_path / "ledger.sqlite3"
    if request.param == "postgres":
        location = str(request.getfixturevalue("postgres_url"))
    asyncio.run(write_activations(location, range(1, 6), agency=agency))
    return Written(location, agency)


def test_an_untouched_ledger_verifies_and_has_a_head(written: Written) -> None:
    report = verify_ledger(written.location, agency=written.agency)
    assert report.ok, report.findings
    assert report.records == LAST
    assert report.summary().startswith("ledger intact: 10 records (0 redacted by retention)")
    head = read_head(written.location, agency=written.agency)
    assert head.seq == LAST
    assert verify_ledger(written.location, head=head, agency=written.agency).ok


def test_a_changed_body_is_named(written: Written) -> None:
    with written.tamper() as db:
        db.execute("UPDATE records SET body = replace(body, 'too_far', 'proximity') WHERE seq = 5")
    assert written.findings() == [
        "chain seq 5: changed: its body does not match its body_sha256",
    ]


def test_a_changed_hash_is_named(written: Written) -> None:
    with written.tamper() as db:
        db.execute("UPDATE records SET hash = ? WHERE seq = 4", ("f" * 64,))
    assert written.findings() == [
        "chain seq 4: changed: its fields do not match its hash (time, component, event "
        "type, subject, outcome or body_sha256 edited, or forged)",
    ]


def test_a_record_changed_and_rehashed_is_caught_by_its_successor(written: Written) -> None:
    with written.tamper() as db:
        db.execute("UPDATE records SET outcome = 'failed' WHERE seq = 4")
        prev, when, component, kind, subject, outcome, body_sha = db.execute(
            "SELECT prev_hash, time, component, event_type, subject, outcome, body_sha256 "
            "FROM records WHERE seq = 4"
        ).fetchone()
        db.execute(
            "UPDATE records SET hash = ? WHERE seq = 4",
            (chain_hash(prev, 4, when, component, kind, subject, outcome, body_sha),),
        )
    (finding,) = written.findings()
    assert finding.startswith("chain seq 4: changed: changed and its hash recomputed: seq 5")


def test_a_changed_decision_row_is_named(written: Written) -> None:
    with written.tamper() as db:
        db.execute(
            "UPDATE decisions SET distance_m = 3.0 WHERE aid = 'act-2' AND device_id = 'bwc2'"
        )
    assert written.findings() == [
        "decisions: changed: activation act-2 (record seq 3) camera bwc2: distance_m is 3.0 "
        "in the table, 9.0 in the chain",
    ]


def test_the_same_tampering_reads_the_same_on_both_stores(
    tmp_path: Path, postgres_url: str, agency: str
) -> None:
    stores = [Written(tmp_path / "ledger.sqlite3", agency), Written(postgres_url, agency)]
    reports = []
    for store in stores:
        asyncio.run(write_activations(store.location, range(1, 6), agency=agency))
        with store.tamper() as db:
            db.execute("UPDATE records SET body = replace(body, 'bwc1', 'bwc9') WHERE seq = 2")
            db.execute("DELETE FROM acks WHERE aid = 'act-4'")
            db.execute("UPDATE records SET subject = 'act-x' WHERE seq = 9")
        reports.append(store.findings())
    assert reports[0] == reports[1]
    assert len(reports[0]) >= 3


async def test_a_case_links_and_exports_from_either_store(written: Written, tmp_path: Path) -> None:
    seq, new = await link_case(
        written.location, "case-7", "act-3", "det. kim", agency=written.agency
    )
    assert (seq, new) == (LAST + 1, True)
    out = await asyncio.to_thread(
        export_case, written.location, "case-7", tmp_path / "out", agency=written.agency
    )
    assert out.records == 3  # the link, the activation and its ack
    manifest = json.loads(out.manifest.read_text())
    assert manifest["ledger_head"].startswith(f"{LAST + 1}:")


def test_a_postgres_ledger_is_shown_without_its_password(postgres_url: str, agency: str) -> None:
    url = postgres_url.replace("postgres@", "postgres:hunter2@")
    with pytest.raises(AuditError, match=r"no ledger at .*check the \[ledger\] url") as e:
        verify_ledger(url, agency=agency)
    assert "hunter2" not in str(e.value)
    asyncio.run(write_activations(url, range(1, 2), agency=agency))
    report = verify_ledger(url, agency=agency)
    assert report.ok
    assert "hunter2" not in str(report.path)


def _downgrade_to_schema_1(written: Written) -> None:
    """Make the ledger what an actimesh from before positions left: decision rows
    without ``lat``/``lon``, schema 1 (its records are already what that one wrote, since
    a decision without a position has the same body)."""
    with written.tamper() as db:
        db.execute("ALTER TABLE decisions DROP COLUMN lat")
        db.execute("ALTER TABLE decisions DROP COLUMN lon")
        if isinstance(written.location, Path):
            db.execute("PRAGMA user_version = 1")
        else:
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (1)")


PLACED = [
    DecisionRow("bwc1", "body_cam", True, "paired"),
    DecisionRow("bwc2", "body_cam", True, "proximity", 9.0, 0.0, 0.5, 3.0, 51.00008, -114.0),
    DecisionRow("bwc3", "body_cam", False, "too_far", 9.3, 0.0, 0.5, 3.0, 51.0, -114.000134),
]


async def _write_placed(location: Path | str, agency: str) -> None:
    async with open_ledger(location, agency=agency) as ledger:
        for n in (6, 7):
            assert await ledger.record_activation(activation(n), PLACED)


def test_a_ledger_with_rows_from_before_positions_verifies(written: Written) -> None:
    _downgrade_to_schema_1(written)
    # Read only, not yet upgraded: the audit reads no position for the old rows.
    assert written.findings() == []
    # Opened by this actimesh: upgraded in place, the old rows keep NULL positions.
    asyncio.run(_write_placed(written.location, written.agency))
    report = verify_ledger(written.location, agency=written.agency)
    assert report.ok, report.findings
    assert report.records == LAST + 2
    with written.tamper() as db:
        old = db.execute("SELECT lat, lon FROM decisions WHERE aid = 'act-2'").fetchall()
        new = db.execute(
            "SELECT lat, lon FROM decisions WHERE aid = 'act-6' AND device_id = 'bwc2'"
        ).fetchone()
    assert old
    assert all(tuple(r) == (None, None) for r in old)
    assert tuple(new) == (51.00008, -114.0)

    # A position moved in the table, or one given to an old row, is named.
    with written.tamper() as db:
        db.execute("UPDATE decisions SET lat = 51.1 WHERE aid = 'act-7' AND device_id = 'bwc2'")
        db.execute("UPDATE decisions SET lon = -114.2 WHERE aid = 'act-1' AND device_id = 'bwc2'")
    assert written.findings() == [
        "decisions: changed: activation act-1 (record seq 1) camera bwc2: lon is -114.2 "
        "in the table, None in the chain",
        "decisions: changed: activation act-7 (record seq 12) camera bwc2: lat is 51.1 "
        "in the table, 51.00008 in the chain",
    ]
