"""From credentials to a caller, and a record of what each caller changed.

Two ways in, never a secret in a URL: ``Authorization: Bearer amt_…`` (an API token) or
the browser's session cookie, whose name and attributes depend on whether the dispatch
is reached over https. A cookie session must also prove it is the page making a change
(the CSRF token, derived from the session id). Every change a caller makes, and every
live view they open, is written to the audit ledger with its outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.requests import HTTPConnection

from actimesh.dispatch.accounts import TOKEN_PREFIX, AccountStore
from actimesh.dispatch.audit import AuditEvent, AuditTrail
from actimesh.dispatch.auth._login import LoginDesk
from actimesh.dispatch.auth._principal import (
    Principal,
    client_address,
    session_principal,
    token_principal,
)
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import LedgerError

__all__ = ["CSRF_HEADER", "SAFE_METHODS", "AuthStats", "Authenticator", "Refused"]

CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_COOKIE = "actimesh_session"
#: Over https: the prefix makes the browser refuse the cookie unless it is Secure, for
#: Path=/ and without a Domain, so no other host can set or shadow it.
_SECURE_COOKIE = "__Host-actimesh_session"
_CSRF_CONTEXT = b"actimesh-csrf-v1"
_MAX_TOKEN_LENGTH = 128


class Refused(Exception):  # noqa: N818 - a control-flow signal between here and the gate
    """Credentials were sent and are no good: the gate answers with this."""

    def __init__(
        self, status: int, reason: str, message: str, *, clear_cookie: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.clear_cookie = clear_cookie


@dataclass(slots=True)
class AuthStats:
    """Counters for ``/metrics``."""

    #: Requests refused, by reason.
    refused: Counter[str] = field(default_factory=Counter)
    #: Login attempts, by outcome.
    logins: Counter[str] = field(default_factory=Counter)


class Authenticator:
    """Credentials to :class:`Principal`; logins, logouts, CSRF tokens, origins."""

    def __init__(
        self,
        *,
        store: AccountStore,
        audit: AuditTrail,
        settings: DispatchSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.audit = audit
        self.settings = settings
        self.clock = clock
        self.stats = AuthStats()
        self.logins = LoginDesk(
            store=store, audit=audit, settings=settings, outcomes=self.stats.logins
        )
        public = settings.public_origin
        self._origins = frozenset(settings.cors_origins) | ({public} if public else set())
        names = {"localhost", settings.host, *settings.allowed_hosts}
        if settings.public_url is not None:
            names.add(urlsplit(settings.public_url).hostname or "")
        self._hosts = frozenset(n.lower() for n in names if n)

    # ------------------------------------------------------------------ transport
    def https(self, conn: HTTPConnection) -> bool:
        """Reached over https (directly, or through the proxy ``public_url`` names)."""
        return conn.url.scheme in ("https", "wss") or self.settings.public_url_https

    def cookie_name(self, conn: HTTPConnection) -> str:
        return _SECURE_COOKIE if self.https(conn) else _COOKIE

    def session_cookie(self, conn: HTTPConnection, session_id: str) -> str:
        """The ``Set-Cookie`` value that logs the browser in."""
        secure = "; Secure" if self.https(conn) else ""
        max_age = int(self.settings.session_max_s)
        return (
            f"{self.cookie_name(conn)}={session_id}; Path=/; HttpOnly; SameSite=Strict; "
            f"Max-Age={max_age}{secure}"
        )

    def clear_cookie(self, conn: HTTPConnection) -> str:
        """The ``Set-Cookie`` value that makes the browser forget its session."""
        secure = "; Secure" if self.https(conn) else ""
        return f"{self.cookie_name(conn)}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"

    def own_origin(self, conn: HTTPConnection) -> str:
        scheme = "https" if conn.url.scheme in ("https", "wss") else "http"
        return f"{scheme}://{conn.headers.get('host', '')}"

    def host_allowed(self, conn: HTTPConnection) -> bool:
        """The ``Host`` the client asked for is one of this server's names: ``localhost``,
        ``host``, ``public_url``'s, ``allowed_hosts`` or an IP address. Anything else is a
        name that only resolves here (DNS rebinding), whose pages would otherwise pass
        the Origin check as this server's own."""
        host = conn.headers.get("host")
        if host is None:
            return True  # HTTP/1.0 without Host: not a browser
        try:
            name = urlsplit(f"//{host}").hostname
        except ValueError:
            return False
        if not name:
            return False
        if name in self._hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def origin_allowed(self, conn: HTTPConnection) -> bool:
        """No Origin (not a browser), this server's own, ``public_url`` or a CORS origin."""
        origin = conn.headers.get("origin")
        if origin is None:
            return True
        return origin == self.own_origin(conn) or origin in self._origins

    # ------------------------------------------------------------------ credentials
    async def authenticate(self, conn: HTTPConnection) -> Principal | None:
        """The caller, None without credentials; raises :class:`Refused` for bad ones."""
        header = conn.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            value = value.strip()
            if scheme.lower() != "bearer" or not value:
                raise Refused(401, "malformed", "send the token as `Authorization: Bearer amt_…`")
            token = None
            if value.startswith(TOKEN_PREFIX) and len(value) <= _MAX_TOKEN_LENGTH:
                token = await self.store.resolve_token(value)
            if token is None:
                raise Refused(
                    401,
                    "bad_token",
                    "the API token is unknown, revoked or expired; ask an admin for a new one",
                )
            return token_principal(token, value)
        session_id = conn.cookies.get(self.cookie_name(conn))
        if session_id is None:
            return None
        session = None
        if 0 < len(session_id) <= _MAX_TOKEN_LENGTH:
            session = await self.store.resolve_session(session_id)
        if session is None:
            raise Refused(
                401,
                "bad_session",
                "your session has ended (logged out, timed out "
                "or the user was disabled); log in again",
                clear_cookie=True,
            )
        return session_principal(session, session_id)

    async def still_valid(self, principal: Principal) -> bool:
        """Is the credential behind a long-lived connection (live map, stream) still good?

        Checking a session also counts as activity: an open live map is a console in use.
        """
        if principal.via == "session":
            return await self.store.resolve_session(principal.secret) is not None
        return await self.store.resolve_token(principal.secret) is not None

    @staticmethod
    def csrf_token(principal: Principal) -> str | None:
        """The value a cookie session must send in ``X-CSRF-Token`` (None for tokens).

        Derived from the session id, so it is bound to this login, needs no storage, and
        reveals nothing about the id.
        """
        if principal.via != "session":
            return None
        return hmac.new(principal.secret.encode("utf-8"), _CSRF_CONTEXT, hashlib.sha256).hexdigest()

    def csrf_ok(self, conn: HTTPConnection, principal: Principal) -> bool:
        expected = self.csrf_token(principal)
        sent = conn.headers.get(CSRF_HEADER)
        if expected is None:
            return True
        return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())

    # ------------------------------------------------------------------ login
    async def login(
        self, conn: HTTPConnection, username: str, password: str
    ) -> tuple[Principal, str]:
        """Check a user name and password; the principal and a new session id.

        Raises :class:`LoginRefusedError` (401, 429 or 503); see :class:`LoginDesk`.
        """
        previous = conn.cookies.get(self.cookie_name(conn))
        return await self.logins.login(client_address(conn), username, password, replaces=previous)

    async def logout(self, conn: HTTPConnection, principal: Principal) -> None:
        """End a cookie session (audited)."""
        await self.store.end_session(principal.secret)
        await self.audit.record_or_log(
            AuditEvent.LOGOUT,
            principal.actor,
            "success",
            {"client": client_address(conn), "session": principal.credential},
        )

    # ------------------------------------------------------------------ audit
    def _body(self, conn: HTTPConnection, principal: Principal, action: str) -> dict[str, Any]:
        return {
            "action": action,
            "method": conn.scope.get("method", "GET"),
            "path": conn.url.path,
            "client": client_address(conn),
            "role": principal.role.value,
            "via": principal.credential,
        }

    async def view(self, conn: HTTPConnection, principal: Principal, channel: str) -> None:
        """Audit the start of a live view; raise HTTPException 503 if it cannot be."""
        body = self._body(conn, principal, f"{channel}.open") | {"channel": channel}
        try:
            await self.audit.record(AuditEvent.LIVE_VIEW, principal.actor, "started", body)
        except LedgerError as exc:
            raise HTTPException(
                503,
                "the live view is not available: the audit ledger cannot be written; "
                "tell an administrator",
            ) from exc

    @contextlib.asynccontextmanager
    async def change(
        self,
        conn: HTTPConnection,
        principal: Principal,
        action: str,
        event: AuditEvent = AuditEvent.API_CHANGE,
        **detail: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """Audit one state-changing API action with its outcome.

        Yields the record's body: add what was acted on. An HTTPException leaving the
        block is recorded as ``rejected`` (4xx) or ``failed`` (5xx) with its status and
        message; any other exception as ``failed``.
        """
        body = self._body(conn, principal, action) | detail
        try:
            yield body
        except HTTPException as exc:
            outcome = "rejected" if exc.status_code < 500 else "failed"
            body |= {"status": exc.status_code, "error": str(exc.detail)}
            await self.audit.record_or_log(event, principal.actor, outcome, body)
            raise
        except Exception as exc:
            body |= {"error": f"{type(exc).__name__}: {exc}"[:512]}
            await self.audit.record_or_log(event, principal.actor, "failed", body)
            raise
        await self.audit.record_or_log(event, principal.actor, "ok", body)

    async def refused_change(
        self, conn: HTTPConnection, principal: Principal, outcome: str, error: str
    ) -> None:
        """Audit a state-changing request refused before it reached its route."""
        body = self._body(conn, principal, "refused") | {"error": error}
        await self.audit.record_or_log(AuditEvent.API_CHANGE, principal.actor, outcome, body)
