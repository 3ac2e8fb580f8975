"""The resumable upload API a docked camera offloads its recordings to, over HTTP.

A device authenticates every request with HTTP Basic (its device id and broker password,
:mod:`.credentials`); it may only upload its own recordings. One recording at a time::

    POST /api/v1/evidence/uploads                         the signed manifest.json (body)
         → 201 {"state": "uploading", "upload_id", "files": [{"name", "bytes", "offset"}],
                "max_chunk_bytes"}
         → 200 {"state": "stored", "receipt"}            already stored: nothing to send
    HEAD /api/v1/evidence/uploads/{upload_id}/files/{name}
         → 200, Upload-Offset: bytes the store holds, Upload-Length: the file's size
    PUT  /api/v1/evidence/uploads/{upload_id}/files/{name}
         Content-Range: bytes START-END/TOTAL               START must be the offset
         → 200 {"offset"}; 409 with Upload-Offset if START is not the offset
    POST /api/v1/evidence/uploads/{upload_id}/commit
         → 200 the receipt; 422 if a file's SHA-256 does not match the signed manifest

What each step checks and keeps is decided by :class:`~actimesh.evidence.upload.Uploads`;
this module authenticates the device and maps answers and refusals to status codes and
headers, so the protocol's rules stay free of HTTP.
:class:`~actimesh.evidence.upload_server.UploadServer` serves it. Every error body is
``{"error": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from actimesh import listener
from actimesh.errors import ActimeshError, EvidenceError
from actimesh.evidence.credentials import UploaderIdentity
from actimesh.evidence.upload import UPLOADS_PATH, OffsetConflictError, Uploads

__all__ = ["create_upload_app"]

_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "invalid": 422,
    "too_many": 429,
    "unavailable": 503,
    "insufficient_storage": 507,
}


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep and user and password else None


async def _device(request: Request) -> UploaderIdentity:
    """The authenticated device (HTTP Basic), or 401."""
    uploads: Uploads = request.app.state.uploads
    given = _basic(request)
    who = None
    if given is not None:
        device, password = given
        client = request.client.host if request.client is not None else "unknown"
        wait = uploads.limiter.blocked_for(device, client)
        if wait > 0:
            raise StarletteHTTPException(
                429,
                f"too many failed checks for {device[:64]!r}; try again in {math.ceil(wait)} s",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        started = uploads.limiter.begin(device, client)
        who = await asyncio.to_thread(uploads.service.keys.authenticate, device, password)
        if who is not None:
            uploads.limiter.succeeded(device, client, started)
    if who is None:
        raise StarletteHTTPException(
            401,
            "send Authorization: Basic with the device id and its broker password",
            headers={"WWW-Authenticate": 'Basic realm="actimesh-evidence"'},
        )
    return who


_Device = Annotated[UploaderIdentity, Depends(_device)]


def create_upload_app(uploads: Uploads) -> FastAPI:
    """The device-facing upload API (see the module docstring)."""
    app = FastAPI(title="actimesh evidence uploads", docs_url=None, redoc_url=None)
    service = uploads.service
    app.state.uploads = uploads
    settings = service.settings
    app.add_middleware(
        listener.BodyLimit,
        max_bytes=max(settings.max_chunk_bytes, settings.max_manifest_bytes),
        gap_timeout_s=settings.client_timeout_s,
    )

    @app.exception_handler(EvidenceError)
    async def _refused(_: Request, exc: EvidenceError) -> JSONResponse:
        headers = (
            {"Upload-Offset": str(exc.offset)} if isinstance(exc, OffsetConflictError) else None
        )
        return JSONResponse({"error": str(exc)}, _STATUS.get(exc.reason, 400), headers)

    @app.exception_handler(ActimeshError)
    async def _unavailable(_: Request, exc: ActimeshError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 503)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {exc.errors()[0].get('msg', '')}"}, 422)

    @app.post(UPLOADS_PATH)
    async def create(request: Request, who: _Device) -> JSONResponse:
        data = await _bounded_body(request, service.settings.max_manifest_bytes)
        answer = await uploads.create(who, data)
        return JSONResponse(answer, 200 if answer["state"] == "stored" else 201)

    @app.head(UPLOADS_PATH + "/{upload_id}/files/{name}")
    async def offset(upload_id: str, name: str, who: _Device) -> Response:
        held, size = await uploads.offset(who, upload_id, name)
        return Response(headers={"Upload-Offset": str(held), "Upload-Length": str(size)})

    @app.put(UPLOADS_PATH + "/{upload_id}/files/{name}")
    async def put(upload_id: str, name: str, request: Request, who: _Device) -> JSONResponse:
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > service.settings.max_chunk_bytes
        ):
            raise EvidenceError(
                "too_large",
                "a chunk may be at most "
                f"{service.settings.max_chunk_bytes} bytes; send smaller ones",
            )
        try:
            held = await uploads.write(
                who, upload_id, name, request.headers.get("content-range", ""), request.stream()
            )
        except ClientDisconnect:
            return JSONResponse({"error": "the connection was cut; HEAD and resume"}, 400)
        return JSONResponse({"offset": held})

    @app.post(UPLOADS_PATH + "/{upload_id}/commit")
    async def commit(upload_id: str, who: _Device) -> JSONResponse:
        return JSONResponse(await uploads.commit(who, upload_id))

    return app


async def _bounded_body(request: Request, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise EvidenceError("too_large", f"the manifest is over {limit} bytes")
        parts.append(piece)
    return b"".join(parts)
