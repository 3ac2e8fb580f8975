"""The devices the dispatch knows, with their state and position, as the map shows them.

Telemetry is more sensitive than the activations (where every officer is, now), so it
needs the dispatcher role or a token with the telemetry grant.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from actimesh.dispatch.auth import Permission, Require
from actimesh.dispatch.context import Ctx
from actimesh.dispatch.models import DeviceOut
from actimesh.dispatch.routes.errors import ERRORS

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(Require(Permission.TELEMETRY))])


@router.get("/api/v1/devices", response_model=list[DeviceOut], responses=ERRORS)
async def devices(
    ctx: Ctx,
    kind: str | None = None,
    unit: str | None = None,
    status: Annotated[str | None, Query(pattern="^(recording|buffering|offline)$")] = None,
) -> list[dict[str, Any]]:
    """Every device the dispatch knows, with its current state."""
    now = ctx.clock()
    return [
        d.to_json(now, ctx.max_fix_age_s)
        for d in ctx.state.devices.values()
        if (kind is None or (d.kind is not None and d.kind.value == kind))
        and (unit is None or d.unit == unit)
        and (status is None or d.status.value == status)
    ]


@router.get("/api/v1/devices/{device_id}", response_model=DeviceOut, responses=ERRORS)
async def device(device_id: str, ctx: Ctx) -> dict[str, Any]:
    found = ctx.state.devices.get(device_id)
    if found is None:
        raise HTTPException(404, f"no device {device_id!r}; GET /api/v1/devices lists them")
    return found.to_json(ctx.clock(), ctx.max_fix_age_s)
