"""Every error the dispatch answers with is ``{"error": "<one line>"}``.

FastAPI's own bodies (a list of pydantic errors, ``{"detail": …}``) are for developers;
a dispatcher or an integrator reading a 422 wants one line saying what is wrong and how
to fix it. The handlers here turn every error into that shape, and :data:`ERRORS` tells
the OpenAPI document so.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from actimesh.dispatch.models import ApiError
from actimesh.errors import ActimeshError

__all__ = ["ERRORS", "add_error_handlers", "one_line"]

#: The error responses of an API route, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ApiError} for s in (400, 401, 403, 404, 422, 503)
}


def one_line(exc: RequestValidationError) -> str:
    """The first thing wrong with a request, in one line."""
    errors = exc.errors()
    if not errors:  # pragma: no cover - pydantic always names one
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return f"the request body is not valid JSON ({reason}); send a JSON object"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'is invalid')}{more}"


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": one_line(exc)}, status_code=422)


async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


async def _unavailable(_: Request, exc: ActimeshError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=503)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as ``{"error": …}``: validation errors with 422,
    HTTP errors with their status and headers, and actimesh errors (a database or the
    broker unavailable) with 503."""
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(StarletteHTTPException)(_http)
    app.exception_handler(ActimeshError)(_unavailable)
