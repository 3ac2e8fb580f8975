"""The live map page and the files it loads, all from this server.

The page carries its own Content-Security-Policy: scripts, styles and connections from
this origin only (a CDN reference fails closed instead of loading), images also from
the tile server the settings name. The static files and Leaflet are mounted under the
public prefixes the gate lets through without credentials
(:data:`~actimesh.dispatch.auth.PUBLIC_PREFIXES`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from actimesh.dispatch.context import Ctx
from actimesh.dispatch.settings import DispatchSettings

__all__ = ["STATIC_DIR", "mount_static", "router"]

#: The page's HTML, its JavaScript modules and its style sheet.
STATIC_DIR = Path(__file__).parent.parent / "static"

router = APIRouter()


def _csp(settings: DispatchSettings) -> str:
    tiles = f" {settings.tile_origin}" if settings.tile_origin else ""
    # Everything from this server: a CDN reference would fail closed, not load.
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data:{tiles}; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


@router.get("/", include_in_schema=False)
async def index(ctx: Ctx) -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Security-Policy": _csp(ctx.settings), "Cache-Control": "no-cache"},
    )


def mount_static(app: FastAPI, settings: DispatchSettings) -> None:
    """Serve the page's files under ``/static``, Leaflet under ``/vendor/leaflet`` and its
    marker clustering under ``/vendor/markercluster`` (when they are installed)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.leaflet_dir.is_dir():
        app.mount("/vendor/leaflet", StaticFiles(directory=settings.leaflet_dir), name="leaflet")
    if settings.markercluster_dir.is_dir():
        app.mount(
            "/vendor/markercluster",
            StaticFiles(directory=settings.markercluster_dir),
            name="markercluster",
        )
