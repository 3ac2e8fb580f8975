"""The live map page and the files it loads, all from this server.

The page carries its own Content-Security-Policy: scripts, styles and connections from
this origin only (a CDN reference fails closed instead of loading), images also from
the XYZ or WMTS tile server the settings name (a PMTiles basemap comes from this origin).
The static files and the map libraries are mounted under the
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

__all__ = ["STATIC_DIR", "content_security_policy", "mount_static", "router"]

#: The page's HTML, its JavaScript modules and its style sheet.
STATIC_DIR = Path(__file__).parent.parent / "static"

router = APIRouter()


def content_security_policy(settings: DispatchSettings) -> str:
    """The page's policy: everything from this server, images also from the tile server."""
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
        headers={
            "Content-Security-Policy": content_security_policy(ctx.settings),
            "Cache-Control": "no-cache",
        },
    )


def mount_static(app: FastAPI, settings: DispatchSettings) -> None:
    """Serve the page's files under ``/static``, Leaflet under ``/vendor/leaflet``, its
    marker clustering under ``/vendor/markercluster``, protomaps-leaflet (a vector
    PMTiles basemap's renderer) under ``/vendor/protomaps-leaflet`` and pmtiles (a raster
    one's reader) under ``/vendor/pmtiles`` (when they are installed)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.leaflet_dir.is_dir():
        app.mount("/vendor/leaflet", StaticFiles(directory=settings.leaflet_dir), name="leaflet")
    if settings.markercluster_dir.is_dir():
        app.mount(
            "/vendor/markercluster",
            StaticFiles(directory=settings.markercluster_dir),
            name="markercluster",
        )
    if settings.protomaps_dir.is_dir():
        app.mount(
            "/vendor/protomaps-leaflet",
            StaticFiles(directory=settings.protomaps_dir),
            name="protomaps-leaflet",
        )
    if settings.pmtiles_dir.is_dir():
        app.mount("/vendor/pmtiles", StaticFiles(directory=settings.pmtiles_dir), name="pmtiles")
