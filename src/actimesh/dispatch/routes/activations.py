"""The activations in the ledger: a query by time, area, type and device, and one
activation with every camera considered and its outcome.

Times are accepted as UNIX seconds or ISO 8601 with a zone (a time without one is
refused rather than guessed); pages are cut by a cursor of the last item's event time
and id, so a page is stable while new activations arrive.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from actimesh.dispatch.auth import Permission, Require
from actimesh.dispatch.context import Ctx
from actimesh.dispatch.models import ActivationDetail, ActivationPage, AtEventFrom
from actimesh.dispatch.queries import ActivationQuery, BBox, Near
from actimesh.dispatch.routes.errors import ERRORS

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(Require(Permission.READ))])


def _time(value: str | None, name: str) -> float | None:
    """UNIX seconds or an RFC 3339 / ISO 8601 time with a zone."""
    if value is None:
        return None
    try:
        ts = float(value)
    except ValueError:
        ts = _iso_time(value, name)
    if not math.isfinite(ts) or ts < 0:
        raise HTTPException(422, f"{name}: must be a time after 1970")
    return ts


def _iso_time(value: str, name: str) -> float:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"{name}: use UNIX seconds or ISO 8601, e.g. 2025-05-01T12:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise HTTPException(422, f"{name}: give a time zone, e.g. 2025-05-01T12:00:00Z")
    return parsed.timestamp()


def _cursor(value: str | None) -> tuple[float, str] | None:
    if value is None:
        return None
    ts, _, aid = value.partition("_")
    try:
        parsed = float(ts)
    except ValueError:
        raise HTTPException(422, "cursor: pass back the next_cursor of the last page") from None
    if not aid or not math.isfinite(parsed):
        raise HTTPException(422, "cursor: pass back the next_cursor of the last page")
    return parsed, aid


@router.get("/api/v1/activations", response_model=ActivationPage, responses=ERRORS)
async def activations(
    *,
    ctx: Ctx,
    since: Annotated[str | None, Query(description="UNIX seconds or ISO 8601")] = None,
    until: Annotated[str | None, Query(description="UNIX seconds or ISO 8601")] = None,
    event_type: Annotated[
        list[str] | None,
        Query(alias="type", description="Trigger type; repeat for several"),
    ] = None,
    device: Annotated[str | None, Query(description="Raised by, or commanded, this device")] = None,
    initiated_by: Annotated[str | None, Query(description="Dispatcher name")] = None,
    bbox: Annotated[
        str | None, Query(description="min_lon,min_lat,max_lon,max_lat (WGS-84)")
    ] = None,
    lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
    radius_m: Annotated[float | None, Query(gt=0, le=50_000)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the last page")] = None,
) -> ActivationPage:
    """Activations from the ledger, newest first (event time)."""
    box = None
    if bbox is not None:
        try:
            box = BBox.parse(bbox)
        except ValueError as exc:
            raise HTTPException(422, f"bbox: {exc}") from None
    near = None
    point = (lat, lon, radius_m)
    if any(v is not None for v in point):
        if lat is None or lon is None or radius_m is None:
            raise HTTPException(422, "lat, lon and radius_m go together (area search)")
        near = Near(lat, lon, radius_m)
    query = ActivationQuery(
        since=_time(since, "since"),
        until=_time(until, "until"),
        types=tuple(event_type or ()),
        device=device,
        initiated_by=initiated_by,
        bbox=box,
        near=near,
        limit=limit + 1,
        after=_cursor(cursor),
    )
    items = await ctx.ledger.search(query)
    more = len(items) > limit
    items = items[:limit]
    next_cursor = f"{items[-1].event_ts!r}_{items[-1].aid}" if more and items else None
    return ActivationPage(items=items, next_cursor=next_cursor)


@router.get("/api/v1/activations/{aid}", response_model=ActivationDetail, responses=ERRORS)
async def activation(aid: str, ctx: Ctx) -> ActivationDetail:
    """One activation: every camera considered, its outcome, and every ack; each camera
    with its call sign and officer (registry) and where it was at the event; the radius
    with the policy's GPS margin (``effective_radius_m``)."""
    found = await ctx.ledger.detail(aid, now=ctx.clock(), ack_timeout_s=ctx.settings.ack_timeout_s)
    if found is None:
        raise HTTPException(404, f"no activation {aid!r} in the ledger (yet)")
    return _with_live(found, ctx)


def _with_live(found: ActivationDetail, ctx: Ctx) -> ActivationDetail:
    """The ledger's answer with what the dispatch knows beside it."""
    state = ctx.state
    live = state.activations.get(found.aid)
    cameras = []
    for cam in found.cameras:
        view = state.devices.get(cam.device_id)
        update: dict[str, object] = {
            "call_sign": view.call_sign if view is not None else None,
            "officer": view.officer if view is not None else None,
        }
        if cam.at_event is None:
            # A row from before the ledger kept positions: the fix the engine judged is
            # the one ``fix_age_s`` before the event, if the tracks still hold it.
            age = cam.fix_age_s or 0.0
            fix = state.tracks.at(cam.device_id, found.event_ts - age, 0.5)
            if fix is None:
                seen = live.cameras.get(cam.device_id) if live is not None else None
                fix = seen.at if seen is not None else None
            if fix is not None:
                update["at_event"] = (fix.lat, fix.lon)
                update["at_event_from"] = AtEventFrom.TRACKS
        cameras.append(cam.model_copy(update=update))
    return found.model_copy(
        update={
            "cameras": cameras,
            "gps_margin_m": ctx.gps_margin_m,
            "effective_radius_m": found.radius_m + ctx.gps_margin_m,
        }
    )
