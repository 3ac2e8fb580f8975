"""Stored recordings in the dispatch: dispatchers list, inspect and download; integrators
are refused; every view and download is in the ledger with who did it."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from actimesh.audit import verify_ledger
from actimesh.dispatch.accounts import Role
from tests.dispatch.conftest import add_user, api, login, running_dispatch
from tests.evidence.helpers import evidence_store, key_of, record
from tests.integration.harness import mesh


def _views(path: Path) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(
            "SELECT event_type, subject, outcome FROM records "
            "WHERE event_type IN ('evidence_view', 'evidence_download') ORDER BY seq"
        ).fetchall()
    finally:
        db.close()


async def test_dispatcher_lists_inspects_and_downloads_evidence_all_audited(
    agency: str, broker_port: int, tmp_path: Path
) -> None:
    async with (
        evidence_store(tmp_path) as env,
        mesh(agency, broker_port, tmp_path) as m,
        running_dispatch(m, tmp_path, evidence=env.service) as svc,
    ):
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        expected = hashlib.sha256((folder / "recording.ts").read_bytes()).hexdigest()
        async with env.client("bwc1") as device:
            assert "rec-1" in (await env.offloader(device, "bwc1").run()).stored

        password = await add_user(svc, "kim", Role.DISPATCHER)
        async with api(svc, None) as browser:
            await login(browser, "kim", password)
            listed = await browser.get("/api/v1/evidence", params={"aid": "act-1"})
            assert listed.status_code == 200, listed.text
            assert [r["evidence_id"] for r in listed.json()["recordings"]] == ["bwc1/rec-1"]
            assert (await browser.get("/api/v1/evidence", params={"device": "bwc2"})).json()[
                "recordings"
            ] == []
            one = await browser.get("/api/v1/evidence/bwc1/rec-1")
            assert one.status_code == 200
            assert one.json()["verification"] == {"ok": True, "problems": [], "notes": []}
            got = await browser.get("/api/v1/evidence/bwc1/rec-1/files/recording.ts")
            assert got.status_code == 200
            assert got.headers["content-disposition"].startswith("attachment;")
            assert hashlib.sha256(got.content).hexdigest() == expected
            missing = await browser.get("/api/v1/evidence/bwc1/nope")
            assert missing.status_code == 404
            assert "error" in missing.json()

        async with api(svc, "integrator") as integrator:
            refused = await integrator.get("/api/v1/evidence")
            assert refused.status_code == 403
            assert (await integrator.get("/api/v1/evidence/bwc1/rec-1")).status_code == 403
        async with api(svc, None) as anonymous:
            assert (await anonymous.get("/api/v1/evidence")).status_code == 401

    assert _views(tmp_path / "ledger.sqlite3") == [
        ("evidence_view", "kim", "listed"),
        ("evidence_view", "kim", "listed"),
        ("evidence_view", "kim", "viewed"),
        ("evidence_download", "kim", "started"),
    ]
    assert verify_ledger(tmp_path / "ledger.sqlite3").ok
