"""The map's streets: the operator's own tile source, named by ``[dispatch] basemap``.

Three kinds, the usual GIS deliverables, told apart by what the value looks like::

    basemap = "https://gis.agency.example/tiles/{z}/{x}/{y}.png"             # XYZ raster
    basemap = "https://gis.agency.example/wmts/streets/{TileMatrix}/{TileRow}/{TileCol}.png"
    basemap = "/srv/actimesh/helsinki.pmtiles"                                # PMTiles file

XYZ and WMTS tiles are loaded by the browser from the operator's tile server (the page's
Content-Security-Policy allows that origin for images, nothing else). A WMTS template
is the RESTful one of a Web Mercator tile matrix set (``GoogleMapsCompatible``,
``EPSG:3857``) whose matrices are numbered by zoom level: the page fills it as an XYZ
one. A PMTiles file is served by the dispatch itself, behind the same login as the rest
(:mod:`.routes.basemap`, HTTP range requests), and drawn in the page: vector tiles by
protomaps-leaflet, raster tiles (PNG, JPEG, WebP, AVIF) on canvases of a Leaflet layer
reading them with the ``pmtiles`` library. The map then needs nothing from any other
host.

A PMTiles file is checked when the settings are loaded: it must exist and be PMTiles
version 3, its tiles compressed with gzip or not at all (what browsers decompress).
Its header gives the zoom levels, bounds and centre the page opens at, its metadata the
attribution and vector layers. Every mistake is one line naming the key.
"""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from actimesh.errors import ConfigError

__all__ = ["BASEMAP_ROUTE", "Basemap", "BasemapKind", "parse_basemap"]

#: Where the dispatch serves a PMTiles basemap (the file's own name follows).
BASEMAP_ROUTE = "/api/v1/basemap"

_XYZ = ("{z}", "{x}", "{y}")
_WMTS = ("{TileMatrix}", "{TileRow}", "{TileCol}")
#: In a Web Mercator tile matrix set numbered by zoom, a row is y and a column x.
_WMTS_AS_XYZ = {"{TileMatrix}": "{z}", "{TileRow}": "{y}", "{TileCol}": "{x}"}
_HEADER = struct.Struct("<7sB QQQQQQQQ QQQ BBBBBB iiii B ii")
_VERSION = 3
_COMPRESSION = {0: "unknown", 1: "none", 2: "gzip", 3: "brotli", 4: "zstd"}
_TILE_TYPES = {0: "unknown", 1: "mvt", 2: "png", 3: "jpeg", 4: "webp", 5: "avif"}
#: Metadata larger than this is not read (a basemap's is a few kilobytes).
_MAX_METADATA = 1 << 20
_KEY = "dispatch.basemap"


class BasemapKind(StrEnum):
    """What ``[dispatch] basemap`` names."""

    XYZ = "xyz"
    WMTS = "wmts"
    PMTILES = "pmtiles"


@dataclass(frozen=True, slots=True)
class Basemap:
    """A checked tile source, and what the page needs to draw it."""

    kind: BasemapKind
    #: The URL template the page fills with ``{z}``, ``{x}`` and ``{y}`` (XYZ, WMTS).
    template: str | None = None
    #: The PMTiles file the dispatch serves.
    path: Path | None = None
    attribution: str = ""
    min_zoom: int = 0
    max_zoom: int = 19
    #: West, south, east, north (degrees), when the source says.
    bounds: tuple[float, float, float, float] | None = None
    #: Latitude, longitude and zoom the map opens at, when the source says.
    center: tuple[float, float, int] | None = None
    #: The vector layers of a PMTiles file (the page picks its style by them).
    layers: tuple[str, ...] = ()
    #: A PMTiles file's tiles: ``mvt`` (vector), ``png``, ``jpeg``, ``webp`` or ``avif``.
    tile_type: str | None = None

    @property
    def origin(self) -> str | None:
        """``scheme://host`` of a tile server, for the page's Content-Security-Policy."""
        if self.template is None:
            return None
        parts = urlsplit(self.template)
        # Tile templates often use {s} subdomains: allow them as a wildcard.
        return f"{parts.scheme}://{parts.netloc.replace('{s}', '*')}"

    @property
    def url(self) -> str:
        """Where the page loads the tiles from."""
        if self.path is not None:
            return f"{BASEMAP_ROUTE}/{self.path.name}"
        assert self.template is not None
        filled = self.template
        for wmts, xyz in _WMTS_AS_XYZ.items():
            filled = filled.replace(wmts, xyz)
        return filled

    def to_json(self) -> dict[str, Any]:
        """The page's view of it (in the live map's snapshot)."""
        return {
            "kind": self.kind.value,
            "url": self.url,
            "attribution": self.attribution,
            "min_zoom": self.min_zoom,
            "max_zoom": self.max_zoom,
            "bounds": list(self.bounds) if self.bounds is not None else None,
            "center": list(self.center) if self.center is not None else None,
            "layers": list(self.layers),
            "tile_type": self.tile_type,
        }


def parse_basemap(value: str, attribution: str = "") -> Basemap:
    """``value`` of ``[dispatch] basemap`` checked; ConfigError in one line if wrong."""
    if not value.strip():
        raise ConfigError(f"{_KEY} is empty: leave it out for no basemap, or name a source")
    parts = urlsplit(value)
    if parts.scheme in ("http", "https"):
        return _template(value, attribution)
    if "{" in value or "://" in value:
        raise ConfigError(
            f"{_KEY} {value!r}: a tile URL must be http(s), e.g. "
            "https://tiles.example.org/{z}/{x}/{y}.png"
        )
    return _pmtiles(Path(value), attribution)


def _template(value: str, attribution: str) -> Basemap:
    if not urlsplit(value).netloc:
        raise ConfigError(f"{_KEY} {value!r} has no host, e.g. https://tiles.example.org/...")
    if all(p in value for p in _XYZ):
        return Basemap(BasemapKind.XYZ, template=value, attribution=attribution)
    if all(p in value for p in _WMTS):
        return Basemap(BasemapKind.WMTS, template=value, attribution=attribution)
    raise ConfigError(
        f"{_KEY} {value!r} has neither {{z}}, {{x}} and {{y}} (XYZ) nor {{TileMatrix}}, "
        "{TileRow} and {TileCol} (WMTS, Web Mercator): write the tile URL template, "
        "e.g. https://tiles.example.org/{z}/{x}/{y}.png"
    )


def _pmtiles(path: Path, attribution: str) -> Basemap:
    if path.suffix != ".pmtiles":
        raise ConfigError(
            f"{_KEY} {str(path)!r} is neither a tile URL (https://…/{{z}}/{{x}}/{{y}}.png) "
            "nor a .pmtiles file"
        )
    try:
        with path.open("rb") as f:
            head = f.read(_HEADER.size)
            fields = _HEADER.unpack(head) if len(head) == _HEADER.size else None
            metadata = b""
            if fields is not None and fields[0] == b"PMTiles" and fields[1] == _VERSION:
                offset, length = fields[4], fields[5]
                if length <= _MAX_METADATA:
                    f.seek(offset)
                    metadata = f.read(length)
    except FileNotFoundError:
        raise ConfigError(
            f"{_KEY}: no file {str(path)!r}; build the demo's with `make map-data`, or give "
            "the path of your own PMTiles file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{_KEY}: cannot read {str(path)!r}: {exc.strerror}") from None
    if fields is None or fields[0] != b"PMTiles" or fields[1] != _VERSION:
        raise ConfigError(
            f"{_KEY}: {str(path)!r} is not a PMTiles version 3 file; convert MBTiles with "
            "`pmtiles convert IN.mbtiles OUT.pmtiles`"
        )
    internal, tiles, tile_type = fields[14], fields[15], fields[16]
    kind = _TILE_TYPES.get(tile_type, "unknown")
    if kind == "unknown":
        raise ConfigError(
            f"{_KEY}: {str(path)!r} does not say what its tiles are (tile type "
            f"{tile_type}); the map draws MVT, PNG, JPEG, WebP and AVIF tiles"
        )
    if tiles not in (1, 2):
        raise ConfigError(
            f"{_KEY}: {str(path)!r} compresses its tiles with "
            f"{_COMPRESSION.get(tiles, str(tiles))}, which browsers cannot read; rebuild it "
            "with gzip (the default of `pmtiles convert` and tippecanoe)"
        )
    meta = _metadata(metadata, internal)
    credit = attribution or str(meta.get("attribution") or "")
    if not credit:
        raise ConfigError(
            f"{_KEY}: {str(path)!r} names no attribution; set dispatch.basemap_attribution "
            "to the credit its licence requires, e.g. '© OpenStreetMap contributors'"
        )
    min_zoom, max_zoom = fields[17], fields[18]
    west, south, east, north = (v / 1e7 for v in fields[19:23])
    zoom, lon, lat = fields[23], fields[24] / 1e7, fields[25] / 1e7
    layers = meta.get("vector_layers")
    return Basemap(
        BasemapKind.PMTILES,
        # Absolute: the dispatch may run as a child process, and the route must not
        # depend on where it was started.
        path=path.absolute(),
        attribution=credit,
        min_zoom=min_zoom,
        max_zoom=max_zoom,
        bounds=(west, south, east, north),
        center=(lat, lon, zoom),
        layers=tuple(
            str(layer["id"])
            for layer in (layers if isinstance(layers, list) else [])
            if isinstance(layer, dict) and "id" in layer
        ),
        tile_type=kind,
    )


def _metadata(raw: bytes, compression: int) -> dict[str, Any]:
    """The JSON metadata, or {} when it is compressed in a way Python cannot read."""
    try:
        if compression == 2:
            raw = gzip.decompress(raw)
        elif compression not in (0, 1):
            return {}
        found = json.loads(raw) if raw else {}
        if not isinstance(found, dict):
            return {}
        # Converted from MBTiles, the vector layers may still be in its "json" string.
        if "vector_layers" not in found and isinstance(found.get("json"), str):
            inner = json.loads(found["json"])
            if isinstance(inner, dict):
                found["vector_layers"] = inner.get("vector_layers")
    except (OSError, EOFError, ValueError):
        return {}
    return found
