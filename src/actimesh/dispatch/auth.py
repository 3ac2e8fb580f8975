"""Who is calling the dispatch, and what they may do.

Two ways in, never a secret in a URL:

* ``Authorization: Bearer amt_…`` — an API token (integrators, scripts, Prometheus).
* A session cookie, for the browser: set by ``POST /api/v1/session`` (the login form),
  ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, and ``Secure`` with the ``__Host-`` name
  prefix when the dispatch is reached over https. The id is 256 random bits; the server
  keeps only its SHA-256, with an idle and an absolute timeout.

Every request passes :class:`AuthGate` first, an ASGI middleware in front of all routes:
anything not on the short public list (:data:`PUBLIC_ROUTES`: the page and its static
files, the login, ``/api/v1/health``, ``/openapi.json``) without valid credentials gets
401, so routes added later are covered without anyone remembering to. The gate also
refuses:

* state-changing requests made with the cookie that lack the ``X-CSRF-Token`` header
  (its value is bound to the session and given to the page at login); tokens sent in the
  Authorization header are not subject to CSRF, since a browser never adds them itself;
* state-changing requests and WebSocket handshakes whose ``Origin`` is another site's
  (cross-site WebSocket hijacking; login CSRF);
* credentials in the query string (they end up in logs): never read, and named in the 401.

Each route then states what it needs with :class:`Require` (a dependency), and
``create_app`` refuses to build an app with a non-public route that does not.

Roles (:class:`~actimesh.dispatch.accounts.Role`) and what they grant:

=============  ==========  ==========================  ==========  =====
permission     integrator  integrator + ``telemetry``  dispatcher  admin
=============  ==========  ==========================  ==========  =====
``read``       yes         yes                         yes         yes
``telemetry``  no          yes                         yes         yes
``dispatch``   no          no                          yes         yes
``admin``      no          no                          no          yes
=============  ==========  ==========================  ==========  =====

Logins are limited per user name and per client address (failures in a sliding window;
then 429 with ``Retry-After``), compared in constant time (scrypt, then
``hmac.compare_digest``; an unknown user is checked against a dummy hash so it takes as
long), and answered with the same error whether the user is unknown, disabled or the
password wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, HTTPException
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actimesh.dispatch.accounts import (
    TOKEN_PREFIX,
    AccountStore,
    Role,
    Session,
    Token,
    hash_password,
    verify_password,
)
from actimesh.dispatch.audit import AuditEvent, AuditTrail
from actimesh.dispatch.settings import DispatchSettings
from actimesh.errors import LedgerError
from actimesh.listener import ConnectionGauge
from actimesh.security.limiter import LoginLimiter

__all__ = [
    "CSRF_HEADER",
    "PUBLIC_PREFIXES",
    "PUBLIC_ROUTES",
    "AuthGate",
    "AuthStats",
    "Authenticator",
    "Caller",
    "LoginRefusedError",
    "Permission",
    "Principal",
    "Require",
    "SecurityHeaders",
    "caller",
    "is_public",
    "principal_of",
]

log = logging.getLogger(__name__)

CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_COOKIE = "actimesh_session"
#: Over https: the prefix makes the browser refuse the cookie unless it is Secure, for
#: Path=/ and without a Domain, so no other host can set or shadow it.
_SECURE_COOKIE = "__Host-actimesh_session"
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
PUBLIC_PREFIXES = ("/static/", "/vendor/leaflet/")
#: Query parameters that look like someone put a credential in a URL.
_URL_SECRETS = frozenset({"access_token", "token", "api_key", "apikey", "session", "password"})
_CSRF_CONTEXT = b"actimesh-csrf-v1"
#: Logins checked at once (each takes ~0.25 s of one core and 32 MiB); more wait their turn.
_HASHING = 2
#: Logins waiting for a check; beyond this the answer is 429 rather than a growing queue.
_MAX_PENDING_LOGINS = 16
_MAX_TOKEN_LENGTH = 128
_HSTS = "max-age=31536000"
#: For everything but the page (which sets its own): nothing may load, nothing may frame.
_API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)


def is_public(method: str, path: str) -> bool:
    """True for the few routes anyone may call."""
    method = "GET" if method == "HEAD" else method
    return (method, path) in PUBLIC_ROUTES or (method == "GET" and path.startswith(PUBLIC_PREFIXES))


class Permission(StrEnum):
    """What a route needs (see the module docstring for who has it)."""

    READ = "read"
    TELEMETRY = "telemetry"
    DISPATCH = "dispatch"
    ADMIN = "admin"


_NEEDS = {
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


class _Refused(Exception):  # noqa: N818 - a control-flow signal inside this module
    def __init__(
        self, status: int, reason: str, message: str, *, clear_cookie: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.clear_cookie = clear_cookie


class LoginRefusedError(Exception):
    """A login that did not succeed: the status and one-line message to answer with."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(slots=True)
class AuthStats:
    """Counters for ``/metrics``."""

    #: Requests refused, by reason.
    refused: Counter[str] = field(default_factory=Counter)
    #: Login attempts, by outcome.
    logins: Counter[str] = field(default_factory=Counter)


def client_address(conn: HTTPConnection) -> str:
    """The peer's address (uvicorn runs with proxy headers off: it cannot be forged)."""
    return conn.client.host if conn.client is not None else "unknown"


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
        self.limiter = LoginLimiter(
            per_user=settings.login_max_failures,
            per_client=settings.login_max_failures_per_client,
            window_s=settings.login_window_s,
        )
        self._hashing = asyncio.Semaphore(_HASHING)
        self._pending = 0
        self._dummy: str | None = None
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
        """The caller, None without credentials; raises :class:`_Refused` for bad ones."""
        header = conn.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            value = value.strip()
            if scheme.lower() != "bearer" or not value:
                raise _Refused(401, "malformed", "send the token as `Authorization: Bearer amt_…`")
            token = None
            if value.startswith(TOKEN_PREFIX) and len(value) <= _MAX_TOKEN_LENGTH:
                token = await self.store.resolve_token(value)
            if token is None:
                raise _Refused(
                    401,
                    "bad_token",
                    "the API token is unknown, revoked or expired; ask an admin for a new one",
                )
            return _token_principal(token, value)
        session_id = conn.cookies.get(self.cookie_name(conn))
        if session_id is None:
            return None
        session = None
        if 0 < len(session_id) <= _MAX_TOKEN_LENGTH:
            session = await self.store.resolve_session(session_id)
        if session is None:
            raise _Refused(
                401,
                "bad_session",
                "your session has ended (logged out, timed out "
                "or the user was disabled); log in again",
                clear_cookie=True,
            )
        return _session_principal(session, session_id)

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
    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await asyncio.to_thread(hash_password, secrets.token_urlsafe(16))
        return self._dummy

    async def login(
        self, conn: HTTPConnection, username: str, password: str
    ) -> tuple[Principal, str]:
        """Check a user name and password; the principal and a new session id.

        Raises :class:`LoginRefusedError` (401, 429 or 503). Every outcome is audited;
        a success that cannot be audited is refused.
        """
        client = client_address(conn)
        name = username.strip().lower()
        wait = self.limiter.blocked_for(name, client)
        if wait > 0:
            self.stats.logins["limited"] += 1
            if self.limiter.first_refusal(name, client, wait):
                known = await self.store.user(name) if name else None
                await self.audit.record_or_log(
                    AuditEvent.LOGIN,
                    name if known else "unknown-user",
                    "locked_out",
                    {
                        "client": client,
                        "reason": "too many failed logins",
                        "retry_after_s": math.ceil(wait),
                    },
                )
            raise LoginRefusedError(
                429, f"too many failed logins; try again in {math.ceil(wait)} s", wait
            )
        if self._pending >= _MAX_PENDING_LOGINS:
            self.stats.logins["busy"] += 1
            raise LoginRefusedError(429, "too many logins at once; try again in a second", 1.0)
        started = self.limiter.begin(name, client)
        self._pending += 1
        try:
            found = await self.store.password_hash(name) if name else None
            encoded = found[1] if found is not None else await self._dummy_hash()
            async with self._hashing:
                matches = await asyncio.to_thread(verify_password, password, encoded)
        finally:
            self._pending -= 1
        user = found[0] if found is not None else None
        if user is None or not matches or user.disabled:
            reason = "unknown user" if user is None else "disabled" if matches else "wrong password"
            self.stats.logins["denied"] += 1
            await self.audit.record_or_log(
                AuditEvent.LOGIN,
                user.name if user else "unknown-user",
                "denied",
                {"client": client, "reason": reason},
            )
            # The same answer whatever the reason: no user-name oracle.
            raise LoginRefusedError(401, "wrong user name or password")
        self.limiter.succeeded(name, client, started)
        previous = conn.cookies.get(self.cookie_name(conn))
        session_id, session = await self.store.create_session(
            user, client=client, replaces=previous
        )
        principal = _session_principal(session, session_id)
        try:
            await self.audit.record(
                AuditEvent.LOGIN,
                user.name,
                "success",
                {"client": client, "role": user.role.value, "session": principal.credential},
            )
        except LedgerError:
            await self.store.end_session(session_id)
            self.stats.logins["unaudited"] += 1
            log.exception(
                "dispatch: login of %s refused: the audit ledger is not writable", user.name
            )
            raise LoginRefusedError(
                503, "login refused: the audit ledger cannot be written; tell an administrator"
            ) from None
        self.stats.logins["success"] += 1
        return principal, session_id

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


def _token_principal(token: Token, secret: str) -> Principal:
    return Principal(
        name=token.name,
        role=token.role,
        via="token",
        telemetry=token.telemetry,
        credential=token.id,
        secret=secret,
    )


def _session_principal(session: Session, session_id: str) -> Principal:
    return Principal(
        name=session.user.name,
        role=session.user.role,
        via="session",
        telemetry=True,
        credential=f"session:{session.key[:12]}",
        secret=session_id,
    )


# ---------------------------------------------------------------------- route guard
def principal_of(conn: HTTPConnection) -> Principal | None:
    """The caller the gate found; None on a public route without (valid) credentials."""
    found = conn.scope.get("state", {}).get("principal")
    return found if isinstance(found, Principal) else None


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
    as a :data:`Caller` parameter: a closure variable in a parameter's annotation would
    not resolve under ``from __future__ import annotations``."""

    def __init__(self, auth: Authenticator, permission: Permission) -> None:
        self.auth = auth
        self.permission = permission

    async def __call__(self, conn: HTTPConnection) -> Principal:
        principal = _gated(conn)
        if principal.allows(self.permission):
            return principal
        self.auth.stats.refused["forbidden"] += 1
        error = (
            f"{principal.actor} ({principal.role.value}) may not do this: it needs "
            f"{_NEEDS[self.permission]}"
        )
        if conn.scope["type"] == "http" and conn.scope["method"] not in SAFE_METHODS:
            await self.auth.refused_change(conn, principal, "forbidden", error)
        raise HTTPException(403, error)


# ---------------------------------------------------------------------- middleware
def _url_secret(conn: HTTPConnection) -> bool:
    query = conn.scope.get("query_string", b"").decode("latin-1")
    return any(name.lower() in _URL_SECRETS for name, _ in parse_qsl(query, keep_blank_values=True))


class AuthGate:
    """ASGI middleware: authenticate every request, refuse what is not allowed through.

    Puts the :class:`Principal` (or None on public routes) in ``scope["state"]``.
    """

    def __init__(
        self, app: ASGIApp, *, auth: Authenticator, gauge: ConnectionGauge | None = None
    ) -> None:
        self.app = app
        self.auth = auth
        #: While the listener is crowded, requests without credentials are refused:
        #: the last slots are kept for people who are logged in.
        self.gauge = gauge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if not self.auth.host_allowed(conn):
            self.auth.stats.refused["host"] += 1
            host = conn.headers.get("host", "")[:100]
            message = (
                f"this server does not answer to the name {host!r}; add it to "
                "[dispatch] allowed_hosts if people reach it by that name"
            )
            await JSONResponse({"error": message}, 400)(scope, receive, send)
            return
        method = scope.get("method", "GET")
        public = is_public(method, scope["path"])
        if public and scope["path"].startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)  # static files: no lookup needed
            return
        try:
            try:
                principal = await self._check(conn, method, public)
            except LedgerError as exc:
                # Fail closed, in one line: nobody is let in while accounts are unreadable.
                log.exception("dispatch: credentials not checked")
                raise _Refused(
                    503,
                    "accounts_unavailable",
                    f"cannot check credentials now: {exc}; try again, or tell an administrator",
                ) from exc
        except _Refused as refused:
            self.auth.stats.refused[refused.reason] += 1
            headers = {}
            if refused.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="actimesh"'
            if refused.clear_cookie:
                headers["Set-Cookie"] = self.auth.clear_cookie(conn)
            response = JSONResponse({"error": refused.message}, refused.status, headers)
            await response(scope, receive, send)
            return
        if principal is None and self.gauge is not None and self.gauge.crowded:
            self.auth.stats.refused["crowded"] += 1
            message = (
                "the dispatch is busy and keeps its last connections for people who are "
                "logged in; try again in a moment"
            )
            await JSONResponse({"error": message}, 503, {"Retry-After": "1"})(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _check(self, conn: HTTPConnection, method: str, public: bool) -> Principal | None:
        auth = self.auth
        changes = conn.scope["type"] == "websocket" or method not in SAFE_METHODS
        if changes and not auth.origin_allowed(conn):
            origin = conn.headers.get("origin")
            raise _Refused(
                403,
                "origin",
                f"requests from {origin} are not allowed here; add "
                "it to [dispatch] cors_origins if it should be",
            )
        try:
            principal = await auth.authenticate(conn)
        except _Refused:
            if public:
                return None  # a stale cookie must not lock anyone out of the login
            raise
        if principal is None:
            if public:
                return None
            if _url_secret(conn):
                raise _Refused(
                    401,
                    "url_secret",
                    "credentials in URLs are refused (URLs end up "
                    "in logs and browser history): send `Authorization: Bearer "
                    "<token>`, and revoke a token that was in a URL",
                )
            raise _Refused(
                401,
                "no_credentials",
                "log in (POST /api/v1/session), or send `Authorization: Bearer <token>`",
            )
        if (
            conn.scope["type"] == "http"
            and method not in SAFE_METHODS
            and not auth.csrf_ok(conn, principal)
        ):
            error = (
                f"missing or wrong {CSRF_HEADER} header: a logged-in page sends the token "
                "it got at login with every change"
            )
            await auth.refused_change(conn, principal, "csrf_rejected", error)
            raise _Refused(403, "csrf", error)
        return principal


class SecurityHeaders:
    """ASGI middleware: the browser security headers on every response.

    ``Cache-Control: no-store`` on the API (responses name people and places), HSTS when
    reached over https, and a deny-everything Content-Security-Policy for any response
    that does not set its own (the page does).
    """

    def __init__(self, app: ASGIApp, *, https: bool = False) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        no_store = path.startswith("/api/") or path in ("/metrics", "/openapi.json")
        https = self.https or scope.get("scheme") in ("https", "wss")

        async def send_with_headers(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                message["headers"] = list(message.get("headers", ()))
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", _API_CSP)
                for name, value in _HEADERS:
                    headers.setdefault(name, value)
                if no_store:
                    headers["Cache-Control"] = "no-store"
                if https:
                    headers["Strict-Transport-Security"] = _HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)
