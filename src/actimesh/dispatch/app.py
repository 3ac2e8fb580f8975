"""The dispatch web app: the live map page, its WebSocket, and the integrator API.

``create_app(ctx)`` builds a FastAPI app over the running service's parts (no globals:
two services in one process do not share anything). Routes, and what each needs
(:mod:`.auth`; ``public`` routes take no credentials)::

    GET  /                                   public     the live map page (Leaflet, no CDN)
    POST|GET|DELETE /api/v1/session          public (log in, who am I) / any (log out)
    WS   /api/v1/live                        telemetry  snapshot, then deltas (≤ 4/s)
    GET  /api/v1/stream                      read       Server-Sent Events: activations
    GET  /api/v1/health                      public     ok / degraded (503) with reasons
    GET  /api/v1/devices[/{id}]              telemetry  devices, state and position
    GET  /api/v1/activations                 read       ledger query: time, area, type
    GET  /api/v1/activations/{aid}           read       one activation, per-camera outcome
    POST /api/v1/zones                       dispatch   dispatcher-initiated activation
    POST|GET /api/v1/webhooks, GET|DELETE /api/v1/webhooks/{id}                admin
    GET  /api/v1/webhooks/{id}/deliveries, GET /api/v1/deliveries/{id}, POST …/retry  admin
    GET|POST /api/v1/users, PATCH|DELETE /api/v1/users/{name}                  admin
    GET|POST /api/v1/tokens, DELETE /api/v1/tokens/{id}                        admin
    GET  /api/v1/evidence[/{dev}/{rec}[/files/{name}]]  dispatch  stored recordings, audited
    GET  /metrics                            read       Prometheus
    GET  /openapi.json                       public     this API, for integrators

Every change is audited in the ledger with who made it and the outcome (:mod:`.audit`).

Every error body is ``{"error": "<one line: what is wrong and how to fix it>"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, WebSocket
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount
from starlette.websockets import WebSocketDisconnect

from actimesh import __version__, listener
from actimesh.dispatch.admin import add_account_routes
from actimesh.dispatch.auth import (
    PUBLIC_PREFIXES,
    Authenticator,
    AuthGate,
    Caller,
    Permission,
    Principal,
    Require,
    SecurityHeaders,
    is_public,
    principal_of,
)
from actimesh.dispatch.evidence import add_evidence_routes
from actimesh.dispatch.feed import Feed
from actimesh.dispatch.hub import Hub, HubFullError, Subscriber
from actimesh.dispatch.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from actimesh.dispatch.metrics import DispatchMetrics
from actimesh.dispatch.models import (
    ActivationDetail,
    ActivationPage,
    ApiError,
    DeliveryOut,
    DeliveryStatus,
    DeviceOut,
    Health,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    ZoneAccepted,
    ZoneRequest,
)
from actimesh.dispatch.outbox import Outbox
from actimesh.dispatch.queries import ActivationQuery, BBox, LedgerReader, Near
from actimesh.dispatch.settings import DispatchSettings
from actimesh.dispatch.state import LiveState
from actimesh.dispatch.webhooks import Webhooks
from actimesh.errors import ActimeshError, BrokerError, LedgerError
from actimesh.evidence.service import EvidenceService
from actimesh.listener import ConnectionGauge

__all__ = ["AppContext", "create_app"]

#: An SSE frame and the trigger type it is about (for per-client filters).
EventFrame = tuple[str, str]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_SEND_TIMEOUT_S = 10.0
_SSE_KEEPALIVE_S = 15.0
#: What the stream's wait yields when nothing came (compared by identity).
_IDLE: EventFrame = ("", "")
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ApiError} for s in (400, 401, 403, 404, 422, 503)
}


@dataclass(frozen=True, slots=True)
class AppContext:
    """The running service's parts that the routes use."""

    settings: DispatchSettings
    agency: str
    max_fix_age_s: float
    event_types: tuple[str, ...]
    state: LiveState
    live: Hub[str]
    events: Hub[EventFrame]
    feed: Feed
    ledger: LedgerReader
    outbox: Outbox
    webhooks: Webhooks
    metrics: DispatchMetrics
    wait_for_activation: Callable[[str, float], Awaitable[dict[str, Any] | None]]
    auth: Authenticator
    clock: Callable[[], float] = time.time
    #: The evidence store's service: the /api/v1/evidence routes exist only with one.
    evidence: EvidenceService | None = None
    #: The listener's open connections: while crowded, only the logged-in get in.
    gauge: ConnectionGauge | None = None

    def config(self) -> dict[str, Any]:
        s = self.settings
        return {
            "agency": self.agency,
            "version": __version__,
            "max_fix_age_s": self.max_fix_age_s,
            "ack_timeout_s": s.ack_timeout_s,
            "tile_url": s.tile_url,
            "tile_attribution": s.tile_attribution,
            "zone_max_radius_m": s.zone_max_radius_m,
            "zone_default_radius_m": s.zone_default_radius_m,
            "event_types": list(self.event_types),
            "retention_s": s.activation_retention_s,
        }

    def snapshot(self) -> str:
        doc = self.state.snapshot(self.clock())
        doc["config"] = self.config()
        doc["connected"] = self.feed.connected
        return json.dumps(doc, separators=(",", ":"))


class _DisconnectedError(Exception):
    pass


def _one_line(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:  # pragma: no cover - pydantic always names one
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return f"the request body is not valid JSON ({reason}); send a JSON object"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'is invalid')}{more}"


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


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _walk(sub)


def check_guarded(app: FastAPI) -> None:
    """Raise if a route is neither public nor guarded by a :class:`Require`.

    The gate already refuses callers without credentials everywhere but the public
    routes; this makes sure each route also says which permission it needs, at start-up
    rather than in a review.
    """
    for route in app.routes:
        if isinstance(route, Mount):
            if f"{route.path}/" not in PUBLIC_PREFIXES:
                raise RuntimeError(f"mount {route.path} is not in auth.PUBLIC_PREFIXES")
            continue
        methods: set[str] = getattr(route, "methods", None) or {"GET"}
        if isinstance(route, APIRoute | APIWebSocketRoute) and any(
            isinstance(d.call, Require) for d in _walk(route.dependant)
        ):
            continue
        path = getattr(route, "path", "?")
        for method in methods:
            if not is_public(method, path):
                raise RuntimeError(f"route {method} {path} needs a Require(...) dependency")


def _csp(settings: DispatchSettings) -> str:
    tiles = f" {settings.tile_origin}" if settings.tile_origin else ""
    # Everything from this server: a CDN reference would fail closed, not load.
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data:{tiles}; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


def _receiver(url: str) -> str:
    # A receiver URL may carry a secret in its query: the audit record keeps the rest.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def create_app(ctx: AppContext) -> FastAPI:  # noqa: PLR0915 - one route table, read top down
    """The FastAPI app over a running dispatch service."""
    app = FastAPI(
        title="actimesh dispatch",
        version=__version__,
        summary="Live camera activations for dispatch consoles and integrators",
        description=(
            "Devices and their state, activations from the ledger with per-camera "
            "outcomes, dispatcher-initiated zones, a live stream, and signed CloudEvents "
            "webhooks. The MQTT activations topic stays the primary feed (see "
            "docs/asyncapi.yaml); docs/DISPATCH.md explains everything here."
        ),
        # The hosted Swagger UI and ReDoc load from a CDN: the map must work offline.
        docs_url=None,
        redoc_url=None,
    )
    settings = ctx.settings
    auth = ctx.auth
    read = Require(auth, Permission.READ)
    telemetry = Require(auth, Permission.TELEMETRY)
    dispatch = Require(auth, Permission.DISPATCH)
    admin = Require(auth, Permission.ADMIN)
    # Added innermost first: the headers wrap everything, CORS answers preflights before
    # the gate (a preflight carries no credentials), the gate guards the routes.
    app.add_middleware(AuthGate, auth=auth, gauge=ctx.gauge)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            # Tokens only: a cross-site page never rides on a dispatcher's cookie.
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(
        listener.BodyLimit,
        max_bytes=settings.max_body_bytes,
        gap_timeout_s=settings.client_timeout_s,
    )
    app.add_middleware(SecurityHeaders, https=settings.public_url_https)
    add_account_routes(app, auth)
    if ctx.evidence is not None:
        add_evidence_routes(app, auth, ctx.evidence)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _one_line(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(ActimeshError)
    async def _unavailable(_: Request, exc: ActimeshError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": _csp(settings), "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.leaflet_dir.is_dir():
        app.mount("/vendor/leaflet", StaticFiles(directory=settings.leaflet_dir), name="leaflet")

    # ------------------------------------------------------------------ live
    @app.websocket("/api/v1/live", dependencies=[Depends(telemetry)])
    async def live(ws: WebSocket, principal: Caller) -> None:
        """Snapshot on connect, then a delta per frame (see docs/DISPATCH.md).

        Each connection is a view of the live map: audited before it is accepted."""
        await auth.view(ws, principal, "live")
        await ws.accept()
        try:
            async with ctx.live.subscribe(first=ctx.snapshot()) as sub:
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(_pump(ws, sub), name="ws-send")
                        tg.create_task(_drain(ws), name="ws-receive")
                        tg.create_task(_recheck(ws, principal), name="ws-recheck")
                except* _DisconnectedError:
                    pass
        except HubFullError:
            await ws.close(code=1013, reason="too many clients; try again later")

    async def _still_valid(principal: Principal) -> bool:
        try:
            return await auth.still_valid(principal)
        except LedgerError:
            # The accounts database hiccuped: keep the view, check again next time.
            log.warning("dispatch: could not re-check %s's credentials", principal.actor)
            return True

    async def _recheck(ws: WebSocket, principal: Principal) -> None:
        """Close the view once its session or token is no longer valid."""
        while True:
            await asyncio.sleep(settings.live_recheck_s)
            if not await _still_valid(principal):
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

    @app.get(
        "/api/v1/stream",
        summary="Live activations (Server-Sent Events)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS},
        dependencies=[Depends(read)],
    )
    async def stream(
        request: Request,
        principal: Caller,
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
        await auth.view(request, principal, "stream")
        tick = min(_SSE_KEEPALIVE_S, settings.live_recheck_s)

        async def frames() -> Any:
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
                        if time.monotonic() - checked >= settings.live_recheck_s:
                            checked = time.monotonic()
                            if not await _still_valid(principal):
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

    # ------------------------------------------------------------------ health
    @app.get(
        "/api/v1/health",
        response_model=Health,
        responses={503: {"model": Health}},
        response_model_exclude_none=True,
    )
    async def health(request: Request, response: Response) -> Health:
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
        if auth.audit.stats.failing:
            reasons.append("audit ledger not writable (changes are not being audited)")
        w = ctx.webhooks.stats
        if reasons:
            response.status_code = 503
        if principal_of(request) is None:
            return Health(
                status="degraded" if reasons else "ok", reasons=reasons, version=__version__
            )
        return Health(
            status="degraded" if reasons else "ok",
            reasons=reasons,
            version=__version__,
            agency=ctx.agency,
            mqtt_connected=ctx.feed.connected,
            engines=engines,
            devices=ctx.state.counts(),
            clients=len(ctx.live) + len(ctx.events),
            webhooks={"pending": w.pending, "failed": w.failed, "delivered": w.delivered},
        )

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(read)])
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------------ devices
    @app.get(
        "/api/v1/devices",
        response_model=list[DeviceOut],
        responses=_ERRORS,
        dependencies=[Depends(telemetry)],
    )
    async def devices(
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

    @app.get(
        "/api/v1/devices/{device_id}",
        response_model=DeviceOut,
        responses=_ERRORS,
        dependencies=[Depends(telemetry)],
    )
    async def device(device_id: str) -> dict[str, Any]:
        found = ctx.state.devices.get(device_id)
        if found is None:
            raise HTTPException(404, f"no device {device_id!r}; GET /api/v1/devices lists them")
        return found.to_json(ctx.clock(), ctx.max_fix_age_s)

    # ------------------------------------------------------------------ activations
    @app.get(
        "/api/v1/activations",
        response_model=ActivationPage,
        responses=_ERRORS,
        dependencies=[Depends(read)],
    )
    async def activations(
        *,
        since: Annotated[str | None, Query(description="UNIX seconds or ISO 8601")] = None,
        until: Annotated[str | None, Query(description="UNIX seconds or ISO 8601")] = None,
        event_type: Annotated[
            list[str] | None,
            Query(alias="type", description="Trigger type; repeat for several"),
        ] = None,
        device: Annotated[
            str | None, Query(description="Raised by, or commanded, this device")
        ] = None,
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

    @app.get(
        "/api/v1/activations/{aid}",
        response_model=ActivationDetail,
        responses=_ERRORS,
        dependencies=[Depends(read)],
    )
    async def activation(aid: str) -> ActivationDetail:
        """One activation: every camera considered, its outcome, and every ack."""
        found = await ctx.ledger.detail(aid, now=ctx.clock(), ack_timeout_s=settings.ack_timeout_s)
        if found is None:
            raise HTTPException(404, f"no activation {aid!r} in the ledger (yet)")
        return found

    # ------------------------------------------------------------------ zones
    @app.post(
        "/api/v1/zones",
        status_code=202,
        response_model=ZoneAccepted,
        responses={**_ERRORS, 201: {"model": ZoneAccepted}},
        dependencies=[Depends(dispatch)],
    )
    async def zone(
        request: Request,
        body: ZoneRequest,
        response: Response,
        principal: Caller,
        wait: Annotated[
            float, Query(ge=0, le=10, description="Seconds to wait for the activation")
        ] = 0.0,
    ) -> ZoneAccepted:
        """Activate every camera within ``radius_m`` of a point, as the caller.

        Goes through the engine, its ``dispatch_zone`` rule and the ledger like any
        trigger (``initiated_by`` = the authenticated caller, with ``dispatcher`` when a
        token acts for someone). 202 when published; with ``wait``, 201 and the live
        activation once the engine has decided."""
        by = principal.actor
        if body.dispatcher is not None and body.dispatcher != by:
            by = f"{body.dispatcher} via {by}"
        async with auth.change(
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

    # ------------------------------------------------------------------ webhooks
    @app.post(
        "/api/v1/webhooks",
        status_code=201,
        response_model=WebhookCreated,
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    async def add_webhook(
        request: Request, body: WebhookCreate, principal: Caller
    ) -> WebhookCreated:
        """Register a receiver. The response carries its signing secret, once."""
        async with auth.change(
            request, principal, "webhook.add", url=_receiver(body.url), event_types=body.event_types
        ) as record:
            endpoint = await ctx.outbox.add_endpoint(
                url=body.url,
                description=body.description,
                event_types=body.event_types,
                now=ctx.clock(),
            )
            record["webhook"] = endpoint.id
        return WebhookCreated(
            id=endpoint.id,
            url=endpoint.url,
            description=endpoint.description,
            event_types=list(endpoint.event_types),
            created_ts=endpoint.created_ts,
            pending=0,
            delivered=0,
            failed=0,
            secret=endpoint.secret,
        )

    @app.get(
        "/api/v1/webhooks",
        response_model=list[WebhookOut],
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    async def webhooks() -> list[WebhookOut]:
        return await ctx.outbox.endpoints()

    async def _endpoint(webhook_id: str) -> WebhookOut:
        found = await ctx.outbox.endpoint(webhook_id)
        if found is None:
            raise HTTPException(404, f"no webhook {webhook_id!r}; GET /api/v1/webhooks lists them")
        return found

    @app.get(
        "/api/v1/webhooks/{webhook_id}",
        response_model=WebhookOut,
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    async def webhook(webhook_id: str) -> WebhookOut:
        return await _endpoint(webhook_id)

    @app.delete(
        "/api/v1/webhooks/{webhook_id}",
        status_code=204,
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    async def delete_webhook(request: Request, webhook_id: str, principal: Caller) -> Response:
        """Stop deliveries to this receiver and forget them."""
        async with auth.change(request, principal, "webhook.delete", webhook=webhook_id):
            if not await ctx.outbox.delete_endpoint(webhook_id):
                raise HTTPException(
                    404, f"no webhook {webhook_id!r}; GET /api/v1/webhooks lists them"
                )
        return Response(status_code=204)

    @app.get(
        "/api/v1/webhooks/{webhook_id}/deliveries",
        response_model=list[DeliveryOut],
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    async def deliveries(
        webhook_id: str,
        status: DeliveryStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[DeliveryOut]:
        """This receiver's deliveries, newest first, with attempts and last error."""
        await _endpoint(webhook_id)
        return await ctx.outbox.deliveries(webhook_id, status=status, limit=limit)

    @app.get(
        "/api/v1/deliveries/{delivery_id}",
        response_model=DeliveryOut,
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    async def delivery(delivery_id: str) -> DeliveryOut:
        found = await ctx.outbox.delivery(delivery_id)
        if found is None:
            raise HTTPException(404, f"no delivery {delivery_id!r}")
        return found

    @app.post(
        "/api/v1/deliveries/{delivery_id}/retry",
        status_code=202,
        response_model=DeliveryOut,
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    async def retry(request: Request, delivery_id: str, principal: Caller) -> DeliveryOut:
        """Send a pending or failed delivery again now (same delivery id)."""
        async with auth.change(request, principal, "delivery.retry", delivery=delivery_id):
            if not await ctx.outbox.retry(delivery_id, now=ctx.clock()):
                raise HTTPException(404, f"no undelivered delivery {delivery_id!r}")
        ctx.webhooks.wake()
        found = await ctx.outbox.delivery(delivery_id)
        if found is None:  # pragma: no cover - deleted between the two calls
            raise HTTPException(404, f"no delivery {delivery_id!r}")
        return found

    check_guarded(app)
    return app
