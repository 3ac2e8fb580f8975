"""Where devices have been: a followed unit's short track, and an incident's replay.

Both come from the dispatch's ring of recent fixes per device (:mod:`..tracks`), with
the recording state each fix reported; the replay adds the ledger's decisions and
acknowledgements. Like the live positions they need the dispatcher role or a token with
the telemetry grant.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from actimesh.dispatch.auth import Permission, Require
from actimesh.dispatch.context import Ctx
from actimesh.dispatch.models import AtEventFrom, CameraOutcome, Replay, ReplayDevice, TrackOut
from actimesh.dispatch.routes.errors import ERRORS
from actimesh.dispatch.tracks import Fix

__all__ = ["LEAD_S", "MAX_REPLAY_S", "router"]

router = APIRouter(dependencies=[Depends(Require(Permission.TELEMETRY))])

#: A replay starts this long before the event.
LEAD_S = 30.0
#: ... and shows at most this long after it.
MAX_REPLAY_S = 1800.0


@router.get("/api/v1/devices/{device_id}/track", response_model=TrackOut, responses=ERRORS)
async def track(
    device_id: str,
    ctx: Ctx,
    seconds: Annotated[float, Query(gt=0, le=900, description="How far back")] = 120.0,
) -> TrackOut:
    """A device's fixes of the last ``seconds`` (by its own clock), oldest first."""
    if device_id not in ctx.state.devices:
        raise HTTPException(404, f"no device {device_id!r}; GET /api/v1/devices lists them")
    now = ctx.clock()
    points = ctx.state.tracks.between(device_id, now - seconds, now + 60.0)
    return TrackOut(
        device_id=device_id,
        points=[(p.ts, p.lat, p.lon, p.acc, p.state) for p in points if p.ts >= now - seconds],
    )


def _stopped(points: list[Fix], after: float) -> float | None:
    """When a camera that recorded after ``after`` went back to buffering (or off);
    None if it is still recording at its last fix or never recorded."""
    recorded = False
    for p in points:
        if p.ts < after:
            continue
        if p.state == "recording":
            recorded = True
        elif recorded:
            return p.ts
    return None


def _at_event(
    decision: CameraOutcome | None, points: list[Fix], ets: float
) -> tuple[tuple[float, float] | None, AtEventFrom | None]:
    """Where a camera was at the event: the ledger's position of the fix the engine
    judged, else (a row from before positions were kept) the track's fix then."""
    if decision is not None and decision.at_event is not None:
        return decision.at_event, AtEventFrom.LEDGER
    if decision is None:
        return None, None
    judged = ets - (decision.fix_age_s or 0.0)
    before = [p for p in points if p.ts <= judged + 0.5]
    if not before:
        return None, None
    return (before[-1].lat, before[-1].lon), AtEventFrom.TRACKS


@router.get("/api/v1/activations/{aid}/replay", response_model=Replay, responses=ERRORS)
async def replay(aid: str, ctx: Ctx) -> Replay:
    """An incident from 30 s before the event to its end (the last commanded camera back
    to buffering, at most 30 min): each considered camera's fixes with its recording
    state, and the ledger's acknowledgements."""
    now = ctx.clock()
    detail = await ctx.ledger.detail(aid, now=now, ack_timeout_s=ctx.settings.ack_timeout_s)
    if detail is None:
        raise HTTPException(404, f"no activation {aid!r} in the ledger (yet)")
    ets = detail.event_ts
    start, horizon = ets - LEAD_S, min(now, ets + MAX_REPLAY_S)
    tracks = ctx.state.tracks
    ids = [c.device_id for c in detail.cameras]
    if detail.src not in ids:
        ids.append(detail.src)
    commanded = {c.device_id: c for c in detail.cameras if c.commanded}
    devices: list[ReplayDevice] = []
    ends = [ets + LEAD_S, *(a.received_ts for a in detail.acks)]
    running = False
    oldest: float | None = None
    for device_id in ids:
        points = tracks.between(device_id, start, horizon)
        if points:
            oldest = points[0].ts if oldest is None else min(oldest, points[0].ts)
        cam = commanded.get(device_id)
        if cam is not None and points:
            stop = _stopped(points, ets)
            if stop is not None:
                ends.append(stop)
            elif points[-1].state == "recording":
                running = True
        view = ctx.state.devices.get(device_id)
        decision = next((c for c in detail.cameras if c.device_id == device_id), None)
        at_event, at_from = _at_event(decision, points, ets)
        rows = [(p.ts, p.lat, p.lon, p.acc, p.state) for p in points]
        if decision is not None and at_event is not None:
            judged = ets - (decision.fix_age_s or 0.0)
            # The judged fix itself, if the tracks hold it, has the judged time (to float
            # rounding); any later fix is somewhere else, however soon after it came.
            if not rows or rows[0][0] > judged + 1e-3:
                # The tracks do not reach back to the event (older than their horizon,
                # or the dispatch restarted): the ledger says where the fix the engine
                # judged put the camera.
                rows.insert(0, (judged, at_event[0], at_event[1], decision.acc_m, None))
        devices.append(
            ReplayDevice(
                device_id=device_id,
                points=rows,
                call_sign=view.call_sign if view is not None else None,
                officer=view.officer if view is not None else None,
                kind=view.kind.value if view is not None and view.kind is not None else None,
                commanded=cam is not None,
                reason=decision.reason if decision is not None else "source",
                at_event=at_event,
                at_event_from=at_from,
            )
        )
    end = horizon if running else min(horizon, max(ends))
    return Replay(
        aid=aid,
        start=start,
        event_ts=ets,
        end=max(end, ets),
        lat=detail.lat,
        lon=detail.lon,
        radius_m=detail.radius_m,
        effective_radius_m=detail.radius_m + ctx.gps_margin_m,
        devices=devices,
        acks=detail.acks,
        tracked_since=oldest,
    )
