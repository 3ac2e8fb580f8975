"""A small OpenStreetMap PBF writer for tests: a made-up city, encoded as the format says
(zlib blobs of Protocol Buffers, dense nodes, delta-coded way references)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from actimesh.geofence import destination


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _len(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _packed(field: int, values: Sequence[int]) -> bytes:
    return _len(field, b"".join(_varint(v) for v in values))


def _deltas(field: int, values: Sequence[int]) -> bytes:
    last, out = 0, []
    for v in values:
        out.append(_zigzag(v - last))
        last = v
    return _packed(field, out)


def _blob(kind: str, payload: bytes) -> bytes:
    blob = _int(2, len(payload)) + _len(3, zlib.compress(payload))
    header = _len(1, kind.encode()) + _int(3, len(blob))
    return struct.pack(">I", len(header)) + header + blob


def write_pbf(
    path: Path,
    nodes: Mapping[int, tuple[float, float]],
    ways: Sequence[tuple[int, Mapping[str, str], Sequence[int]]],
) -> None:
    """Write ``nodes`` (id to lat, lon) and ``ways`` (id, tags, node ids) to ``path``."""
    strings = [""]
    index: dict[str, int] = {}

    def sid(s: str) -> int:
        if s not in index:
            index[s] = len(strings)
            strings.append(s)
        return index[s]

    ids = sorted(nodes)
    dense = (
        _deltas(1, ids)
        + _deltas(8, [round(nodes[n][0] * 1e7) for n in ids])
        + _deltas(9, [round(nodes[n][1] * 1e7) for n in ids])
    )
    encoded_ways = b"".join(
        _len(
            3,
            _int(1, way)
            + _packed(2, [sid(k) for k in tags])
            + _packed(3, [sid(v) for v in tags.values()])
            + _deltas(8, refs),
        )
        for way, tags, refs in ways
    )
    table = b"".join(_len(1, s.encode()) for s in strings)
    block = _len(1, table) + _len(2, _len(2, dense)) + _len(2, encoded_ways) + _int(17, 100)
    header = _len(4, b"OsmSchema-V0.6") + _len(4, b"DenseNodes")
    path.write_bytes(_blob("OSMHeader", header) + _blob("OSMData", block))


def grid_city(path: Path, *, size: int = 6, block_m: float = 120.0) -> None:
    """A city of ``size`` x ``size`` street corners ``block_m`` apart (residential and
    primary streets), a footway through the middle of each block row, and an island road
    unconnected to the rest (which the road graph must leave out)."""
    origin = (60.17, 24.94)
    nodes: dict[int, tuple[float, float]] = {}

    def corner(i: int, j: int) -> int:
        return 1000 + i * size + j

    for i in range(size):
        for j in range(size):
            north = destination(*origin, 0.0, i * block_m)
            nodes[corner(i, j)] = destination(*north, 90.0, j * block_m)
    ways: list[tuple[int, Mapping[str, str], Sequence[int]]] = []
    for i in range(size):
        kind = "primary" if i == size // 2 else "residential"
        ways.append((10 + i, {"highway": kind}, [corner(i, j) for j in range(size)]))
        ways.append((40 + i, {"highway": "residential"}, [corner(j, i) for j in range(size)]))
    # Footways half a block north of each street, joined to the streets at both ends.
    for i in range(size - 1):
        refs = [corner(i, 0)]
        for j in range(size):
            mid = destination(*nodes[corner(i, j)], 0.0, block_m / 2)
            nodes[5000 + i * size + j] = mid
            refs.append(5000 + i * size + j)
        refs.append(corner(i, size - 1))
        ways.append((70 + i, {"highway": "footway"}, refs))
    # A private drive and an island road nobody can reach.
    island = destination(*origin, 225.0, 2000.0)
    nodes[9001], nodes[9002] = island, destination(*island, 90.0, 100.0)
    ways.append((90, {"highway": "residential"}, [9001, 9002]))
    ways.append((91, {"highway": "service", "access": "private"}, [corner(0, 0), corner(1, 1)]))
    # A way clipped by the extract: its last node is not in the file.
    ways.append((92, {"highway": "tertiary"}, [corner(0, 0), corner(0, 1), 99_999]))
    write_pbf(path, nodes, ways)
