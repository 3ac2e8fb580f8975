"""The route guard: which routes are public, and what each other one requires.

The gate (:mod:`._gate`) already refuses callers without credentials everywhere but the
public routes; :class:`Require` is how a route states the permission it needs, and
:func:`check_guarded` refuses to serve an app with a route that states none, at start-up
rather than in a review.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from starlette.requests import HTTPConnection
from starlette.routing import Mount

from actimesh.dispatch.auth._authenticator import SAFE_METHODS, Authenticator
from actimesh.dispatch.auth._principal import NEEDS, Permission, Principal, principal_of

__all__ = [
    "PUBLIC_PREFIXES",
    "PUBLIC_ROUTES",
    "Auth",
    "Caller",
    "Require",
    "authenticator",
    "caller",
    "check_guarded",
    "is_public",
]

#: Reached without credentials: the page and what it loads, the login (and "am I logged
#: in?", which the page asks first), health, the spec.
PUBLIC_ROUTES = frozenset(
    {
        ("GET", "/"),
        ("GET", "/api/v1/health"),
        ("GET", "/openapi.json"),
        ("POST", "/api/v1/session"),
        ("GET", "/api/v1/session"),
    }
)
PUBLIC_PREFIXES = (
    "/static/",
    "/vendor/leaflet/",
    "/vendor/markercluster/",
    "/vendor/protomaps-leaflet/",
    "/vendor/pmtiles/",
)


def is_public(method: str, path: str) -> bool:
    """True for the few routes anyone may call."""
    method = "GET" if method == "HEAD" else method
    return (method, path) in PUBLIC_ROUTES or (method == "GET" and path.startswith(PUBLIC_PREFIXES))


def authenticator(conn: HTTPConnection) -> Authenticator:
    """Route dependency: the app's :class:`Authenticator` (``app.state.auth``)."""
    found = getattr(conn.app.state, "auth", None)
    if not isinstance(found, Authenticator):  # pragma: no cover - create_app sets it
        raise TypeError("app.state.auth must be the app's Authenticator")
    return found


#: A route parameter for the app's authenticator (to audit a change): ``auth: Auth``.
Auth = Annotated[Authenticator, Depends(authenticator)]


def _gated(conn: HTTPConnection) -> Principal:
    principal = principal_of(conn)
    if principal is None:
        # Only reachable if the gate was taken out of the stack: fail closed.
        raise HTTPException(401, "log in, or send `Authorization: Bearer <token>`")
    return principal


async def caller(conn: HTTPConnection) -> Principal:
    """Route dependency: who is calling (the route's :class:`Require` checked what)."""
    return _gated(conn)


#: A route parameter for the caller: ``principal: Caller``.
Caller = Annotated[Principal, Depends(caller)]


class Require:
    """A route's guard: 403 unless the caller has ``permission`` (a refused change is
    audited). Put it in the route's ``dependencies=[Depends(...)]`` and take the caller
    as a :data:`Caller` parameter."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, conn: HTTPConnection, auth: Auth) -> Principal:
        principal = _gated(conn)
        if principal.allows(self.permission):
            return principal
        auth.stats.refused["forbidden"] += 1
        error = (
            f"{principal.actor} ({principal.role.value}) may not do this: it needs "
            f"{NEEDS[self.permission]}"
        )
        if conn.scope["type"] == "http" and conn.scope["method"] not in SAFE_METHODS:
            await auth.refused_change(conn, principal, "forbidden", error)
        raise HTTPException(403, error)


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
    # Routes of an included router sit behind one node of ``app.routes``: walk the
    # routes as served, each with the dependencies its routers add.
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount):
            if f"{route.path}/" not in PUBLIC_PREFIXES:
                raise RuntimeError(f"mount {route.path} is not in auth.PUBLIC_PREFIXES")
            continue
        methods: set[str] = context.methods or {"GET"}
        if isinstance(route, APIRoute | APIWebSocketRoute) and any(
            isinstance(d.call, Require) for d in _walk(context.dependant)
        ):
            continue
        path = context.path or "?"
        for method in methods:
            if not is_public(method, path):
                raise RuntimeError(f"route {method} {path} needs a Require(...) dependency")
