"""The live views: the map's WebSocket and the integrators' Server-Sent Events.

Both are long-lived, so both are audited when they open, and both check every
``live_recheck_s`` that the caller's session or token is still good: a revoked token or
a logged-out dispatcher stops watching within that time, not when they close the tab.
A client too slow to keep up is cut off rather than buffered (:mod:`..hub`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect

from actimesh.dispatch.auth import Authenticator, Caller, Permission, Principal, Require
from actimesh.dispatch.context import Ctx, EventFrame
from actimesh.dispatch.hub import HubFullError, Subscriber
from actimesh.dispatch.routes.errors import ERRORS
from actimesh.errors import LedgerError

__all__ = ["router"]

log = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 10.0
_SSE_KEEPALIVE_S = 15.0
#: What the stream's wait yields when nothing came (compared by identity).
_IDLE: EventFrame = ("", "")

router = APIRouter()


class _DisconnectedError(Exception):
    pass


async def _still_valid(auth: Authenticator, principal: Principal) -> bool:
    try:
        return await auth.still_valid(principal)
    except LedgerError:
        # The accounts database hiccuped: keep the view, check again next time.
        log.warning("dispatch: could not re-check %s's credentials", principal.actor)
        return True


async def _recheck(
    ws: WebSocket, auth: Authenticator, principal: Principal, every_s: float
) -> None:
    """Close the view once its session or token is no longer valid."""
    while True:
        await asyncio.sleep(every_s)
        if not await _still_valid(auth, principal):
            with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                async with asyncio.timeout(_SEND_TIMEOUT_S):
                    await ws.close(code=1008, reason="session ended; log in again")
            raise _DisconnectedError


async def _pump(ws: WebSocket, sub: Subscriber[str]) -> None:
    while True:
        frame = await sub.get()
        if frame is None:  # too slow, or shutting down: the client reconnects
            await ws.close(code=1013, reason="resync")
            raise _DisconnectedError
        try:
            async with asyncio.timeout(_SEND_TIMEOUT_S):
                await ws.send_text(frame)
        except (WebSocketDisconnect, TimeoutError, OSError, RuntimeError) as exc:
            raise _DisconnectedError from exc


async def _drain(ws: WebSocket) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise _DisconnectedError


@router.websocket("/api/v1/live", dependencies=[Depends(Require(Permission.TELEMETRY))])
async def live(ws: WebSocket, principal: Caller, ctx: Ctx) -> None:
    """Snapshot on connect, then a delta per frame (see docs/DISPATCH.md).

    Each connection is a view of the live map: audited before it is accepted."""
    auth = ctx.auth
    await auth.view(ws, principal, "live")
    await ws.accept()
    try:
        async with ctx.live.subscribe(first=ctx.snapshot()) as sub:
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_pump(ws, sub), name="ws-send")
                    tg.create_task(_drain(ws), name="ws-receive")
                    tg.create_task(
                        _recheck(ws, auth, principal, ctx.settings.live_recheck_s),
                        name="ws-recheck",
                    )
            except* _DisconnectedError:
                pass
    except HubFullError:
        await ws.close(code=1013, reason="too many clients; try again later")


@router.get(
    "/api/v1/stream",
    summary="Live activations (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
    dependencies=[Depends(Require(Permission.READ))],
)
async def stream(
    request: Request,
    principal: Caller,
    ctx: Ctx,
    types: Annotated[
        str | None, Query(description="Comma-separated trigger types; default all")
    ] = None,
) -> StreamingResponse:
    """``event: activation`` for each new activation and ``event: camera`` for each
    camera outcome (recording, refused, no_ack). Best effort and live only: use the
    webhooks for at-least-once delivery and the ledger query to catch up. The stream
    ends when the caller's token is revoked or session ends."""
    wanted = {t for t in (types or "").split(",") if t}
    if len(ctx.events) >= ctx.events.max_clients:
        raise HTTPException(503, "too many stream clients; try again later")
    auth = ctx.auth
    await auth.view(request, principal, "stream")
    recheck_s = ctx.settings.live_recheck_s
    tick = min(_SSE_KEEPALIVE_S, recheck_s)

    async def frames() -> AsyncIterator[str]:
        checked = time.monotonic()
        try:
            async with ctx.events.subscribe() as sub:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        async with asyncio.timeout(tick):
                            item = await sub.get()
                    except TimeoutError:
                        item = _IDLE
                    if time.monotonic() - checked >= recheck_s:
                        checked = time.monotonic()
                        if not await _still_valid(auth, principal):
                            return
                    if item is _IDLE:
                        yield ": keepalive\n\n"
                        continue
                    if item is None:
                        return
                    event_type, text = item
                    if not wanted or event_type in wanted:
                        yield text
        except HubFullError:
            return

    return StreamingResponse(
        frames(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
    )
