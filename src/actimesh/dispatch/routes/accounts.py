"""Users and API tokens, for admins::

    GET|POST /api/v1/users, PATCH|DELETE /api/v1/users/{name}          admin
    GET|POST /api/v1/tokens, DELETE /api/v1/tokens/{token_id}          admin

``actimesh users`` and ``actimesh tokens`` do the same from the command line. Every change
is audited (``account_change``) with who made it. A password or a token is in a response
once, when it is made, and never again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from actimesh.dispatch.accounts import Role
from actimesh.dispatch.audit import AuditEvent
from actimesh.dispatch.auth import Auth, Caller, Permission, Require
from actimesh.dispatch.models import (
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserCreated,
    UserOut,
    UserUpdate,
)
from actimesh.dispatch.routes.session import ERRORS
from actimesh.errors import AccountError

__all__ = ["router"]

_STATUS = {"unknown": 404, "exists": 409, "last_admin": 409, "invalid": 422}

router = APIRouter(tags=["accounts"], dependencies=[Depends(Require(Permission.ADMIN))])


@contextlib.contextmanager
def _as_http() -> Iterator[None]:
    try:
        yield
    except AccountError as exc:
        raise HTTPException(_STATUS.get(exc.reason, 422), str(exc)) from exc


@router.get(
    "/api/v1/users",
    response_model=list[UserOut],
    responses=ERRORS,
)
async def users(auth: Auth) -> list[dict[str, Any]]:
    return [u.to_json() for u in await auth.store.users()]


@router.post(
    "/api/v1/users",
    status_code=201,
    response_model=UserCreated,
    responses=ERRORS,
)
async def add_user(
    request: Request, body: UserCreate, principal: Caller, auth: Auth
) -> dict[str, Any]:
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
            user, generated = await auth.store.add_user(body.name, Role(body.role), body.password)
    return user.to_json() | {"password": generated}


@router.patch(
    "/api/v1/users/{name}",
    response_model=UserCreated,
    responses=ERRORS,
)
async def update_user(
    request: Request, name: str, body: UserUpdate, principal: Caller, auth: Auth
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
                generated = await auth.store.set_password(name)
            if body.disabled is not None:
                await auth.store.set_disabled(name, body.disabled)
            found = await auth.store.user(name)
            if found is None:
                raise AccountError("unknown", f"no user {name!r}")
    return found.to_json() | {"password": generated}


@router.delete(
    "/api/v1/users/{name}",
    status_code=204,
    responses=ERRORS,
)
async def remove_user(request: Request, name: str, principal: Caller, auth: Auth) -> Response:
    """Remove a user; their sessions end."""
    async with auth.change(
        request, principal, "user.remove", AuditEvent.ACCOUNT_CHANGE, target=name
    ):
        with _as_http():
            await auth.store.remove_user(name)
    return Response(status_code=204)


@router.get(
    "/api/v1/tokens",
    response_model=list[TokenOut],
    responses=ERRORS,
)
async def tokens(auth: Auth) -> list[dict[str, Any]]:
    now = auth.clock()
    return [t.to_json(now) for t in await auth.store.tokens()]


@router.post(
    "/api/v1/tokens",
    status_code=201,
    response_model=TokenCreated,
    responses=ERRORS,
)
async def create_token(
    request: Request, body: TokenCreate, principal: Caller, auth: Auth
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
            issued = await auth.store.create_token(
                body.name,
                Role(body.role),
                created_by=principal.actor,
                telemetry=body.telemetry,
                expires_s=expires_s,
            )
        record["token"] = issued.token.id
    return issued.token.to_json(auth.clock()) | {"token": issued.secret}


@router.delete(
    "/api/v1/tokens/{token_id}",
    response_model=TokenOut,
    responses=ERRORS,
)
async def revoke_token(
    request: Request, token_id: str, principal: Caller, auth: Auth
) -> dict[str, Any]:
    """Revoke a token (by id or active name): refused from the next request on."""
    async with auth.change(
        request, principal, "token.revoke", AuditEvent.ACCOUNT_CHANGE, target=token_id
    ) as record:
        with _as_http():
            token = await auth.store.revoke_token(token_id)
        record["token"] = token.id
    return token.to_json(auth.clock())
