"""Case export: one case's records, and everything needed to check their hashes."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from actimesh.audit import export_case, link_case
from actimesh.errors import AuditError
from actimesh.ledger import SqliteLedger
from tests.audit.helpers import T0, chain_hash, tamper, write_activations


async def _case(path: Path) -> None:
    await write_activations(path, range(1, 5))
    async with SqliteLedger(path) as ledger:
        await ledger.record_event(
            "engine/engine-1",
            "alert",
            "bwc2",
            "no_ack",
            {"aid": "act-2", "device": "bwc2"},
            at=T0 + 30,
        )
        await ledger.record_event(
            "engine/engine-1",
            "alert",
            "bwc2",
            "no_ack",
            {"aid": "act-3", "device": "bwc2"},
            at=T0 + 31,
        )
    assert await link_case(path, "CR-1", "act-2", "Sgt Smith") == (11, True)
    assert await link_case(path, "CR-1", "act-4", "Sgt Smith") == (12, True)
    assert await link_case(path, "CR-2", "act-2", "Cpl Jones") == (13, True)


def _check(row: dict[str, str | None]) -> None:
    """What an auditor with only the export and the documentation can check."""
    body = row["body"]
    assert body is not None
    assert hashlib.sha256(body.encode()).hexdigest() == row["body_sha256"]
    text = {k: str(v) for k, v in row.items()}
    assert row["hash"] == chain_hash(
        text["prev_hash"],
        int(text["seq"]),
        text["time"],
        text["component"],
        text["event_type"],
        text["subject"],
        text["outcome"],
        text["body_sha256"],
    )


async def test_a_case_exports_its_records_with_hashes_that_recompute(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    await _case(path)
    result = export_case(path, "CR-1", tmp_path / "out")
    # act-2 (3, 4) and its alert (9), act-4 (7, 8), CR-1's two links; not CR-2's link.
    expected = [3, 4, 7, 8, 9, 11, 12]
    assert result.activations == ("act-2", "act-4")
    lines = result.jsonl.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == expected
    for row in rows:
        _check(row)
    with result.csv.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["seq"]) for r in table] == expected
    for r in table:
        _check(dict(r))
    assert [r["event_type"] for r in table] == [
        "activation",
        "ack",
        "activation",
        "ack",
        "alert",
        "case_link",
        "case_link",
    ]
    assert json.loads(table[-1]["body"])["linked_by"] == "Sgt Smith"
    manifest = json.loads(result.manifest.read_text())
    assert manifest["ledger_head"].startswith("13:")
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((result.jsonl.parent / name).read_bytes()).hexdigest() == digest


async def test_exporting_an_unknown_case_says_how_to_link_one(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    await write_activations(path, range(1, 2))
    with pytest.raises(AuditError, match=r"case CR-9 has no linked activation.*audit link"):
        export_case(path, "CR-9", tmp_path / "out")
    with pytest.raises(AuditError, match=r"case id '\.\./etc' must be"):
        export_case(path, "../etc", tmp_path / "out")
    assert not (tmp_path / "out").exists()


async def test_a_case_whose_records_fail_their_hash_is_not_exported(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    await _case(path)
    with tamper(path) as db:
        db.execute("UPDATE records SET outcome = 'none_commanded' WHERE seq = 7")
    with pytest.raises(AuditError, match="record 7 of case CR-1 does not match its hash"):
        export_case(path, "CR-1", tmp_path / "out")


async def test_linking_an_unknown_activation_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with pytest.raises(AuditError, match="no ledger at"):
        await link_case(path, "CR-1", "act-1", "Sgt Smith")
    await write_activations(path, range(1, 2))
    with pytest.raises(AuditError, match="no activation 'act-7' in the ledger"):
        await link_case(path, "CR-1", "act-7", "Sgt Smith")
