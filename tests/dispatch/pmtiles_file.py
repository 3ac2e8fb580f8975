"""PMTiles files for the basemap tests, written from the version 3 specification
(https://github.com/protomaps/PMTiles/blob/main/spec/v3/spec.md): a 127-byte header,
a gzip-compressed root directory, gzip-compressed JSON metadata, then the tiles.

:func:`pmtiles_file` writes any header (for the files the dispatch must refuse),
:func:`raster_pmtiles` a real raster archive of one-colour PNG tiles (for the browser).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
import zlib
from pathlib import Path

__all__ = ["pmtiles_file", "png", "raster_pmtiles", "tiles_around"]

_HEADER = struct.Struct("<7sB11Q6B4iB2i")
_GZIP = 2


def _varint(out: io.BytesIO, value: int) -> None:
    while True:
        low, value = value & 0x7F, value >> 7
        out.write(bytes([low | (0x80 if value else 0)]))
        if not value:
            return


def tile_id(z: int, x: int, y: int) -> int:
    """The tile's position on the Hilbert curve of its zoom, after all lower zooms."""
    acc = ((1 << (2 * z)) - 1) // 3
    for a in range(z - 1, -1, -1):
        s = 1 << a
        rx, ry = s & x, s & y
        acc += ((3 * rx) ^ ry) << a
        if ry == 0:
            if rx:
                x, y = s - 1 - x, s - 1 - y
            x, y = y, x
    return acc


def _directory(entries: list[tuple[int, int, int]]) -> bytes:
    """(tile id, offset, length) sorted by id, each a run of one tile."""
    out = io.BytesIO()
    _varint(out, len(entries))
    last = 0
    for tid, _, _ in entries:
        _varint(out, tid - last)
        last = tid
    for _ in entries:
        _varint(out, 1)
    for _, _, length in entries:
        _varint(out, length)
    previous_end = -1
    for _, offset, length in entries:
        _varint(out, 0 if offset == previous_end else offset + 1)
        previous_end = offset + length
    return gzip.compress(out.getvalue(), mtime=0)


def pmtiles_file(
    path: Path,
    *,
    tile_type: int = 1,
    tile_compression: int = 2,
    metadata: dict[str, object] | None = None,
    tiles: dict[tuple[int, int, int], bytes] | None = None,
    zooms: tuple[int, int] = (12, 16),
    bounds: tuple[float, float, float, float] = (-180.0, -85.0, 180.0, 85.0),
    center: tuple[float, float, int] = (60.17, 24.944, 14),
) -> Path:
    """A PMTiles v3 file with ``tiles`` (none by default) and ``metadata``."""
    data = io.BytesIO()
    entries = []
    for (z, x, y), body in sorted(tiles.items() if tiles else [], key=lambda t: tile_id(*t[0])):
        entries.append((tile_id(z, x, y), data.tell(), len(body)))
        data.write(body)
    root = _directory(entries)
    meta = gzip.compress(json.dumps(metadata or {}).encode(), mtime=0)
    west, south, east, north = (round(v * 1e7) for v in bounds)
    lat, lon, zoom = center
    header = _HEADER.pack(
        b"PMTiles",
        3,
        127,
        len(root),
        127 + len(root),
        len(meta),
        0,
        0,
        127 + len(root) + len(meta),
        len(data.getvalue()),
        len(entries),
        len(entries),
        len(entries),
        1,  # clustered: tiles in id order
        _GZIP,
        tile_compression,
        tile_type,
        *zooms,
        west,
        south,
        east,
        north,
        zoom,
        round(lon * 1e7),
        round(lat * 1e7),
    )
    path.write_bytes(header + root + meta + data.getvalue())
    return path


def png(rgb: tuple[int, int, int], size: int = 256) -> bytes:
    """A ``size`` x ``size`` PNG of one colour."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = b"\0" + bytes(rgb) * size
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )


def tiles_around(lat: float, lon: float, z: int, reach: int = 2) -> list[tuple[int, int, int]]:
    """The Web Mercator tiles of zoom ``z`` within ``reach`` tiles of a point."""
    n = 1 << z
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return [
        (z, x + dx, y + dy) for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1)
    ]


def raster_pmtiles(
    path: Path, center: tuple[float, float], rgb: tuple[int, int, int], zooms: range
) -> Path:
    """A raster PMTiles archive of one-colour PNG tiles around ``center`` (lat, lon)."""
    lat, lon = center
    tiles = {t: png(rgb) for z in zooms for t in tiles_around(lat, lon, z, reach=4)}
    return pmtiles_file(
        path,
        tile_type=2,
        tile_compression=1,
        metadata={"attribution": "© Test orthophoto"},
        tiles=tiles,
        zooms=(zooms[0], zooms[-1]),
        bounds=(lon - 0.05, lat - 0.03, lon + 0.05, lat + 0.03),
        center=(lat, lon, zooms[-1]),
    )
