"""How the dispatch is doing: health for load balancers, metrics for Prometheus.

Health is public (a load balancer has no token) but says only ``ok`` or ``degraded``
with the reasons to a caller without credentials; the agency, engines, counts and the
webhook backlog are for callers who are logged in or send a token.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from actimesh import __version__
from actimesh.dispatch.auth import Permission, Require, principal_of
from actimesh.dispatch.context import Ctx
from actimesh.dispatch.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from actimesh.dispatch.models import Health

__all__ = ["router"]

router = APIRouter()


@router.get(
    "/api/v1/health",
    response_model=Health,
    responses={503: {"model": Health}},
    response_model_exclude_none=True,
)
async def health(request: Request, response: Response, ctx: Ctx) -> Health:
    """``ok``, or ``degraded`` (HTTP 503) with the reasons. Open to anyone (load
    balancers); agency, engines, counts and backlog only for authenticated callers."""
    reasons = []
    if not ctx.feed.connected:
        reasons.append("not connected to the MQTT broker")
    engines = list(ctx.state.engines.values())
    if not any(e["online"] for e in engines):
        reasons.append("no trigger engine online")
    ledger_ok = await ctx.ledger.ping()
    if not ledger_ok:
        reasons.append("activation ledger not readable")
    if ctx.auth.audit.stats.failing:
        reasons.append("audit ledger not writable (changes are not being audited)")
    w = ctx.webhooks.stats
    if reasons:
        response.status_code = 503
    if principal_of(request) is None:
        return Health(status="degraded" if reasons else "ok", reasons=reasons, version=__version__)
    return Health(
        status="degraded" if reasons else "ok",
        reasons=reasons,
        version=__version__,
        agency=ctx.agency,
        mqtt_connected=ctx.feed.connected,
        mqtt_listener=ctx.feed.listener,
        engines=engines,
        devices=ctx.state.counts(),
        clients=len(ctx.live) + len(ctx.events),
        webhooks={"pending": w.pending, "failed": w.failed, "delivered": w.delivered},
    )


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(Require(Permission.READ))])
async def metrics(ctx: Ctx) -> Response:
    return Response(ctx.metrics.render(), media_type=METRICS_CONTENT_TYPE)
