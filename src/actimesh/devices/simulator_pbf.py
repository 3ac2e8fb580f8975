"""A small reader of OpenStreetMap PBF extracts: the ways the simulated fleet moves on.

The format (https://wiki.openstreetmap.org/wiki/PBF_Format) is a sequence of blobs, each
a 4-byte big-endian header length, a ``BlobHeader`` and a ``Blob`` (zlib-compressed, or
raw), holding Protocol Buffers messages: one ``HeaderBlock``, then ``PrimitiveBlock``\\ s of
nodes (plain or "dense", delta-coded) and ways (tags and delta-coded node references).
Only what the simulator needs is decoded: every node's position and the ways with the
tags it asks for; relations, metadata and history are skipped field by field.

Pure Python, no protobuf runtime: a city extract of a few megabytes reads in seconds,
once; :mod:`actimesh.devices.simulator_streets` caches the road graph built from it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OsmExtract", "OsmWay", "read_pbf"]

#: Larger blobs are refused, as the format itself says readers should (32 MiB).
_MAX_BLOB = 32 << 20
_MAX_HEADER = 64 << 10


@dataclass(frozen=True, slots=True)
class OsmWay:
    """A way: its id, tags and the ids of its nodes in order."""

    id: int
    tags: Mapping[str, str]
    refs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OsmExtract:
    """What :func:`read_pbf` kept: node positions (``id -> (lat, lon)``) and the ways."""

    nodes: Mapping[int, tuple[float, float]]
    ways: tuple[OsmWay, ...]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` of one message: an int for varints, bytes for the rest."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("field runs past the end of its message")
            yield number, buf[pos : pos + size]
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _packed(buf: bytes) -> list[int]:
    out: list[int] = []
    pos, end = 0, len(buf)
    while pos < end:
        value, pos = _varint(buf, pos)
        out.append(value)
    return out


def _deltas(buf: bytes) -> list[int]:
    """A packed ``sint64`` list, delta-coded: the running sums."""
    total, out = 0, []
    for raw in _packed(buf):
        total += _zigzag(raw)
        out.append(total)
    return out


def _blobs(data: bytes) -> Iterator[tuple[str, bytes]]:
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("truncated blob header length")
        (size,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if size > _MAX_HEADER:
            raise ValueError(f"blob header of {size} bytes")
        kind, length = "", 0
        for number, value in _fields(data[pos : pos + size]):
            if number == 1 and isinstance(value, bytes):
                kind = value.decode()
            elif number == 3 and isinstance(value, int):
                length = value
        pos += size
        if length > _MAX_BLOB or pos + length > len(data):
            raise ValueError(f"blob of {length} bytes does not fit")
        blob = data[pos : pos + length]
        pos += length
        payload = b""
        for number, value in _fields(blob):
            if number == 1 and isinstance(value, bytes):
                payload = value
            elif number == 3 and isinstance(value, bytes):
                payload = zlib.decompress(value)
            elif number in (4, 5, 6, 7):
                raise ValueError("only zlib-compressed or raw blobs are supported")
        yield kind, payload


@dataclass(slots=True)
class _Block:
    strings: list[str]
    granularity: int = 100
    lat_offset: int = 0
    lon_offset: int = 0

    def coords(self, lat: int, lon: int) -> tuple[float, float]:
        return (
            1e-9 * (self.lat_offset + self.granularity * lat),
            1e-9 * (self.lon_offset + self.granularity * lon),
        )


def _dense(block: _Block, buf: bytes, nodes: dict[int, tuple[float, float]]) -> None:
    ids: list[int] = []
    lats: list[int] = []
    lons: list[int] = []
    for number, value in _fields(buf):
        if isinstance(value, bytes):
            if number == 1:
                ids = _deltas(value)
            elif number == 8:
                lats = _deltas(value)
            elif number == 9:
                lons = _deltas(value)
    if not len(ids) == len(lats) == len(lons):
        raise ValueError("dense nodes with unequal id, lat and lon lists")
    for node, lat, lon in zip(ids, lats, lons, strict=True):
        nodes[node] = block.coords(lat, lon)


def _node(block: _Block, buf: bytes, nodes: dict[int, tuple[float, float]]) -> None:
    node = lat = lon = 0
    for number, value in _fields(buf):
        if isinstance(value, int):
            if number == 1:
                node = _zigzag(value)
            elif number == 8:
                lat = _zigzag(value)
            elif number == 9:
                lon = _zigzag(value)
    nodes[node] = block.coords(lat, lon)


def _way(block: _Block, buf: bytes) -> OsmWay:
    way, keys, vals, refs = 0, [], [], []
    for number, value in _fields(buf):
        if number == 1 and isinstance(value, int):
            way = value
        elif number == 2 and isinstance(value, bytes):
            keys = _packed(value)
        elif number == 3 and isinstance(value, bytes):
            vals = _packed(value)
        elif number == 8 and isinstance(value, bytes):
            refs = _deltas(value)
    tags = {block.strings[k]: block.strings[v] for k, v in zip(keys, vals, strict=False)}
    return OsmWay(way, tags, tuple(refs))


def _primitive(
    buf: bytes,
    nodes: dict[int, tuple[float, float]],
    ways: list[OsmWay],
    keep: Callable[[Mapping[str, str]], bool],
) -> None:
    block = _Block([])
    groups: list[bytes] = []
    for number, value in _fields(buf):
        if number == 1 and isinstance(value, bytes):
            block.strings = [
                s.decode() for n, s in _fields(value) if n == 1 and isinstance(s, bytes)
            ]
        elif number == 2 and isinstance(value, bytes):
            groups.append(value)
        elif number == 17 and isinstance(value, int):
            block.granularity = value
        elif number == 19 and isinstance(value, int):
            block.lat_offset = _signed64(value)
        elif number == 20 and isinstance(value, int):
            block.lon_offset = _signed64(value)
    for group in groups:
        _group(block, group, nodes, ways, keep)


def _group(
    block: _Block,
    buf: bytes,
    nodes: dict[int, tuple[float, float]],
    ways: list[OsmWay],
    keep: Callable[[Mapping[str, str]], bool],
) -> None:
    for number, value in _fields(buf):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            _node(block, value, nodes)
        elif number == 2:
            _dense(block, value, nodes)
        elif number == 3:
            way = _way(block, value)
            if keep(way.tags):
                ways.append(way)


def _signed64(value: int) -> int:
    """A plain (not zigzag) ``int64`` varint read as unsigned."""
    return value - (1 << 64) if value >= 1 << 63 else value


def read_pbf(path: Path, keep: Callable[[Mapping[str, str]], bool]) -> OsmExtract:
    """Every node position, and the ways whose tags ``keep`` accepts, of the extract at
    ``path``. Raises ``ValueError`` for a file that is not an OSM PBF extract."""
    data = path.read_bytes()
    nodes: dict[int, tuple[float, float]] = {}
    ways: list[OsmWay] = []
    seen_header = False
    for kind, payload in _blobs(data):
        if kind == "OSMHeader":
            seen_header = True
        elif kind == "OSMData":
            _primitive(payload, nodes, ways, keep)
    if not seen_header:
        raise ValueError(f"{path} is not an OpenStreetMap PBF extract (no OSMHeader)")
    return OsmExtract(nodes, tuple(ways))
