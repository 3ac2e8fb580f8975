"""End-of-shift offload against a real evidence store (uvicorn, SQLite ledger and registry)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from actimesh.audit import verify_ledger
from actimesh.devices.offload import OffloadReport
from tests.evidence.helpers import evidence_store, key_of, record
from tests.waiting import eventually


async def _records(path: Path, event_type: str) -> list[tuple[str, str, dict[str, object]]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT subject, outcome, body FROM records WHERE event_type = ? ORDER BY seq",
            (event_type,),
        ).fetchall()
    finally:
        db.close()
    return [(s, o, json.loads(b)) for s, o, b in rows]


async def test_offload_stores_verified_recording_and_deletes_the_local_copy_after_receipt(
    tmp_path: Path,
) -> None:
    async with evidence_store(tmp_path) as env:
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        async with env.client("bwc1") as client:
            report = await env.offloader(client, "bwc1").run()
        assert not report.kept, report.kept
        receipt = report.stored["rec-1"]
        assert not folder.exists()
        stored = await env.service.list()
        assert [r.evidence_id for r in stored] == ["bwc1/rec-1"]
        assert receipt["files"] == {
            name: {"bytes": size, "sha256": sha} for name, (size, sha) in stored[0].files.items()
        }
        check = await env.service.verify(stored[0])
        assert check.ok, check.problems
    uploads = await _records(tmp_path / "ledger.sqlite3", "evidence_upload")
    assert [(s, o) for s, o, _ in uploads] == [("bwc1/rec-1", "stored")]
    assert uploads[0][2]["aid"] == "act-1"
    assert receipt["ledger_seq"] > 0
    assert verify_ledger(tmp_path / "ledger.sqlite3").ok


async def test_upload_cut_mid_file_resumes_from_the_stores_offset(tmp_path: Path) -> None:
    async with evidence_store(tmp_path) as env:
        folder = record(
            env.camera_root,
            "bwc1",
            key_of(env.creds["bwc1"]),
            "rec-1",
            "act-1",
            sizes=(600_000, 400_000),
        )
        media = folder / "recording.ts"
        size = media.stat().st_size
        async with env.client("bwc1") as client:
            created = await client.post(
                "/api/v1/evidence/uploads", content=(folder / "manifest.json").read_bytes()
            )
            assert created.status_code == 201, created.text
            url = f"/api/v1/evidence/uploads/{created.json()['upload_id']}/files/recording.ts"
            data = media.read_bytes()

            async def cut_off() -> AsyncIterator[bytes]:
                # The camera is pulled off the dock half-way through a chunk.
                for i in range(0, 150_000, 50_000):
                    yield data[i : i + 50_000]
                raise ConnectionResetError("undocked")

            with contextlib.suppress(httpx.TransportError, ConnectionResetError):
                await client.put(
                    url,
                    content=cut_off(),
                    headers={"Content-Range": f"bytes 0-249999/{size}", "Content-Length": "250000"},
                )

            async def offset() -> int:
                head = await client.head(url)
                return int(head.headers["Upload-Offset"])

            held: int = await eventually(offset)
            assert 0 < held < size
            assert not await env.service.list()  # nothing partial is listed
            assert media.exists()
            report: OffloadReport = await env.offloader(client, "bwc1").run()
        assert "rec-1" in report.stored, report.kept
        assert report.bytes_sent <= size - held + 1  # only the rest was sent
        assert not folder.exists()
        assert [r.evidence_id for r in await env.service.list()] == ["bwc1/rec-1"]
    assert verify_ledger(tmp_path / "ledger.sqlite3").ok


async def test_tampered_file_is_refused_kept_on_camera_and_never_listed(tmp_path: Path) -> None:
    async with evidence_store(tmp_path) as env:
        folder = record(
            env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1", one_file=False
        )
        seg = folder / "000001.seg"
        data = bytearray(seg.read_bytes())
        data[10] ^= 0xFF
        seg.write_bytes(bytes(data))
        async with env.client("bwc1") as client:
            report = await env.offloader(client, "bwc1").run()
        assert "SHA-256 does not match" in report.kept["rec-1"]
        assert folder.is_dir()  # the camera keeps it
        assert seg.read_bytes() == bytes(data)
        assert await env.service.list() == []
        assert not list((tmp_path / "evidence" / ".uploads").iterdir())
    uploads = await _records(tmp_path / "ledger.sqlite3", "evidence_upload")
    assert [(s, o) for s, o, _ in uploads] == [("bwc1/rec-1", "rejected")]
    assert verify_ledger(tmp_path / "ledger.sqlite3").ok


async def test_offloading_again_after_a_lost_receipt_gets_the_same_receipt(tmp_path: Path) -> None:
    async with evidence_store(tmp_path) as env:
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", None)
        manifest = (folder / "manifest.json").read_bytes()
        async with env.client("bwc1") as client:
            first = await env.offloader(client, "bwc1").run()
            again = await client.post("/api/v1/evidence/uploads", content=manifest)
        assert again.status_code == 200
        assert again.json() == {"state": "stored", "receipt": first.stored["rec-1"]}
    uploads = await _records(tmp_path / "ledger.sqlite3", "evidence_upload")
    assert len(uploads) == 1
