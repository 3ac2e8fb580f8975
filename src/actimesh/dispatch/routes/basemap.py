"""The PMTiles basemap file, served by the dispatch itself::

    GET /api/v1/basemap/{name}    read    the ``[dispatch] basemap`` file (HTTP ranges)

The page's renderer reads the file in pieces with ``Range`` requests (its header, a
directory, the tiles in view), so nothing but this server is asked for the streets.
Only the configured file is served, under its own name: any other name is 404, whatever
it holds (``..``, slashes, another file in the same folder). Any logged-in user or
token may read it, as they may the map page.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from actimesh.dispatch.auth import Permission, Require
from actimesh.dispatch.basemap import BASEMAP_ROUTE
from actimesh.dispatch.context import Ctx
from actimesh.dispatch.routes.errors import ERRORS

__all__ = ["router"]

#: PMTiles' registered media type.
MEDIA_TYPE = "application/vnd.pmtiles"

router = APIRouter(tags=["basemap"], dependencies=[Depends(Require(Permission.READ))])


@router.get(BASEMAP_ROUTE + "/{name}", responses=ERRORS, response_class=FileResponse)
async def basemap_file(name: str, ctx: Ctx) -> FileResponse:
    """The PMTiles basemap (whole, or the byte ranges asked for)."""
    source = ctx.settings.basemap_source
    path = source.path if source is not None else None
    if path is None or name != path.name:
        served = f"{BASEMAP_ROUTE}/{path.name}" if path is not None else "none"
        raise HTTPException(404, f"no basemap file {name!r}; this server serves {served}")
    if not path.is_file():
        raise HTTPException(
            503,
            f"the basemap file {str(path)!r} is gone; put it back (e.g. `make map-data`)",
        )
    # Like every API answer it is sent no-store; the renderer keeps the directories and
    # tiles it read in memory for the page's life, and the ETag (size and time) tells it
    # when the operator replaced the file.
    return FileResponse(path, media_type=MEDIA_TYPE)
