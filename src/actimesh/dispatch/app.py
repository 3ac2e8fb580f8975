"""The dispatch web app: the live map page, its WebSocket, and the integrator API.

``create_app(ctx)`` builds a FastAPI app over the running service's parts, kept in
``app.state`` and handed to the routes by dependency (:mod:`.context`): no globals, two
services in one process share nothing. The routes live in :mod:`.routes`, one module per
area; here they are only put together, behind the middlewares. Routes, and what each
needs (:mod:`.auth`; ``public`` routes take no credentials)::

    GET  /                                   public     the live map page (Leaflet, no CDN)
    POST|GET|DELETE /api/v1/session          public (log in, who am I) / any (log out)
    WS   /api/v1/live                        telemetry  snapshot, then deltas (≤ 4/s)
    GET  /api/v1/stream                      read       Server-Sent Events: activations
    GET  /api/v1/health                      public     ok / degraded (503) with reasons
    GET  /api/v1/devices[/{id}]              telemetry  devices, state and position
    GET  /api/v1/devices/{id}/track          telemetry  its fixes of the last minutes
    GET  /api/v1/activations                 read       ledger query: time, area, type
    GET  /api/v1/activations/{aid}           read       one activation, per-camera outcome
    POST /api/v1/activations/{aid}/ack       dispatch   acknowledge an incident (ledger)
    POST /api/v1/activations/{aid}/notes     dispatch   a note on an incident (ledger)
    GET  /api/v1/activations/{aid}/replay    telemetry  positions and states, -30 s to end
    GET  /api/v1/activations/{aid}/workflow  read       dispatchers' acks and notes (ledger)
    POST /api/v1/alerts/{id}/ack             dispatch   acknowledge an alert (ledger)
    GET  /api/v1/basemap/{name}              read       the PMTiles basemap (range requests)
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

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from actimesh import __version__, listener
from actimesh.dispatch.auth import AuthGate, SecurityHeaders, check_guarded
from actimesh.dispatch.context import AppContext
from actimesh.dispatch.routes import (
    accounts,
    activations,
    basemap,
    devices,
    evidence,
    health,
    live,
    page,
    session,
    tracks,
    webhooks,
    workflow,
    zones,
)
from actimesh.dispatch.routes.errors import add_error_handlers

__all__ = ["create_app"]


def create_app(ctx: AppContext) -> FastAPI:
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
    app.state.ctx = ctx
    app.state.auth = ctx.auth
    settings = ctx.settings
    # Added innermost first: the headers wrap everything, CORS answers preflights before
    # the gate (a preflight carries no credentials), the gate guards the routes.
    app.add_middleware(AuthGate, auth=ctx.auth, gauge=ctx.gauge)
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
    add_error_handlers(app)
    app.include_router(session.router)
    app.include_router(accounts.router)
    if ctx.evidence is not None:
        app.include_router(evidence.router)
    app.include_router(page.router)
    page.mount_static(app, settings)
    for area in (live, health, devices, tracks, activations, workflow, zones, webhooks, basemap):
        app.include_router(area.router)
    check_guarded(app)
    return app
