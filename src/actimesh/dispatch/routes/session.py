"""Logging in and out of the map, and "who am I" for the page::

    POST   /api/v1/session            log in (JSON user name and password) → cookie
    GET    /api/v1/session            who am I (and the page's CSRF token)
    DELETE /api/v1/session            log out

The login is JSON only: a cross-site form cannot send JSON without a CORS preflight, so
a login cannot be forged from another site (login CSRF). Failed attempts are limited
(:class:`~actimesh.dispatch.auth.LoginDesk`).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from actimesh.dispatch.auth import (
    Auth,
    Authenticator,
    Caller,
    LoginRefusedError,
    Permission,
    Principal,
    Require,
    principal_of,
)
from actimesh.dispatch.models import ApiError, LoginRequest, SessionOut

__all__ = ["ERRORS", "router"]

#: The error responses of the session and account routes, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ApiError} for s in (401, 403, 404, 409, 422)
}

router = APIRouter(tags=["session"])


async def _json_only(request: Request) -> None:
    # A dependency, so it answers before the body is validated: a cross-site form cannot
    # send JSON without a CORS preflight, so a JSON-only login cannot be forged (login CSRF).
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "send the login as JSON (Content-Type: application/json)")


def _session_out(auth: Authenticator, principal: Principal) -> SessionOut:
    return SessionOut(
        authenticated=True,
        user=principal.name,
        role=principal.role.value,
        via=principal.via,
        telemetry=principal.allows(Permission.TELEMETRY),
        csrf_token=auth.csrf_token(principal),
        idle_timeout_s=auth.settings.session_idle_s if principal.via == "session" else None,
    )


@router.post(
    "/api/v1/session",
    response_model=SessionOut,
    responses={**ERRORS, 415: {"model": ApiError}, 429: {"model": ApiError}},
    dependencies=[Depends(_json_only)],
)
async def login(request: Request, response: Response, body: LoginRequest, auth: Auth) -> SessionOut:
    """Log in: sets the session cookie and returns the CSRF token for the page.

    Failed attempts are limited per user name and per address (then 429 with
    ``Retry-After``); unknown user, disabled user and wrong password get the same 401.
    """
    try:
        principal, session_id = await auth.login(request, body.username, body.password)
    except LoginRefusedError as exc:
        headers = None
        if exc.retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        raise HTTPException(exc.status, exc.message, headers=headers) from None
    response.headers["Set-Cookie"] = auth.session_cookie(request, session_id)
    return _session_out(auth, principal)


@router.get("/api/v1/session", response_model=SessionOut)
async def whoami(request: Request, auth: Auth) -> SessionOut:
    """The caller: name, role, and (logged-in pages) the CSRF token; or
    ``authenticated: false`` (the page asks this first, so it is public)."""
    principal = principal_of(request)
    return SessionOut(authenticated=False) if principal is None else _session_out(auth, principal)


@router.delete(
    "/api/v1/session",
    status_code=204,
    responses=ERRORS,
    dependencies=[Depends(Require(Permission.READ))],
)
async def logout(request: Request, principal: Caller, auth: Auth) -> Response:
    """Log out: the session ends on the server and the cookie is cleared."""
    if principal.via != "session":
        raise HTTPException(
            400,
            "an API token is not a session: an admin revokes it (DELETE "
            "/api/v1/tokens/{id} or `actimesh tokens revoke`)",
        )
    await auth.logout(request, principal)
    return Response(status_code=204, headers={"Set-Cookie": auth.clear_cookie(request)})
