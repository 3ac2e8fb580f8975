"""Spatial indexes of the latest fix of every tracked device.

Two implementations sit behind one :class:`SpatialIndex` protocol:

* :class:`GridIndex`, the production index: a hash grid of cubes over Earth-centred
  (ECEF) metres. A query visits only the few cells that can touch the query sphere, so
  its cost depends on how many devices are *near* the event, never on the fleet size,
  and an upsert costs one ECEF conversion plus, only when the device changes cell, a
  move of its id between two cells. Fixes are stored as packed bytes and cells as id
  strings, never as Python containers: the garbage collector does not track them, so
  100,000 tracked devices add nothing to a collection's pause (an object per fix made
  collections take ~60 ms at that size, a trigger's whole latency budget ten times
  over), and a fix costs 104 bytes instead of about 270. Each row ends with the key
  of its cell, so an upsert tells "same cell" by comparing a few bytes rather than
  working out the old fix's cell again, and reads the dict once for the lateness
  check and the replacement (docs/PERFORMANCE.md, "The engine's cost per fix").
* :class:`LinearIndex`, the naive reference: every fix scanned and measured with geopy's
  WGS-84 geodesic. Tests compare the two, and ``actimesh bench`` uses it as the baseline.

Both answer with exact distances: a fix is returned only when its distance is at most
the radius, never because it shares a bounding box with the query (Tile38's roaming
fences match a bounding square, up to 12.9 m away for a 9.144 m radius).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from geopy.distance import geodesic

from actimesh.geofence.geodesy import WGS84_A, to_ecef

__all__ = ["Fix", "GridIndex", "LinearIndex", "SpatialIndex"]

#: Smallest cell edge :class:`GridIndex` accepts; below it cells only cost memory.
MIN_CELL_SIZE_M = 0.01

# A point exactly on the query sphere may land, after float rounding of ``x - r``, one ulp
# outside the cell range computed for it; widening the range by a micrometre keeps every
# point with distance <= radius among the candidates.
_RANGE_SLACK_M = 1e-6


@dataclass(slots=True)
class Fix:
    """The latest position fix of one device.

    ``acc`` is the reported 1-sigma horizontal accuracy in metres (``None`` when the
    device did not say) and ``ts`` the UNIX time of the fix. ``x``, ``y`` and ``z`` are
    the ECEF coordinates, computed once here so that queries never redo the trigonometry.

    Building a ``Fix`` validates it: latitude in [-90, 90], longitude in [-180, 180],
    a finite time and a finite, non-negative accuracy, else :class:`ValueError`.
    Indexes replace a device's ``Fix`` on every upsert rather than mutating it, so a
    ``Fix`` handed out by an index is a snapshot that later telemetry does not change.
    """

    # Slots and no per-instance containers: issue #6 budgets 1 KB per tracked device,
    # and this object is most of it.
    device_id: str
    lat: float
    lon: float
    acc: float | None
    ts: float
    x: float = field(init=False, repr=False, compare=False)
    y: float = field(init=False, repr=False, compare=False)
    z: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_fix(self.lat, self.lon, self.acc, self.ts)
        self.x, self.y, self.z = to_ecef(self.lat, self.lon)


def _check_fix(lat: float, lon: float, acc: float | None, ts: float) -> None:
    # Callers validate payloads, but one NaN slipping through would land in no cell (or
    # in a wrong one) and corrupt the index for good, so check again here. The chained
    # comparisons are False for NaN, which rejects it too.
    if not -90.0 <= lat <= 90.0:
        raise ValueError(f"latitude must be within [-90, 90], got {lat!r}")
    if not -180.0 <= lon <= 180.0:
        raise ValueError(f"longitude must be within [-180, 180], got {lon!r}")
    if not math.isfinite(ts):
        raise ValueError(f"fix time must be a finite UNIX time, got {ts!r}")
    if acc is not None and not 0.0 <= acc < math.inf:
        raise ValueError(f"accuracy must be a finite number >= 0 or None, got {acc!r}")


#: How :class:`GridIndex` keeps a fix: ``lat, lon, acc, ts, x, y, z`` as doubles, with
#: NaN for "no accuracy reported" (a real accuracy is never NaN), then the key of its
#: cell, little-endian, in as many bytes as the index's keys need (8 for 16 m cells).
_ROW = struct.Struct("=7d")
_ROW_SIZE = _ROW.size  # where the cell key starts
_TS_AT = struct.Struct("=d")  # ``ts``, at byte 24
_XYZ_AT = struct.Struct("=3d")  # ``x, y, z``, from byte 32
#: Joins the ids of a cell holding several devices. MQTT topics, and so device ids,
#: cannot contain it.
_SEP = "\0"


def _fix_of(device_id: str, row: bytes) -> Fix:
    # A Fix from a stored row, without validating or converting again.
    lat, lon, acc, ts, x, y, z = _ROW.unpack_from(row)
    fix = object.__new__(Fix)
    fix.device_id, fix.lat, fix.lon, fix.ts, fix.x, fix.y, fix.z = device_id, lat, lon, ts, x, y, z
    fix.acc = None if math.isnan(acc) else acc  # NaN: none reported
    return fix


def _cell_of(row: bytes) -> int:
    return int.from_bytes(row[_ROW_SIZE:], "little")


def _without(cell: str, device_id: str) -> str:
    return _SEP.join(d for d in cell.split(_SEP) if d != device_id)


def _ids(cell: str) -> list[str] | tuple[str]:
    return cell.split(_SEP) if _SEP in cell else (cell,)


class SpatialIndex(Protocol):
    """The latest fix of every tracked device, queried by distance from a point."""

    def upsert(self, device_id: str, lat: float, lon: float, acc: float | None, ts: float) -> None:
        """Record the latest fix of ``device_id``, replacing any earlier one.

        Raises :class:`ValueError` (leaving the index unchanged) for an invalid fix.
        """

    def upsert_latest(
        self, device_id: str, lat: float, lon: float, acc: float | None, ts: float
    ) -> bool:
        """Like :meth:`upsert`, unless the tracked fix is newer than ``ts`` (a fix that
        arrived late). Return whether the fix was recorded."""

    def remove(self, device_id: str) -> None:
        """Forget ``device_id``; a device that is not tracked is not an error."""

    def get(self, device_id: str) -> Fix | None:
        """Return the latest fix of ``device_id``, or ``None`` if it is not tracked."""

    def within(self, lat: float, lon: float, radius_m: float) -> list[tuple[Fix, float]]:
        """Return every fix at most ``radius_m`` metres from ``(lat, lon)`` with its distance.

        Distances have :func:`actimesh.geofence.geodesy.distance_m` semantics (WGS-84,
        exact to well under 1 mm at these ranges). The list is sorted by distance, ties
        by device id.
        """

    def __len__(self) -> int:
        """Return the number of tracked devices."""

    def __contains__(self, device_id: object) -> bool:
        """Return whether ``device_id`` is tracked."""


def _check_query(lat: float, lon: float, radius_m: float) -> None:
    if not -90.0 <= lat <= 90.0:
        raise ValueError(f"latitude must be within [-90, 90], got {lat!r}")
    if not -180.0 <= lon <= 180.0:
        raise ValueError(f"longitude must be within [-180, 180], got {lon!r}")
    if not 0.0 <= radius_m < math.inf:
        raise ValueError(f"radius must be a finite number of metres >= 0, got {radius_m!r}")


def _by_distance(hit: tuple[Fix, float]) -> tuple[float, str]:
    return hit[1], hit[0].device_id


class GridIndex:
    """A 3-D hash grid over ECEF coordinates: the production :class:`SpatialIndex`.

    Space is cut into cubes of ``cell_size_m`` metres; each occupied cube maps to the
    fixes inside it and empty cubes are deleted. Working in ECEF metres rather than
    degrees keeps cells the same size everywhere: there is no longitude wrap at the
    180th meridian and no pole where degree cells shrink to nothing.

    A query for radius ``r`` visits the cubes overlapping the sphere's bounding box, at
    most ``ceil(2r / c) + 1`` per axis (27 cubes for the default 16 m cells and a radius
    up to 16 m), then keeps only the fixes whose exact distance is within ``r``. When
    that box holds more cubes than are occupied (a very wide query), it walks the occupied
    cubes instead, so a query never costs more than a linear scan.
    """

    def __init__(self, cell_size_m: float = 16.0) -> None:
        """Create an empty index with cubic cells ``cell_size_m`` metres on a side.

        The default of 16 m fits the 9.144 m radius plus the inclusion margin in at most
        three cells per axis. Raises :class:`ValueError` below 0.01 m or for NaN/inf.
        """
        if not MIN_CELL_SIZE_M <= cell_size_m < math.inf:
            raise ValueError(
                f"cell_size_m must be a finite number >= {MIN_CELL_SIZE_M}, got {cell_size_m!r}"
            )
        self._cell = float(cell_size_m)
        # Cell coordinates on the ellipsoid run over +-ceil(A / c); offsetting them by
        # ``_offset`` makes them positive so three fit side by side in one int key. One
        # int hashes faster and weighs less than a tuple of three.
        self._limit = math.ceil(WGS84_A / self._cell) + 1
        self._offset = self._limit + 1
        self._bits = (2 * self._offset).bit_length()
        self._key_bytes = (3 * self._bits + 7) // 8
        self._pack_row = struct.Struct(f"=7d{self._key_bytes}s").pack
        self._rows: dict[str, bytes] = {}
        # Each occupied cell maps to the id of the device in it, or to the ids of several
        # joined by NUL: strings, so no container the garbage collector would track.
        self._cells: dict[int, str] = {}

    @property
    def cell_size_m(self) -> float:
        """Edge of one grid cell in metres."""
        return self._cell

    @property
    def cell_count(self) -> int:
        """Number of occupied cells (empty cells are deleted)."""
        return len(self._cells)

    def upsert(self, device_id: str, lat: float, lon: float, acc: float | None, ts: float) -> None:
        """Record the latest fix of ``device_id``, replacing any earlier one.

        Raises :class:`ValueError`, leaving the index unchanged, for a latitude outside
        [-90, 90], a longitude outside [-180, 180], NaN or infinite values, or a negative
        accuracy.
        """
        self._put(device_id, lat, lon, acc, ts=ts, old=self._rows.get(device_id))

    def upsert_latest(
        self, device_id: str, lat: float, lon: float, acc: float | None, ts: float
    ) -> bool:
        """Like :meth:`upsert`, unless the tracked fix is newer than ``ts``."""
        old = self._rows.get(device_id)
        if old is not None and _TS_AT.unpack_from(old, 24)[0] > ts:
            return False
        self._put(device_id, lat, lon, acc, ts=ts, old=old)
        return True

    def _put(
        self,
        device_id: str,
        lat: float,
        lon: float,
        acc: float | None,
        *,
        ts: float,
        old: bytes | None,
    ) -> None:
        # Every telemetry fix of the fleet comes through here, so the cell key is worked
        # out inline and the old fix's cell is read from its row, not computed again.
        _check_fix(lat, lon, acc, ts)  # before anything changes
        if old is None and _SEP in device_id:  # an id already indexed was checked
            raise ValueError("device ids cannot contain NUL (MQTT topics cannot either)")
        x, y, z = to_ecef(lat, lon)
        c, off, bits = self._cell, self._offset, self._bits
        key = (
            ((math.floor(x / c) + off) << (2 * bits))
            | ((math.floor(y / c) + off) << bits)
            | (math.floor(z / c) + off)
        )
        cell_key = key.to_bytes(self._key_bytes, "little")
        acc_or_nan = math.nan if acc is None else acc
        self._rows[device_id] = self._pack_row(lat, lon, acc_or_nan, ts, x, y, z, cell_key)
        cells = self._cells
        if old is not None:
            if old.endswith(cell_key):
                return  # the common case at 1 Hz telemetry: still in the same cell
            # A moving device: most cells hold one device, so each dict is read once
            # (pop, setdefault) and the shared cell is the rare second step.
            old_key = _cell_of(old)
            left = cells.pop(old_key)
            if left != device_id:
                cells[old_key] = _without(left, device_id)
        cell = cells.setdefault(key, device_id)
        if cell is not device_id:  # the cell held others already
            cells[key] = cell + _SEP + device_id

    def _leave_cell(self, key: int, device_id: str) -> None:
        cell = self._cells.pop(key)
        # A moving fleet would otherwise leave a trail of empty cells behind it.
        if cell != device_id:
            self._cells[key] = _without(cell, device_id)

    def remove(self, device_id: str) -> None:
        """Forget ``device_id``; a device that is not tracked is not an error."""
        old = self._rows.pop(device_id, None)
        if old is not None:
            self._leave_cell(_cell_of(old), device_id)

    def get(self, device_id: str) -> Fix | None:
        """Return the latest fix of ``device_id``, or ``None`` if it is not tracked."""
        row = self._rows.get(device_id)
        return None if row is None else _fix_of(device_id, row)

    def _cells_near(self, x: float, y: float, z: float, radius_m: float) -> Iterator[str]:
        c = self._cell
        r = radius_m + _RANGE_SLACK_M
        lim = self._limit
        x0, x1 = max(math.floor((x - r) / c), -lim), min(math.floor((x + r) / c), lim)
        y0, y1 = max(math.floor((y - r) / c), -lim), min(math.floor((y + r) / c), lim)
        z0, z1 = max(math.floor((z - r) / c), -lim), min(math.floor((z + r) / c), lim)
        cells = self._cells
        off = self._offset
        bits = self._bits
        box = (x1 - x0 + 1) * (y1 - y0 + 1) * (z1 - z0 + 1)
        if box > len(cells):
            # Wider than the occupied grid: walking the occupied cells is cheaper than
            # probing the box, so a query never costs more than a linear scan.
            mask = (1 << bits) - 1
            for key, cell in cells.items():
                ix = (key >> (2 * bits)) - off
                iy = ((key >> bits) & mask) - off
                iz = (key & mask) - off
                if x0 <= ix <= x1 and y0 <= iy <= y1 and z0 <= iz <= z1:
                    yield cell
            return
        for ix in range(x0 + off, x1 + off + 1):
            kx = ix << (2 * bits)
            for iy in range(y0 + off, y1 + off + 1):
                kxy = kx | (iy << bits)
                for iz in range(z0 + off, z1 + off + 1):
                    found = cells.get(kxy | iz)
                    if found is not None:
                        yield found

    def candidates(self, lat: float, lon: float, radius_m: float) -> list[Fix]:
        """Return the fixes a :meth:`within` query examines before the exact distance check.

        For tests and diagnostics: its length is the work a query does, and it shows
        that the work depends on the devices near the point, not on the fleet size.
        """
        _check_query(lat, lon, radius_m)
        x, y, z = to_ecef(lat, lon)
        rows = self._rows
        return [
            _fix_of(d, rows[d]) for cell in self._cells_near(x, y, z, radius_m) for d in _ids(cell)
        ]

    def within(self, lat: float, lon: float, radius_m: float) -> list[tuple[Fix, float]]:
        """Return every fix at most ``radius_m`` metres from ``(lat, lon)`` with its distance.

        Sorted by distance, ties by device id. Distances are bit-for-bit those of
        :func:`actimesh.geofence.geodesy.distance_m`. Raises :class:`ValueError` for an
        invalid point or a negative, NaN or infinite radius.
        """
        _check_query(lat, lon, radius_m)
        x, y, z = to_ecef(lat, lon)
        hypot = math.hypot
        rows = self._rows
        hits: list[tuple[Fix, float]] = []
        xyz = _XYZ_AT.unpack_from
        for cell in self._cells_near(x, y, z, radius_m):
            for device_id in _ids(cell):
                row = rows[device_id]
                fx, fy, fz = xyz(row, 32)
                # Same expression as geodesy.chord_m, inlined: this is the query's inner loop.
                d = hypot(x - fx, y - fy, z - fz)
                if d <= radius_m:
                    hits.append((_fix_of(device_id, row), d))
        hits.sort(key=_by_distance)
        return hits

    def __len__(self) -> int:
        """Return the number of tracked devices."""
        return len(self._rows)

    def __contains__(self, device_id: object) -> bool:
        """Return whether ``device_id`` is tracked."""
        return device_id in self._rows


class LinearIndex:
    """The naive reference :class:`SpatialIndex`: a dict scanned in full on every query.

    Distances come from geopy's WGS-84 geodesic (Karney's algorithm), independent of
    :mod:`actimesh.geofence.geodesy`, which is what makes it useful as a test oracle.
    A query costs one geodesic per tracked device: ``actimesh bench`` shows what
    :class:`GridIndex` saves over it.
    """

    def __init__(self) -> None:
        """Create an empty index."""
        self._fixes: dict[str, Fix] = {}

    def upsert(self, device_id: str, lat: float, lon: float, acc: float | None, ts: float) -> None:
        """Record the latest fix of ``device_id``; :class:`ValueError` if it is invalid."""
        self._fixes[device_id] = Fix(device_id, lat, lon, acc, ts)

    def upsert_latest(
        self, device_id: str, lat: float, lon: float, acc: float | None, ts: float
    ) -> bool:
        """Like :meth:`upsert`, unless the tracked fix is newer than ``ts``."""
        old = self._fixes.get(device_id)
        if old is not None and old.ts > ts:
            return False
        self.upsert(device_id, lat, lon, acc, ts)
        return True

    def remove(self, device_id: str) -> None:
        """Forget ``device_id``; a device that is not tracked is not an error."""
        self._fixes.pop(device_id, None)

    def get(self, device_id: str) -> Fix | None:
        """Return the latest fix of ``device_id``, or ``None`` if it is not tracked."""
        return self._fixes.get(device_id)

    def within(self, lat: float, lon: float, radius_m: float) -> list[tuple[Fix, float]]:
        """Return every fix whose WGS-84 geodesic distance is at most ``radius_m``, sorted."""
        _check_query(lat, lon, radius_m)
        hits: list[tuple[Fix, float]] = []
        for fix in self._fixes.values():
            d = float(geodesic((lat, lon), (fix.lat, fix.lon)).meters)
            if d <= radius_m:
                hits.append((fix, d))
        hits.sort(key=_by_distance)
        return hits

    def __len__(self) -> int:
        """Return the number of tracked devices."""
        return len(self._fixes)

    def __contains__(self, device_id: object) -> bool:
        """Return whether ``device_id`` is tracked."""
        return device_id in self._fixes
