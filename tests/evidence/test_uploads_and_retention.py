"""The evidence store's checks on arrival, and retention of what it holds."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path

import httpx

from actimesh import evidence
from actimesh.audit import link_case, verify_ledger
from actimesh.evidence import apply_evidence_retention
from actimesh.evidence.settings import EvidenceSettings
from tests.audit.helpers import NOW
from tests.evidence.helpers import evidence_store, key_of, record
from tests.waiting import eventually


def _outcomes(path: Path, event_type: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(
            "SELECT subject, outcome FROM records WHERE event_type = ? ORDER BY seq", (event_type,)
        ).fetchall()
    finally:
        db.close()


def test_every_export_exists_once() -> None:
    assert len(set(evidence.__all__)) == len(evidence.__all__)
    assert all(hasattr(evidence, name) for name in evidence.__all__)


async def test_manifest_signed_with_another_devices_key_is_refused_and_recorded(
    tmp_path: Path,
) -> None:
    async with evidence_store(tmp_path) as env:
        forged = record(env.camera_root, "bwc1", key_of(env.creds["bwc2"]), "rec-1", "act-1")
        async with env.client("bwc1") as client:
            r = await client.post(
                "/api/v1/evidence/uploads", content=(forged / "manifest.json").read_bytes()
            )
        assert r.status_code == 403
        assert "does not verify with the key registered for bwc1" in r.json()["error"]
        theirs = record(env.camera_root, "bwc2", key_of(env.creds["bwc2"]), "rec-2", "act-2")
        async with env.client("bwc1") as client:
            r = await client.post(
                "/api/v1/evidence/uploads", content=(theirs / "manifest.json").read_bytes()
            )
        assert r.status_code == 403
        assert "may only upload its own recordings" in r.json()["error"]
        assert await env.service.list() == []
    assert _outcomes(tmp_path / "ledger.sqlite3", "evidence_upload") == [
        ("bwc1/rec-1", "refused"),
        ("bwc1/rec-2", "refused"),
    ]
    assert verify_ledger(tmp_path / "ledger.sqlite3").ok


async def test_wrong_password_and_no_credentials_get_401(tmp_path: Path) -> None:
    async with evidence_store(tmp_path) as env:
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        body = (folder / "manifest.json").read_bytes()
        async with env.client("bwc1", password=env.creds["bwc2"].password) as client:
            r = await client.post("/api/v1/evidence/uploads", content=body)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        async with env.client("nobody", password="x") as client:
            assert (await client.post("/api/v1/evidence/uploads", content=body)).status_code == 401


async def test_chunk_not_at_the_offset_gets_409_with_the_offset(tmp_path: Path) -> None:
    async with evidence_store(tmp_path) as env:
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        size = (folder / "recording.ts").stat().st_size
        async with env.client("bwc1") as client:
            up = (
                await client.post(
                    "/api/v1/evidence/uploads", content=(folder / "manifest.json").read_bytes()
                )
            ).json()
            url = f"/api/v1/evidence/uploads/{up['upload_id']}/files/recording.ts"
            r = await client.put(
                url, content=b"x" * 10, headers={"Content-Range": f"bytes 100-109/{size}"}
            )
            assert r.status_code == 409
            assert r.headers["Upload-Offset"] == "0"
            commit = await client.post(f"/api/v1/evidence/uploads/{up['upload_id']}/commit")
            assert commit.status_code == 409
            assert "send the rest" in commit.json()["error"]


async def test_retention_deletes_old_unlinked_evidence_and_keeps_case_linked(
    tmp_path: Path,
) -> None:
    async with evidence_store(tmp_path) as env:
        key = key_of(env.creds["bwc1"])
        record(env.camera_root, "bwc1", key, "rec-1", "act-1")
        record(env.camera_root, "bwc1", key, "rec-2", "act-2")
        record(env.camera_root, "bwc1", key, "rec-3", "act-3", start=NOW - 3600.0)
        async with env.client("bwc1") as client:
            report = await env.offloader(client, "bwc1").run()
        assert sorted(report.stored) == ["rec-1", "rec-2", "rec-3"]
        await link_case(env.ledger_path, "case-42", "act-2", by="det. kim")
        dry = await apply_evidence_retention(env.service, now=NOW, dry_run=True)
        assert dry.deleted == ["bwc1/rec-1"]
        assert len(await env.service.list()) == 3
        done = await apply_evidence_retention(env.service, now=NOW)
        assert done.deleted == ["bwc1/rec-1"]
        assert done.kept_for_case == ["bwc1/rec-2"]
        assert [r.evidence_id for r in await env.service.list()] == ["bwc1/rec-2", "bwc1/rec-3"]
        assert not (tmp_path / "evidence" / "bwc1" / "rec-1").exists()
        assert (await apply_evidence_retention(env.service, now=NOW)).deleted == []
    assert ("bwc1/rec-1", "deleted") in _outcomes(tmp_path / "ledger.sqlite3", "retention_delete")
    assert verify_ledger(tmp_path / "ledger.sqlite3").ok


async def test_a_deletion_interrupted_after_hiding_is_finished_and_recorded(
    tmp_path: Path,
) -> None:
    async with evidence_store(tmp_path) as env:
        record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        async with env.client("bwc1") as client:
            await env.offloader(client, "bwc1").run()
        assert env.service.store.hide("bwc1", "rec-1")  # then the process died
        assert await env.service.list() == []
        done = await apply_evidence_retention(env.service, now=NOW)
        assert done.deleted == ["bwc1/rec-1"]
        assert env.service.store.hidden() == []
    assert _outcomes(tmp_path / "ledger.sqlite3", "retention_delete") == [("bwc1/rec-1", "deleted")]


async def test_manifests_that_could_mean_two_things_are_refused_with_a_reason(
    tmp_path: Path,
) -> None:
    """Deep nesting, NaN, infinity and duplicate keys get a 400 that says why, never a
    500; a duplicate ``device_id`` is not stored as sent."""
    async with evidence_store(tmp_path) as env:
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        body = (folder / "manifest.json").read_bytes()
        assert body.startswith(b"{")
        hostile = {
            b"[" * 100_000 + b"]" * 100_000: "nests too deeply",
            b'{"x": NaN, ' + body[1:]: "NaN is not a JSON number",
            b'{"x": -Infinity, ' + body[1:]: "-Infinity is not a JSON number",
            b'{"x": 1e999, ' + body[1:]: "1e999 is not a finite number",
            b'{"device_id": "bwc2", ' + body[1:]: "duplicate key 'device_id'",
        }
        async with env.client("bwc1") as client:
            for sent, reason in hostile.items():
                r = await client.post("/api/v1/evidence/uploads", content=sent)
                assert r.status_code == 400, (reason, r.text)
                assert reason in r.json()["error"]
            # The honest manifest is still taken.
            r = await client.post("/api/v1/evidence/uploads", content=body)
            assert r.status_code in (200, 201), r.text
        assert await env.service.list() == []  # nothing stored before its bytes arrive


async def test_password_guessing_is_limited_without_locking_the_device_out(
    tmp_path: Path,
) -> None:
    """Guesses for bwc1 from one address get 429 before any password is hashed; bwc1
    itself, at its dock's address, still offloads."""
    async with evidence_store(tmp_path) as env:
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        body = (folder / "manifest.json").read_bytes()
        limit = env.service.settings.auth_max_failures
        statuses = []
        async with env.client("bwc1", password="guess") as guesser:
            for _ in range(limit + 2):
                r = await guesser.post("/api/v1/evidence/uploads", content=body)
                statuses.append(r.status_code)
            # Locked: even the right password is not checked from there now.
            guesser.auth = httpx.BasicAuth("bwc1", env.creds["bwc1"].password)
            locked = await guesser.post("/api/v1/evidence/uploads", content=body)
        assert statuses == [401] * limit + [429, 429]
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= env.service.settings.auth_window_s
        dock = httpx.AsyncClient(
            base_url=env.server.url,
            auth=("bwc1", env.creds["bwc1"].password),
            transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
            trust_env=False,
        )
        async with dock:
            r = await dock.post("/api/v1/evidence/uploads", content=body)
        assert r.status_code == 201, r.text


async def test_open_uploads_are_capped_per_device(tmp_path: Path) -> None:
    settings = EvidenceSettings(max_chunk_bytes=256 * 1024, max_open_uploads=2)
    async with evidence_store(tmp_path, settings) as env:
        key = key_of(env.creds["bwc1"])
        async with env.client("bwc1") as client, env.client("bwc2") as other:
            manifests = [
                (record(env.camera_root, "bwc1", key, f"rec-{n}", None) / "manifest.json")
                for n in range(3)
            ]
            statuses = []
            for manifest in manifests:
                r = await client.post("/api/v1/evidence/uploads", content=manifest.read_bytes())
                statuses.append(r.status_code)
            assert statuses == [201, 201, 429]
            assert "already has 2 unfinished uploads" in r.json()["error"]
            # Resuming one of the two is still fine, and so is another device.
            r = await client.post("/api/v1/evidence/uploads", content=manifests[0].read_bytes())
            assert r.status_code == 201
            theirs = record(env.camera_root, "bwc2", key_of(env.creds["bwc2"]), "rec-9", None)
            r = await other.post(
                "/api/v1/evidence/uploads", content=(theirs / "manifest.json").read_bytes()
            )
            assert r.status_code == 201


async def test_an_upload_the_disk_cannot_hold_is_refused_before_a_byte_is_sent(
    tmp_path: Path,
) -> None:
    spare = 1 << 62  # more than any disk: every upload would leave too little free
    settings = EvidenceSettings(max_chunk_bytes=256 * 1024, min_free_bytes=spare)
    async with evidence_store(tmp_path, settings) as env:
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        async with env.client("bwc1") as client:
            r = await client.post(
                "/api/v1/evidence/uploads", content=(folder / "manifest.json").read_bytes()
            )
        assert r.status_code == 507
        assert "evidence.min_free_bytes" in r.json()["error"]


async def test_half_open_requests_and_stalled_bodies_are_cut_off(tmp_path: Path) -> None:
    settings = EvidenceSettings(max_chunk_bytes=256 * 1024, client_timeout_s=1.0)
    async with evidence_store(tmp_path, settings) as env:
        host, port = env.server.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        streams = [await asyncio.open_connection(host, int(port)) for _ in range(10)]
        for _, writer in streams:
            writer.write(b"POST /api/v1/evidence/uploads HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            await writer.drain()
        async with asyncio.timeout(10):
            for reader, _ in streams:
                assert await reader.read() == b""  # closed by the server
        for _, writer in streams:
            writer.close()
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        body = (folder / "manifest.json").read_bytes()
        auth = base64.b64encode(f"bwc1:{env.creds['bwc1'].password}".encode())
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /api/v1/evidence/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
            + auth
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body[:10]
        )
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readline()
        writer.close()
        assert head.startswith(b"HTTP/1.1 408"), head


async def test_the_last_connections_are_kept_for_devices_with_credentials(
    tmp_path: Path,
) -> None:
    """Half-open requests up to the reserve: a request without credentials gets 503
    with Retry-After, a camera offloading with its password is still served."""
    settings = EvidenceSettings(max_chunk_bytes=256 * 1024, client_timeout_s=30.0, max_clients=16)
    async with evidence_store(tmp_path, settings) as env:
        gauge = env.server.gauge
        assert (gauge.limit, gauge.reserve) == (16, 4)
        host, port = env.server.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        held = []
        for _ in range(12):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /api/v1/evidence/uploads HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            await writer.drain()
            held.append((reader, writer))
        await eventually(lambda: gauge.crowded, 5)
        folder = record(env.camera_root, "bwc1", key_of(env.creds["bwc1"]), "rec-1", "act-1")
        body = (folder / "manifest.json").read_bytes()
        async with httpx.AsyncClient(base_url=env.server.url, trust_env=False) as stranger:
            busy = await stranger.post("/api/v1/evidence/uploads", content=body)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        async with env.client("bwc1") as camera:
            r = await camera.post("/api/v1/evidence/uploads", content=body)
        assert r.status_code == 201, r.text
        assert env.server.gate.refused == 1
        for _, writer in held:
            writer.close()
        await eventually(lambda: not gauge.crowded, 5)
