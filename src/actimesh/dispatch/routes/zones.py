"""Dispatcher-initiated activations: every camera within a radius of a point.

A zone is published as a trigger event and goes through the engine, its
``dispatch_zone`` rule and the ledger like any other: the dispatch never commands a
camera itself. The caller is who initiated it, audited with the activation's id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from actimesh.dispatch.auth import Caller, Permission, Require
from actimesh.dispatch.context import Ctx
from actimesh.dispatch.models import ZoneAccepted, ZoneRequest
from actimesh.dispatch.routes.errors import ERRORS
from actimesh.errors import BrokerError

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(Require(Permission.DISPATCH))])


@router.post(
    "/api/v1/zones",
    status_code=202,
    response_model=ZoneAccepted,
    responses={**ERRORS, 201: {"model": ZoneAccepted}},
)
async def zone(
    request: Request,
    body: ZoneRequest,
    response: Response,
    principal: Caller,
    *,
    ctx: Ctx,
    wait: Annotated[
        float, Query(ge=0, le=10, description="Seconds to wait for the activation")
    ] = 0.0,
) -> ZoneAccepted:
    """Activate every camera within ``radius_m`` of a point, as the caller.

    Goes through the engine, its ``dispatch_zone`` rule and the ledger like any
    trigger (``initiated_by`` = the authenticated caller, with ``dispatcher`` when a
    token acts for someone). 202 when published; with ``wait``, 201 and the live
    activation once the engine has decided."""
    settings = ctx.settings
    by = principal.actor
    if body.dispatcher is not None and body.dispatcher != by:
        by = f"{body.dispatcher} via {by}"
    async with ctx.auth.change(
        request,
        principal,
        "zone.create",
        lat=body.lat,
        lon=body.lon,
        radius_m=body.radius_m,
        call_id=body.call_id,
        initiated_by=by,
    ) as record:
        if body.radius_m > settings.zone_max_radius_m:
            raise HTTPException(
                422, f"radius_m: at most {settings.zone_max_radius_m:g} m on this console"
            )
        try:
            order = await ctx.feed.publish_zone(
                lat=body.lat,
                lon=body.lon,
                radius_m=body.radius_m,
                dispatcher=by,
                call_id=body.call_id,
            )
        except BrokerError as exc:
            raise HTTPException(503, f"zone not sent: {exc}") from exc
        # The activation's id ties this record to it: exported and kept with it.
        record["aid"] = order.aid
    found = await ctx.wait_for_activation(order.aid, wait) if wait > 0 else None
    if found is not None:
        response.status_code = 201
    return ZoneAccepted(
        aid=order.aid,
        eid=order.eid,
        source=order.source,
        status_url=f"/api/v1/activations/{order.aid}",
        activation=found,
    )
