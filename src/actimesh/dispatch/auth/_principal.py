"""Who is calling, and what each role may do.

A :class:`Principal` is what the gate (:mod:`._gate`) leaves in the request scope once
credentials check out; everything after it (the route guard, the audit records, the
session routes) asks it rather than looking at headers or cookies again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from starlette.requests import HTTPConnection

from actimesh.dispatch.accounts import Role, Session, Token

__all__ = [
    "NEEDS",
    "Permission",
    "Principal",
    "client_address",
    "principal_of",
    "session_principal",
    "token_principal",
]


class Permission(StrEnum):
    """What a route needs (see :mod:`actimesh.dispatch.auth` for who has it)."""

    READ = "read"
    TELEMETRY = "telemetry"
    DISPATCH = "dispatch"
    ADMIN = "admin"


#: What a 403 says the caller lacks, per permission.
NEEDS = {
    Permission.READ: "an API token or a login",
    Permission.TELEMETRY: "the dispatcher role or a token with the telemetry grant",
    Permission.DISPATCH: "the dispatcher or admin role",
    Permission.ADMIN: "the admin role",
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request, and how they proved it."""

    name: str
    role: Role
    #: ``session`` (the browser's cookie) or ``token``.
    via: str
    telemetry: bool
    #: Names the credential in audit records: the token's id, or a short hash of the
    #: session (enough to tell one login's records from another's, useless to an attacker).
    credential: str
    secret: str = field(repr=False, default="")

    @property
    def actor(self) -> str:
        """How audit records name this caller: ``kim`` or ``token:cad-bridge``."""
        return self.name if self.via == "session" else f"token:{self.name}"

    def allows(self, permission: Permission) -> bool:
        if permission is Permission.READ:
            return True
        if permission is Permission.TELEMETRY:
            return self.telemetry or self.role.includes(Role.DISPATCHER)
        if permission is Permission.DISPATCH:
            return self.role.includes(Role.DISPATCHER)
        return self.role is Role.ADMIN


def token_principal(token: Token, secret: str) -> Principal:
    return Principal(
        name=token.name,
        role=token.role,
        via="token",
        telemetry=token.telemetry,
        credential=token.id,
        secret=secret,
    )


def session_principal(session: Session, session_id: str) -> Principal:
    return Principal(
        name=session.user.name,
        role=session.user.role,
        via="session",
        telemetry=True,
        credential=f"session:{session.key[:12]}",
        secret=session_id,
    )


def principal_of(conn: HTTPConnection) -> Principal | None:
    """The caller the gate found; None on a public route without (valid) credentials."""
    found = conn.scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else None


def client_address(conn: HTTPConnection) -> str:
    """The peer's address (uvicorn runs with proxy headers off: it cannot be forged)."""
    return conn.client.host if conn.client is not None else "unknown"
