"""Routes for logging in and out, and for admins to manage users and API tokens::

    POST   /api/v1/session            log in (JSON user name and password) → cookie
    GET    /api/v1/session            who am I (and the page's CSRF token)
    DELETE /api/v1/session            log out
    GET|POST /api/v1/users, PATCH|DELETE /api/v1/users/{name}          admin
    GET|POST /api/v1/tokens, DELETE /api/v1/tokens/{token_id}          admin

``actimesh users`` and ``actimesh tokens`` do the same from the command line. Every change
is audited (``account_change``) with who made it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response

from actimesh.dispatch.accounts import Role
from actimesh.dispatch.audit import AuditEvent
from actimesh.dispatch.auth import (
    Authenticator,
    Caller,
    LoginRefusedError,
    Permission,
    Principal,
    Require,
    principal_of,
)
from actimesh.dispatch.models import (
    ApiError,
    LoginRequest,
    SessionOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserCreated,
    UserOut,
    UserUpdate,
)
from actimesh.errors import AccountError

__all__ = ["add_account_routes"]

_STATUS = {"unknown": 404, "exists": 409, "last_admin": 409, "invalid": 422}
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ApiError} for s in (401, 403, 404, 409, 422)
}


@contextlib.contextmanager
def _as_http() -> Iterator[None]:
    try:
        yield
    except AccountError as exc:
        raise HTTPException(_STATUS.get(exc.reason, 422), str(exc)) from exc


async def _json_only(request: Request) -> None:
    # A dependency, so it answers before the body is validated: a cross-site form cannot
    # send JSON without a CORS preflight, so a JSON-only login cannot be forged (login CSRF).
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "send the login as JSON (Content-Type: application/json)")


def add_account_routes(app: FastAPI, auth: Authenticator) -> None:  # noqa: PLR0915
    """Add the session, user and token routes over ``auth``'s account store to ``app``.

    Added to the app itself rather than through an ``APIRouter``, so that ``app.routes``
    lists them (the route guard check and the security tests walk it)."""
    store = auth.store
    anyone = Require(auth, Permission.READ)
    admin = Require(auth, Permission.ADMIN)

    def session_out(principal: Principal) -> SessionOut:
        return SessionOut(
            authenticated=True,
            user=principal.name,
            role=principal.role.value,
            via=principal.via,
            telemetry=principal.allows(Permission.TELEMETRY),
            csrf_token=auth.csrf_token(principal),
            idle_timeout_s=auth.settings.session_idle_s if principal.via == "session" else None,
        )

    # ------------------------------------------------------------------ session
    @app.post(
        "/api/v1/session",
        response_model=SessionOut,
        responses={**_ERRORS, 415: {"model": ApiError}, 429: {"model": ApiError}},
        tags=["session"],
        dependencies=[Depends(_json_only)],
    )
    async def login(request: Request, response: Response, body: LoginRequest) -> SessionOut:
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
        return session_out(principal)

    @app.get("/api/v1/session", response_model=SessionOut, tags=["session"])
    async def whoami(request: Request) -> SessionOut:
        """The caller: name, role, and (logged-in pages) the CSRF token; or
        ``authenticated: false`` (the page asks this first, so it is public)."""
        principal = principal_of(request)
        return SessionOut(authenticated=False) if principal is None else session_out(principal)

    @app.delete(
        "/api/v1/session",
        status_code=204,
        responses=_ERRORS,
        tags=["session"],
        dependencies=[Depends(anyone)],
    )
    async def logout(request: Request, principal: Caller) -> Response:
        """Log out: the session ends on the server and the cookie is cleared."""
        if principal.via != "session":
            raise HTTPException(
                400,
                "an API token is not a session: an admin revokes it (DELETE "
                "/api/v1/tokens/{id} or `actimesh tokens revoke`)",
            )
        await auth.logout(request, principal)
        return Response(status_code=204, headers={"Set-Cookie": auth.clear_cookie(request)})

    # ------------------------------------------------------------------ users
    @app.get(
        "/api/v1/users",
        response_model=list[UserOut],
        responses=_ERRORS,
        tags=["accounts"],
        dependencies=[Depends(admin)],
    )
    async def users() -> list[dict[str, Any]]:
        return [u.to_json() for u in await store.users()]

    @app.post(
        "/api/v1/users",
        status_code=201,
        response_model=UserCreated,
        responses=_ERRORS,
        tags=["accounts"],
        dependencies=[Depends(admin)],
    )
    async def add_user(request: Request, body: UserCreate, principal: Caller) -> dict[str, Any]:
        """Add a user who logs in to the map. Without a password, one is generated and
        returned once."""
        async with auth.change(
            request,
            principal,
            "user.add",
            AuditEvent.ACCOUNT_CHANGE,
            target=body.name,
            target_role=body.role,
        ):
            with _as_http():
                user, generated = await store.add_user(body.name, Role(body.role), body.password)
        return user.to_json() | {"password": generated}

    @app.patch(
        "/api/v1/users/{name}",
        response_model=UserCreated,
        responses=_ERRORS,
        tags=["accounts"],
        dependencies=[Depends(admin)],
    )
    async def update_user(
        request: Request, name: str, body: UserUpdate, principal: Caller
    ) -> dict[str, Any]:
        """Disable or enable a user (disabling ends their sessions), or reset their
        password (the new one is returned once)."""
        changes = body.model_dump(exclude_defaults=True)
        async with auth.change(
            request,
            principal,
            "user.update",
            AuditEvent.ACCOUNT_CHANGE,
            target=name,
            changes=changes,
        ):
            with _as_http():
                generated = None
                if body.reset_password:
                    generated = await store.set_password(name)
                if body.disabled is not None:
                    await store.set_disabled(name, body.disabled)
                found = await store.user(name)
                if found is None:
                    raise AccountError("unknown", f"no user {name!r}")
        return found.to_json() | {"password": generated}

    @app.delete(
        "/api/v1/users/{name}",
        status_code=204,
        responses=_ERRORS,
        tags=["accounts"],
        dependencies=[Depends(admin)],
    )
    async def remove_user(request: Request, name: str, principal: Caller) -> Response:
        """Remove a user; their sessions end."""
        async with auth.change(
            request, principal, "user.remove", AuditEvent.ACCOUNT_CHANGE, target=name
        ):
            with _as_http():
                await store.remove_user(name)
        return Response(status_code=204)

    # ------------------------------------------------------------------ tokens
    @app.get(
        "/api/v1/tokens",
        response_model=list[TokenOut],
        responses=_ERRORS,
        tags=["accounts"],
        dependencies=[Depends(admin)],
    )
    async def tokens() -> list[dict[str, Any]]:
        now = auth.clock()
        return [t.to_json(now) for t in await store.tokens()]

    @app.post(
        "/api/v1/tokens",
        status_code=201,
        response_model=TokenCreated,
        responses=_ERRORS,
        tags=["accounts"],
        dependencies=[Depends(admin)],
    )
    async def create_token(
        request: Request, body: TokenCreate, principal: Caller
    ) -> dict[str, Any]:
        """Issue an API token; the response carries it, once."""
        expires_s = None if body.expires_days is None else body.expires_days * 86_400.0
        async with auth.change(
            request,
            principal,
            "token.create",
            AuditEvent.ACCOUNT_CHANGE,
            target=body.name,
            target_role=body.role,
            telemetry=body.telemetry,
            expires_days=body.expires_days,
        ) as record:
            with _as_http():
                issued = await store.create_token(
                    body.name,
                    Role(body.role),
                    created_by=principal.actor,
                    telemetry=body.telemetry,
                    expires_s=expires_s,
                )
            record["token"] = issued.token.id
        return issued.token.to_json(auth.clock()) | {"token": issued.secret}

    @app.delete(
        "/api/v1/tokens/{token_id}",
        response_model=TokenOut,
        responses=_ERRORS,
        tags=["accounts"],
        dependencies=[Depends(admin)],
    )
    async def revoke_token(request: Request, token_id: str, principal: Caller) -> dict[str, Any]:
        """Revoke a token (by id or active name): refused from the next request on."""
        async with auth.change(
            request, principal, "token.revoke", AuditEvent.ACCOUNT_CHANGE, target=token_id
        ) as record:
            with _as_http():
                token = await store.revoke_token(token_id)
            record["token"] = token.id
        return token.to_json(auth.clock())
