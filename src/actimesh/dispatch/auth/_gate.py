"""The gate in front of every route: no credentials, no way in (but the public few).

An ASGI middleware rather than a dependency of each route, so routes added later are
covered without anyone remembering to. Besides checking credentials it refuses what a
browser could be tricked into sending: a change made with the cookie but without the
CSRF header, a change or WebSocket handshake from another site's page, a ``Host`` that
is not one of this server's names (DNS rebinding), and credentials in the query string.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from actimesh.dispatch.auth._authenticator import (
    CSRF_HEADER,
    SAFE_METHODS,
    Authenticator,
    Refused,
)
from actimesh.dispatch.auth._guard import PUBLIC_PREFIXES, is_public
from actimesh.dispatch.auth._principal import Principal
from actimesh.errors import LedgerError
from actimesh.listener import ConnectionGauge

__all__ = ["AuthGate"]

log = logging.getLogger(__name__)

#: Query parameters that look like someone put a credential in a URL.
_URL_SECRETS = frozenset({"access_token", "token", "api_key", "apikey", "session", "password"})


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
                raise Refused(
                    503,
                    "accounts_unavailable",
                    f"cannot check credentials now: {exc}; try again, or tell an administrator",
                ) from exc
        except Refused as refused:
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
            raise Refused(
                403,
                "origin",
                f"requests from {origin} are not allowed here; add "
                "it to [dispatch] cors_origins if it should be",
            )
        try:
            principal = await auth.authenticate(conn)
        except Refused:
            if public:
                return None  # a stale cookie must not lock anyone out of the login
            raise
        if principal is None:
            if public:
                return None
            if _url_secret(conn):
                raise Refused(
                    401,
                    "url_secret",
                    "credentials in URLs are refused (URLs end up "
                    "in logs and browser history): send `Authorization: Bearer "
                    "<token>`, and revoke a token that was in a URL",
                )
            raise Refused(
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
            raise Refused(403, "csrf", error)
        return principal
