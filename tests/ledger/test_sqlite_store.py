"""The SQLite ledger: activations with their decisions, acknowledgements, dedupe lookups,
and the hash chain every write appends to."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from actimesh.audit import verify_ledger
from actimesh.errors import LedgerError, NotCommandedError
from actimesh.ledger import (
    KEEP_TYPES,
    AckRow,
    ActivationRow,
    DecisionRow,
    Head,
    Ledger,
    SqliteLedger,
)
from actimesh.ledger.sqlite.schema import SCHEMA
from tests.audit.helpers import chain_hash


def activation(aid: str = "act-1", eid: str = "e1", ts: float = 100.0) -> ActivationRow:
    return ActivationRow(
        aid=aid,
        src="cew1",
        eid=eid,
        type="taser_draw",
        event_ts=ts,
        received_ts=ts + 0.01,
        decided_ts=ts + 0.02,
        lat=51.0,
        lon=-114.0,
        acc=3.0,
        position_source="event",
        radius_m=9.144,
        pre_roll_s=30.0,
        rule={"event_type": "taser_draw"},
        initiated_by=None,
        engine="engine-1",
    )


DECISIONS = [
    DecisionRow("bwc1", "body_cam", True, "paired"),
    DecisionRow("bwc2", "body_cam", True, "proximity", 9.0, 0.0, 0.5, 0.0),
    DecisionRow("bwc3", "body_cam", False, "too_far", 9.3, 0.0, 0.5, 0.0),
]


async def test_activation_and_decisions_round_trip(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "ledger.sqlite3") as ledger:
        assert await ledger.record_activation(activation(), DECISIONS)
        found = await ledger.activation("act-1")
    assert found is not None
    row, decisions = found
    assert row == activation()
    assert {d.device_id: (d.commanded, d.reason) for d in decisions} == {
        "bwc1": (True, "paired"),
        "bwc2": (True, "proximity"),
        "bwc3": (False, "too_far"),
    }


async def test_same_activation_twice_is_written_once(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        assert await ledger.record_activation(activation(), DECISIONS)
        assert not await ledger.record_activation(activation(), DECISIONS)
        assert await ledger.find("cew1", "e1") == "act-1"
        assert await ledger.find("cew1", "nope") is None
        assert await ledger.activation_ids() == ["act-1"]


async def test_ledger_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(ts=500.0), DECISIONS)
        await ledger.record_ack(AckRow("act-1", "bwc1", "recording", 30.0, "rec-1", 501.0, 501.1))
    async with SqliteLedger(path) as ledger:
        assert await ledger.recent_events(since=400.0) == [("cew1", "e1", "act-1")]
        assert await ledger.recent_events(since=600.0) == []
        acks = await ledger.acks("act-1")
    assert [(a.device_id, a.pre_cov_s, a.recording) for a in acks] == [("bwc1", 30.0, "rec-1")]


async def test_a_merged_trigger_is_found_with_the_activation_it_joined(tmp_path: Path) -> None:
    """Storm control writes a merge record, not an activation row: after a restart the
    repeat must still be known (so a replay is not activated again)."""
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(ts=500.0), DECISIONS)
        body = {
            "aid": "act-1",
            "merged_aid": "act-2",
            "src": "cew1",
            "eid": "e2",
            "type": "taser_draw",
            "event_ts": 503.0,
        }
        await ledger.record_event("engine/e1", "merge", "act-1", "merged", body)
    async with SqliteLedger(path) as ledger:
        assert await ledger.find("cew1", "e2") == "act-1"
        assert await ledger.find("cew1", "e3") is None
        assert sorted(await ledger.recent_events(since=400.0)) == [
            ("cew1", "e1", "act-1"),
            ("cew1", "e2", "act-1"),
        ]
        assert await ledger.recent_events(since=501.0) == [("cew1", "e2", "act-1")]


async def test_unwritable_ledger_says_how_to_fix_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LedgerError, match="check the --data-dir"):
        async with SqliteLedger(blocker / "ledger.sqlite3"):
            pass


async def test_closed_ledger_refuses_work(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.sqlite3")
    with pytest.raises(LedgerError, match="not open"):
        await ledger.find("a", "b")


# ---------------------------------------------------------------------- the hash chain
def _records(path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT seq, time, component, event_type, subject, outcome, body, body_sha256, "
            "prev_hash, hash, aid FROM records ORDER BY seq"
        ).fetchall()


async def test_every_write_appends_a_chained_record_with_the_cjis_fields(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(), DECISIONS)
        await ledger.record_ack(AckRow("act-1", "bwc1", "recording", 30.0, "rec-1", 101.0, 101.5))
        seq = await ledger.record_event(
            "engine/engine-1", "alert", "bwc2", "no_ack", {"aid": "act-1", "detail": "silent"}
        )
        head = await ledger.head()
    assert seq == 3
    rows = _records(path)
    assert [r[:6] for r in rows] == [
        (1, "1970-01-01T00:01:40.020000Z", "engine/engine-1", "activation", "act-1", "commanded"),
        (2, "1970-01-01T00:01:41.500000Z", "device/bwc1", "ack", "act-1", "recording"),
        (3, rows[2][1], "engine/engine-1", "alert", "bwc2", "no_ack"),
    ]
    prev = "0" * 64
    for (
        seq,
        when,
        component,
        kind,
        subject,
        outcome,
        body,
        body_sha,
        prev_hash,
        digest,
        aid,
    ) in rows:
        assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
        assert body_sha == hashlib.sha256(body.encode()).hexdigest()
        assert prev_hash == prev
        assert digest == chain_hash(prev, seq, when, component, kind, subject, outcome, body_sha)
        assert aid == "act-1"  # the alert is about a camera, but belongs to the activation
        prev = digest
    assert head == Head(3, prev)
    decisions = json.loads(rows[0][6])["decisions"]
    assert [d["device_id"] for d in decisions] == ["bwc1", "bwc2", "bwc3"]


async def test_activation_rows_and_record_are_written_together_or_not_at_all(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite3"
    twice = [DECISIONS[0], DECISIONS[0]]  # the decisions' primary key refuses the second
    not_json = replace(activation(), rule={"radius": math.nan})
    async with SqliteLedger(path) as ledger:
        with pytest.raises(LedgerError, match="cannot write activation act-1"):
            await ledger.record_activation(activation(), twice)
        with pytest.raises(LedgerError, match="cannot append"):
            await ledger.record_activation(not_json, DECISIONS)
        assert await ledger.activation("act-1") is None
        assert await ledger.head() == Head(0, "0" * 64)
        assert await ledger.record_activation(activation(), DECISIONS)
    assert len(_records(path)) == 1


async def test_redelivered_ack_is_stored_and_chained_once(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ack = AckRow("act-1", "bwc1", "recording", 30.0, "rec-1", 101.0, 101.5)
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(), DECISIONS)
        await ledger.record_ack(ack)
        await ledger.record_ack(replace(ack, received_ts=109.0))  # same ack, delivered again
        await ledger.record_ack(replace(ack, status="received", device_ts=100.5))
        assert len(await ledger.acks("act-1")) == 2
    assert [r[3] for r in _records(path)] == ["activation", "ack", "ack"]


async def test_acks_written_together_are_one_transaction_in_order(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    first = AckRow("act-1", "bwc1", "received", 30.0, None, 100.5, 100.6)
    acks = [
        first,
        replace(first, status="recording", recording="rec-1", device_ts=101.0),
        replace(first, device_id="bwc2"),
        replace(first, received_ts=109.0),
    ]
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(), DECISIONS)
        written = await ledger.record_acks(acks)
        assert written.inserted == 3  # the last one was delivered again
        assert (await ledger.record_acks([])).inserted == 0
        assert len(await ledger.acks("act-1")) == 3
    records = _records(path)
    assert [r[3] for r in records] == ["activation", "ack", "ack", "ack"]
    assert [r[4] for r in records[1:]] == ["act-1"] * 3
    assert verify_ledger(path).ok


async def test_a_bad_ack_in_a_group_writes_none_of_it(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    good = AckRow("act-1", "bwc1", "received", 30.0, None, 100.5, 100.6)
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(), DECISIONS)
        with pytest.raises(LedgerError, match="cannot append"):
            await ledger.record_acks([good, replace(good, device_id="bwc2", received_ts=math.inf)])
        assert await ledger.acks("act-1") == []
        assert (await ledger.record_acks([good])).inserted == 1
    assert verify_ledger(path).ok


async def test_record_event_keeps_table_backed_types_to_the_ledger(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        for kind in ("activation", "ack", "case_link", "retention_delete"):
            with pytest.raises(LedgerError, match="written by the ledger itself"):
                await ledger.record_event("engine/e", kind, "x", "ok", {})
        with pytest.raises(LedgerError, match="subject must be a non-empty string"):
            await ledger.record_event("engine/e", "alert", "", "ok", {})
        assert await ledger.head() == Head(0, "0" * 64)


async def test_two_ledgers_on_one_file_keep_one_contiguous_chain(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path) as one, SqliteLedger(path) as two:

        async def engine(ledger: Ledger, name: str, first: int) -> None:
            for n in range(first, first + 60):
                row = replace(activation(f"act-{n}", f"e{n}"), engine=name)
                assert await ledger.record_activation(row, DECISIONS)
                await ledger.record_event(f"engine/{name}", "alert", "bwc1", "no_ack", {"n": n})

        await asyncio.gather(engine(one, "engine-1", 0), engine(two, "engine-2", 1000))
    rows = _records(path)
    assert [r[0] for r in rows] == list(range(1, 241))
    assert {r[2] for r in rows} == {"engine/engine-1", "engine/engine-2"}
    report = verify_ledger(path)
    assert report.ok, report.findings


def test_engine_processes_sharing_a_ledger_file_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from actimesh.ledger import SqliteLedger\n"
        "async def main():\n"
        "    async with SqliteLedger(Path(sys.argv[1])) as ledger:\n"
        "        for n in range(100):\n"
        "            await ledger.record_event('engine/' + sys.argv[2], 'alert', 'x', 'ok', {})\n"
        "asyncio.run(main())\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), name])
        for name in ("engine-1", "engine-2", "engine-3")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert [r[0] for r in _records(path)] == list(range(1, 301))
    assert verify_ledger(path).ok


async def test_a_busy_ledger_waits_for_the_lock_then_says_what_held_it(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    async with SqliteLedger(path):
        pass
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        async with SqliteLedger(path, busy_timeout_s=0.2) as ledger:
            with pytest.raises(LedgerError, match="database is locked"):
                await ledger.record_activation(activation(), DECISIONS)
            holder.execute("COMMIT")
            assert await ledger.record_activation(activation(), DECISIONS)
    finally:
        holder.close()


_OLD_SCHEMA = """
CREATE TABLE activations (aid TEXT PRIMARY KEY, src TEXT NOT NULL, eid TEXT NOT NULL,
    type TEXT NOT NULL, event_ts REAL NOT NULL, received_ts REAL NOT NULL,
    decided_ts REAL NOT NULL, lat REAL, lon REAL, acc REAL, position_source TEXT NOT NULL,
    radius_m REAL NOT NULL, pre_roll_s REAL NOT NULL, rule TEXT NOT NULL, initiated_by TEXT,
    engine TEXT NOT NULL, UNIQUE (src, eid));
CREATE TABLE decisions (aid TEXT NOT NULL REFERENCES activations (aid),
    device_id TEXT NOT NULL, device_kind TEXT, commanded INTEGER NOT NULL,
    reason TEXT NOT NULL, distance_m REAL, margin_m REAL, fix_age_s REAL, acc_m REAL,
    PRIMARY KEY (aid, device_id));
CREATE TABLE acks (aid TEXT NOT NULL, device_id TEXT NOT NULL, status TEXT NOT NULL,
    pre_cov_s REAL NOT NULL, recording TEXT, device_ts REAL NOT NULL,
    received_ts REAL NOT NULL, detail TEXT);
INSERT INTO activations VALUES ('act-1', 'cew1', 'e1', 'taser_draw', 100.0, 100.01, 100.02,
    51.0, -114.0, 3.0, 'event', 9.144, 30.0, '{"event_type": "taser_draw"}', NULL, 'engine-1');
INSERT INTO decisions VALUES ('act-1', 'bwc1', 'body_cam', 1, 'paired', NULL, NULL, NULL, NULL);
INSERT INTO acks VALUES ('act-1', 'bwc1', 'recording', 30.0, 'rec-1', 101.0, 101.5, NULL);
INSERT INTO acks VALUES ('act-1', 'bwc1', 'recording', 30.0, 'rec-1', 101.0, 102.5, NULL);
"""


async def test_a_ledger_from_before_the_chain_is_chained_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(_OLD_SCHEMA)
    async with SqliteLedger(path) as ledger:
        assert len(await ledger.acks("act-1")) == 1  # the redelivered duplicate went
        await ledger.record_ack(AckRow("act-1", "bwc1", "recording", 30.0, "rec-1", 101.0, 1.0))
    async with SqliteLedger(path):  # opening again imports nothing twice
        pass
    assert [(r[3], r[5]) for r in _records(path)] == [
        ("ledger_import", "imported"),
        ("activation", "commanded"),
        ("ack", "recording"),
    ]
    assert json.loads(_records(path)[0][6])["duplicate_acks_removed"] == 1
    assert verify_ledger(path).ok


async def test_a_ledger_from_a_newer_actimesh_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(LedgerError, match="schema 99, newer than this actimesh"):
        async with SqliteLedger(path):
            pass


async def test_audit_tools_never_create_an_empty_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        async with SqliteLedger(tmp_path / "missing.sqlite3", create=False):
            pass
    assert not (tmp_path / "missing.sqlite3").exists()


async def test_linking_a_case_is_recorded_once_and_needs_a_live_activation(
    tmp_path: Path,
) -> None:
    async with SqliteLedger(tmp_path / "l.sqlite3") as ledger:
        await ledger.record_activation(activation(), DECISIONS)
        assert await ledger.link_case("CR-1", "act-1", "Sgt Smith", at=200.0) == (2, True)
        assert await ledger.link_case("CR-1", "act-1", "Cpl Jones") == (2, False)
        assert await ledger.link_case("CR-2", "act-1", "Cpl Jones") == (3, True)
        with pytest.raises(LedgerError, match="no activation 'act-9'"):
            await ledger.link_case("CR-1", "act-9", "Sgt Smith")
        with pytest.raises(LedgerError, match=r"case id '\.\./x' must be letters"):
            await ledger.link_case("../x", "act-1", "Sgt Smith")
        redacted = await ledger.redact_expired(cutoff=10_000.0)
        assert redacted == []  # linked activations are kept
        assert await ledger.activation_states(["act-1", "act-9"]) == {
            "act-1": "linked",
            "act-9": "unknown",
        }


def test_retention_index_leaves_out_exactly_the_kept_record_types() -> None:
    # The partial index and the retention query spell these out in SQL.
    condition = SCHEMA.split("records_to_retain")[1].split(";")[0]
    assert sorted(t.value for t in KEEP_TYPES) == sorted(re.findall(r"'([a-z_]+)'", condition))


async def test_answers_from_cameras_the_activation_did_not_command_are_counted_not_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.sqlite3"
    ok = AckRow("act-1", "bwc2", "recording", 30.0, "rec-1", 100.5, 100.6)
    left_out = replace(ok, device_id="bwc3")  # too far: never commanded
    stranger = replace(ok, device_id="bwc9")  # not in the activation at all
    unknown = replace(ok, aid="act-404")
    async with SqliteLedger(path) as ledger:
        await ledger.record_activation(activation(), DECISIONS)
        written = await ledger.record_acks([ok, left_out, stranger, unknown], only_commanded=True)
        assert (written.inserted, written.not_commanded) == (1, 3)
        assert [a.device_id for a in await ledger.acks("act-1")] == ["bwc2"]
        cancel = replace(left_out, status="cancelled")
        with pytest.raises(NotCommandedError, match="bwc3 was not commanded in act-1"):
            await ledger.record_cancel(cancel, "officer 7", only_commanded=True)
    assert [r[3] for r in _records(path)] == ["activation", "ack"]
    assert verify_ledger(path).ok
