"""Geographic partitions: which engine owns a point, and which engines must hear of a fix.

Engines that share a fleet by geography need three answers, each the same on every
engine without asking another:

* **The cell of a point.** Cells are cubes of ``cell_m`` metres (2 km by default) in
  Earth-centred (ECEF) coordinates, the same construction as the spatial index's grid
  (:class:`~actimesh.geofence.index.GridIndex`) at a coarser size. A degree grid or a
  projection would need special cases; these cubes need none: the 180th meridian is
  just the plane ``y = 0`` (a cell boundary like any other) and the poles are points on
  the ``z`` axis inside ordinary cubes. A cube cuts the ellipsoid's surface in a patch
  at most ``cell_m * sqrt(3)`` across. H3 (hexagons on an icosahedron) would do too; it
  needs a compiled wheel, and nothing here needs its hierarchy or equal areas.
* **The partition of a cell.** Rendezvous hashing (highest random weight): each of the
  ``count`` partitions scores the cell with a keyed hash and the best score owns it.
  Every engine computes the same owner from the cell alone, cells of a city spread
  over all partitions, and growing from ``n`` to ``n + 1`` partitions moves only the
  ``1/(n + 1)`` of cells the new partition wins (``hash mod n`` would move almost all).
* **Who must hear of a fix** (:meth:`PartitionMap.partitions_for`): the owner of the
  fix's cell, and the owner of every cell the axis-aligned box of half-side ``halo_m``
  around it touches. A trigger at ``E`` is planned by the owner of ``E``'s cell from
  its own index alone; a camera whose fix ``F`` is within chord distance ``halo_m`` of
  ``E`` lies in the box around ``F``, which therefore touches ``E``'s cell, so the
  owner of ``E`` holds ``F``. The halo is the engine's widest search radius
  (:meth:`~actimesh.geofence.policy.InclusionPolicy.search_radius_m` of the widest
  rule), so nothing any plan could include is missing. The box is a little larger than
  the ball it stands for: a few more fixes are copied, never one too few.

A point's partition, and the cells of the halo, are exact functions of the point: no
state, no clock, no neighbour to ask. Hashing each cell costs ``count`` hashes; the
answers are cached (bounded).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

from actimesh.geofence.geodesy import WGS84_A, to_ecef

__all__ = ["Cell", "PartitionMap"]

#: A partition cell: the integer coordinates of its ECEF cube.
Cell = tuple[int, int, int]

#: Cells whose owner is remembered; past this the cache starts again (bounded memory).
_CACHE_MAX = 1 << 16
#: The smallest cell allowed.
MIN_CELL_M = 1.0
#: The widest halo, in cells: a fix's halo box visits up to ``(2 * 4 + 2) ** 3`` cells.
MAX_HALO_CELLS = 4.0


def _ecef(lat: float, lon: float) -> tuple[float, float, float]:
    """ECEF metres, one place giving one cell whatever its longitude says: ``sin(pi)``
    is 1.2e-16, not 0, so longitude 180 and -180 (or two longitudes at a pole) would
    otherwise land a nanometre apart on either side of a cell boundary."""
    if lon == -180.0 or lat in (90.0, -90.0):
        lon = 180.0
    return to_ecef(lat, lon)


def _rendezvous(cell: Cell, count: int) -> int:
    """The partition with the highest keyed hash of ``cell``: rendezvous hashing."""
    best, owner = b"", 0
    key = f"{cell[0]},{cell[1]},{cell[2]}".encode()
    for partition in range(count):
        score = hashlib.blake2b(key, digest_size=8, salt=partition.to_bytes(16, "big")).digest()
        if score > best:
            best, owner = score, partition
    return owner


class PartitionMap:
    """Cells, their owners and halos for ``count`` geographic partitions.

    ``cell_m`` is the edge of a partition cell; ``halo_m`` how far beyond its own cells
    a partition hears of fixes (at least the engine's widest search radius). ``assign``
    replaces rendezvous hashing with an explicit cell-to-partition function (a layout
    drawn by hand, or a test that needs a boundary in a given place); it must return a
    partition in ``range(count)`` for every cell.
    """

    def __init__(
        self,
        count: int,
        *,
        cell_m: float = 2000.0,
        halo_m: float = 0.0,
        assign: Callable[[Cell], int] | None = None,
    ) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"partition count must be a whole number >= 1, got {count!r}")
        if not MIN_CELL_M <= cell_m < math.inf:
            raise ValueError(f"cell_m must be a finite number >= {MIN_CELL_M} m, got {cell_m!r}")
        if not 0.0 <= halo_m < math.inf:
            raise ValueError(f"halo_m must be a finite number of metres >= 0, got {halo_m!r}")
        if halo_m > MAX_HALO_CELLS * cell_m:
            raise ValueError(
                f"a halo of {halo_m:g} m is more than {MAX_HALO_CELLS:g} cells of {cell_m:g} m: "
                f"make the cells at least {halo_m / MAX_HALO_CELLS:g} m"
            )
        self.count = count
        self.cell_m = float(cell_m)
        self.halo_m = float(halo_m)
        self._assign = assign
        self._owners: dict[Cell, int] = {}
        self._limit = math.ceil(WGS84_A / self.cell_m) + 1

    def cell_of(self, lat: float, lon: float) -> Cell:
        """The cell holding ``(lat, lon)``."""
        x, y, z = _ecef(lat, lon)
        c = self.cell_m
        return math.floor(x / c), math.floor(y / c), math.floor(z / c)

    def partition_of(self, cell: Cell) -> int:
        """The partition that owns ``cell``."""
        owner = self._owners.get(cell)
        if owner is None:
            if self._assign is not None:
                owner = self._assign(cell)
                if not 0 <= owner < self.count:
                    raise ValueError(f"assign gave partition {owner} for {cell}")
            else:
                owner = 0 if self.count == 1 else _rendezvous(cell, self.count)
            if len(self._owners) >= _CACHE_MAX:
                self._owners.clear()
            self._owners[cell] = owner
        return owner

    def owner(self, lat: float, lon: float) -> int:
        """The partition that owns ``(lat, lon)``: it plans a trigger raised there."""
        return self.partition_of(self.cell_of(lat, lon))

    def partitions_for(self, lat: float, lon: float) -> tuple[int, ...]:
        """Every partition that must hold a fix at ``(lat, lon)``: its owner first, then
        the owners of the cells within ``halo_m`` (see the module), each once, sorted."""
        x, y, z = _ecef(lat, lon)
        c, h = self.cell_m, self.halo_m
        own = self.partition_of((math.floor(x / c), math.floor(y / c), math.floor(z / c)))
        if self.count == 1:
            return (own,)
        lim = self._limit
        x0, x1 = max(math.floor((x - h) / c), -lim), min(math.floor((x + h) / c), lim)
        y0, y1 = max(math.floor((y - h) / c), -lim), min(math.floor((y + h) / c), lim)
        z0, z1 = max(math.floor((z - h) / c), -lim), min(math.floor((z + h) / c), lim)
        if x0 == x1 and y0 == y1 and z0 == z1:
            return (own,)  # the common case: the halo stays inside the cell
        others = {
            self.partition_of((ix, iy, iz))
            for ix in range(x0, x1 + 1)
            for iy in range(y0, y1 + 1)
            for iz in range(z0, z1 + 1)
        }
        others.discard(own)
        return (own, *sorted(others))

    def home(self, key: str) -> int:
        """The partition answerable for what has no position (a device that never sent
        a fix, a payload that cannot be read): a stable hash of ``key``."""
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count
