"""The dispatchers' own work on an incident: acknowledging it or one of its alerts, and
notes.

Each is a record of its own type in the ledger's hash chain (``dispatch_ack``,
``incident_note``), with who and when, written through the dispatch's audit connection
and tied to the activation by its id, so it is exported and kept with it. The ledger is
the truth: a request whose record could not be written is answered 503 and changes
nothing on the map. Acknowledging twice is harmless: the first acknowledgement is
returned (200) and nothing is written.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from actimesh.dispatch.auth import Caller, Permission, Require
from actimesh.dispatch.context import Ctx
from actimesh.dispatch.models import DispatcherAck, NoteOut, NoteRequest, Workflow
from actimesh.dispatch.routes.errors import ERRORS
from actimesh.errors import LedgerError
from actimesh.ledger import EventType

__all__ = ["router"]

router = APIRouter()
_WRITE = [Depends(Require(Permission.DISPATCH))]


async def _known(ctx: Ctx, aid: str) -> None:
    if await ctx.ledger.record(aid) is None:
        raise HTTPException(404, f"no activation {aid!r} in the ledger (yet)")


async def _write(ctx: Ctx, event: EventType, by: str, outcome: str, body: dict[str, Any]) -> int:
    try:
        return await ctx.auth.audit.record(event, by, outcome, body)
    except LedgerError as exc:
        raise HTTPException(
            503, "not recorded: the ledger cannot be written; try again or tell an administrator"
        ) from exc


async def _acknowledge(
    request: Request,
    response: Response,
    ctx: Ctx,
    *,
    by: str,
    aid: str,
    alert_id: str | None,
) -> DispatcherAck:
    done = await ctx.ledger.workflow(aid)
    for ack in done.acks:
        if ack.alert_id == alert_id:
            response.status_code = 200
            return ack
    ts = ctx.clock()
    body = {
        "aid": aid,
        "alert_id": alert_id,
        "by": by,
        "ts": ts,
        "client": request.client.host if request.client is not None else None,
    }
    seq = await _write(ctx, EventType.DISPATCH_ACK, by, "alert" if alert_id else "incident", body)
    ctx.state.acknowledge(aid, alert_id, by, ts)
    return DispatcherAck(aid=aid, alert_id=alert_id, by=by, ts=ts, seq=seq)


@router.get(
    "/api/v1/activations/{aid}/workflow",
    response_model=Workflow,
    responses=ERRORS,
    dependencies=[Depends(Require(Permission.READ))],
)
async def workflow(aid: str, ctx: Ctx) -> Workflow:
    """Who acknowledged the incident and its alerts, and the notes on it (ledger)."""
    await _known(ctx, aid)
    return await ctx.ledger.workflow(aid)


@router.post(
    "/api/v1/activations/{aid}/ack",
    status_code=201,
    response_model=DispatcherAck,
    responses={**ERRORS, 200: {"model": DispatcherAck}},
    dependencies=_WRITE,
)
async def ack_incident(
    aid: str, request: Request, response: Response, principal: Caller, ctx: Ctx
) -> DispatcherAck:
    """Acknowledge an incident as the caller: 201 and the ledger record, or 200 and the
    first acknowledgement if it was acknowledged already."""
    await _known(ctx, aid)
    return await _acknowledge(request, response, ctx, by=principal.actor, aid=aid, alert_id=None)


@router.post(
    "/api/v1/alerts/{alert_id}/ack",
    status_code=201,
    response_model=DispatcherAck,
    responses={**ERRORS, 200: {"model": DispatcherAck}},
    dependencies=_WRITE,
)
async def ack_alert(
    alert_id: str, request: Request, response: Response, principal: Caller, ctx: Ctx
) -> DispatcherAck:
    """Acknowledge one alert of the live map (its ``id``) as the caller."""
    alert = ctx.state.alerts.get(alert_id)
    if alert is None:
        raise HTTPException(
            404, f"no alert {alert_id!r} on the live map; the live feed lists them with their id"
        )
    if alert.aid is None:
        raise HTTPException(
            422, f"alert {alert_id!r} is about no activation; the engine's log has it"
        )
    return await _acknowledge(
        request, response, ctx, by=principal.actor, aid=alert.aid, alert_id=alert_id
    )


@router.post(
    "/api/v1/activations/{aid}/notes",
    status_code=201,
    response_model=NoteOut,
    responses=ERRORS,
    dependencies=_WRITE,
)
async def add_note(aid: str, body: NoteRequest, principal: Caller, ctx: Ctx) -> NoteOut:
    """Add a note to an incident as the caller (kept in the ledger with it)."""
    await _known(ctx, aid)
    ts = ctx.clock()
    by = principal.actor
    seq = await _write(
        ctx, EventType.INCIDENT_NOTE, by, "ok", {"aid": aid, "by": by, "ts": ts, "text": body.text}
    )
    return NoteOut(aid=aid, by=by, ts=ts, text=body.text, seq=seq)
