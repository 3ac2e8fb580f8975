"""Stored recordings in the dispatch: list, look at one, play it, download its files::

    GET /api/v1/evidence                                    dispatch   list (device, aid, time)
    GET /api/v1/evidence/{device}/{recording}               dispatch   manifest, receipt, check
    GET /api/v1/evidence/{device}/{recording}/play          dispatch   H.264 as MP4 (inline)
    GET /api/v1/evidence/{device}/{recording}/files/{name}  dispatch   the file (attachment)

Dispatchers and admins only; integrators are refused. Every call is written to the
ledger *before* anything is shown (``evidence_view``: ``listed``, ``viewed`` or
``played``; ``evidence_download``: ``started``) with who, how they authenticated, from
where and what; a call that cannot be recorded gets 503 and nothing else. A record about
one recording names its first activation, so it is exported with the case.

Playback remuxes the stored MPEG-TS to fragmented MP4 (:mod:`actimesh.evidence.remux`,
a stream copy: the camera's own H.264 packets) in a thread, into an anonymous temporary
file next to the store's staging area (on disk, not in memory), and streams that: its
length is known, and a recording that cannot be read is refused before any video is sent.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from actimesh.dispatch.auth import (
    Caller,
    Permission,
    Principal,
    Require,
    authenticator,
    client_address,
)
from actimesh.dispatch.context import Ctx
from actimesh.errors import EvidenceError, LedgerError, MediaError
from actimesh.evidence.remux import playable_file, remux_to_mp4
from actimesh.evidence.service import EvidenceEvent, EvidenceFilter, EvidenceService, aid_of
from actimesh.evidence.store import StoredRecording

__all__ = ["router"]

_STATUS = {"not_found": 404}
_PIECE = 256 * 1024

router = APIRouter(tags=["evidence"], dependencies=[Depends(Require(Permission.DISPATCH))])


def _service(ctx: Ctx) -> EvidenceService:
    if ctx.evidence is None:  # pragma: no cover - the router is only added with a store
        raise HTTPException(404, "this dispatch has no evidence store")
    return ctx.evidence


#: A route parameter for the evidence store's service: ``evidence: Evidence``.
Evidence = Annotated[EvidenceService, Depends(_service)]


def _summary(rec: StoredRecording) -> dict[str, Any]:
    m = rec.manifest
    return {
        "evidence_id": rec.evidence_id,
        "device_id": rec.device_id,
        "recording_id": rec.recording_id,
        "device_kind": m.get("device_kind"),
        "aids": list(rec.aids),
        "started_at": rec.started_at,
        "stopped_at": m.get("stopped_at"),
        "first_frame_at": m.get("first_frame_at"),
        "stopped_by": m.get("stopped_by"),
        "cancelled": m.get("cancel") is not None,
        "stealth": bool(m.get("stealth")),
        "bytes": rec.size,
        "files": sorted(rec.files),
        "playable": playable_file(m) is not None,
        "stored_at": rec.receipt.get("stored_at"),
        "ledger_seq": rec.receipt.get("ledger_seq"),
    }


async def _pieces(f: BinaryIO) -> AsyncIterator[bytes]:
    """``f`` read in a thread piece by piece, and closed."""
    try:
        while piece := await asyncio.to_thread(f.read, _PIECE):
            yield piece
    finally:
        f.close()


def _remux(evidence: EvidenceService, rec: StoredRecording, name: str) -> tuple[BinaryIO, int]:
    """``name`` of ``rec`` as fragmented MP4 in an anonymous temporary file; its length.
    Blocking."""
    # The staging area is on the store's local disk; /tmp may be RAM, and a long dash
    # camera recording is gigabytes. The file has no name and goes when it is closed.
    evidence.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    sink = tempfile.TemporaryFile(dir=evidence.staging)  # noqa: SIM115 - closed by the stream
    try:
        with evidence.store.open_file(rec.device_id, rec.recording_id, name) as source:
            remux_to_mp4(source, sink)
        size = sink.tell()
        sink.seek(0)
    except BaseException:
        sink.close()
        raise
    return sink, size


async def _audit(
    request: Request,
    evidence: EvidenceService,
    who: Principal,
    event: EvidenceEvent,
    outcome: str,
    *,
    detail: dict[str, Any],
) -> None:
    component = f"dispatch/{authenticator(request).settings.console_id}"
    body = {
        "action": f"{event.value}.{outcome}",
        "path": request.url.path,
        "client": client_address(request),
        "role": who.role.value,
        "via": who.credential,
        **detail,
    }
    try:
        await evidence.record(event, who.actor, outcome, body, component=component)
    except LedgerError as exc:
        raise HTTPException(
            503,
            "evidence is not available: the audit ledger cannot be written; tell an administrator",
        ) from exc


async def _one(evidence: EvidenceService, device_id: str, recording_id: str) -> StoredRecording:
    try:
        return await evidence.get(device_id, recording_id)
    except EvidenceError as exc:
        raise HTTPException(_STATUS.get(exc.reason, 422), str(exc)) from exc


@router.get("/api/v1/evidence")
async def list_evidence(
    request: Request,
    principal: Caller,
    evidence: Evidence,
    *,
    device: str | None = Query(None, max_length=64),
    aid: str | None = Query(None, max_length=64),
    since: float | None = Query(None, ge=0),
    until: float | None = Query(None, ge=0),
    limit: int = Query(200, ge=1, le=1000),
) -> dict[str, Any]:
    """Stored recordings, oldest first (``since``/``until``: UNIX seconds)."""
    where = EvidenceFilter(device_id=device, aid=aid, since=since, until=until)
    detail = {"filter": where.to_json()}
    await _audit(request, evidence, principal, EvidenceEvent.VIEW, "listed", detail=detail)
    found = await evidence.list(where)
    return {"recordings": [_summary(r) for r in found[:limit]], "truncated": len(found) > limit}


@router.get(
    "/api/v1/evidence/{device_id}/{recording_id}",
)
async def get_evidence(
    request: Request, principal: Caller, evidence: Evidence, device_id: str, recording_id: str
) -> dict[str, Any]:
    """One recording: its signed manifest, the store's receipt, and a fresh check of the
    signature and every SHA-256."""
    rec = await _one(evidence, device_id, recording_id)
    await _audit(
        request,
        evidence,
        principal,
        EvidenceEvent.VIEW,
        "viewed",
        detail={"evidence_id": rec.evidence_id, **aid_of(rec.aids)},
    )
    check = await evidence.verify(rec)
    return {
        **_summary(rec),
        "manifest": rec.manifest,
        "receipt": rec.receipt,
        "verification": {
            "ok": check.ok,
            "problems": list(check.problems),
            "notes": list(check.notes),
        },
    }


@router.get(
    "/api/v1/evidence/{device_id}/{recording_id}/files/{name}",
)
async def download_evidence(
    request: Request,
    principal: Caller,
    evidence: Evidence,
    *,
    device_id: str,
    recording_id: str,
    name: str,
) -> StreamingResponse:
    """A file of the recording, as stored (``Content-Disposition: attachment``)."""
    rec = await _one(evidence, device_id, recording_id)
    if name not in rec.files:
        raise HTTPException(404, f"recording {rec.evidence_id} has no file {name!r}")
    size, sha = rec.files[name]
    await _audit(
        request,
        evidence,
        principal,
        EvidenceEvent.DOWNLOAD,
        "started",
        detail={
            "evidence_id": rec.evidence_id,
            "file": name,
            "bytes": size,
            "sha256": sha,
            **aid_of(rec.aids),
        },
    )
    f = await asyncio.to_thread(evidence.store.open_file, device_id, recording_id, name)
    filename = f"{device_id}_{recording_id}_{name}"
    return StreamingResponse(
        _pieces(f),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(size),
            "X-Content-SHA256": sha,
        },
    )


@router.get(
    "/api/v1/evidence/{device_id}/{recording_id}/play",
)
async def play_evidence(
    request: Request, principal: Caller, evidence: Evidence, *, device_id: str, recording_id: str
) -> StreamingResponse:
    """The recording's H.264 video as fragmented MP4 for a ``<video>`` element (the
    same pictures, timestamps from 0); 415 for a recording that is not H.264 video."""
    rec = await _one(evidence, device_id, recording_id)
    name = playable_file(rec.manifest)
    if name is None or name not in rec.files:
        raise HTTPException(
            415,
            f"recording {rec.evidence_id} is not H.264 video and cannot be played "
            "here; download its files instead",
        )
    size, sha = rec.files[name]
    await _audit(
        request,
        evidence,
        principal,
        EvidenceEvent.VIEW,
        "played",
        detail={
            "evidence_id": rec.evidence_id,
            "file": name,
            "bytes": size,
            "sha256": sha,
            **aid_of(rec.aids),
        },
    )
    try:
        mp4, length = await asyncio.to_thread(_remux, evidence, rec, name)
    except (MediaError, EvidenceError) as exc:
        raise HTTPException(
            422,
            f"recording {rec.evidence_id} cannot be played ({exc}); download "
            f"{name} and open it in a video player",
        ) from exc
    return StreamingResponse(
        _pieces(mp4),
        media_type="video/mp4",
        headers={"Content-Length": str(length), "X-Source-SHA256": sha},
    )
