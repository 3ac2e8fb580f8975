"""The browser security headers, on every response the dispatch sends.

A middleware, so an error page, a static file or a route added later gets them as well
as the API: what a response does not set itself gets the strictest default.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SecurityHeaders"]

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
