"""The naive alternative, timed: every position scanned with geopy's geodesic.

The question a trigger asks is "which cameras are within 30 ft (plus the accuracy
margin) of this point?". Without a spatial index the answer is a linear scan of every
tracked fix with a geodesic distance each: :class:`~actimesh.geofence.LinearIndex`. This
module loads the same fleet positions into it and into the production
:class:`~actimesh.geofence.GridIndex`, asks both the same questions at the scenes, checks
they agree, and times each: the ratio of median query times is ``naive_scan_ratio``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from actimesh.bench.workload import Fleet, Movers
from actimesh.geofence import GridIndex, InclusionPolicy, LinearIndex
from actimesh.triggers.rules import THIRTY_FEET_M

__all__ = ["time_queries"]

#: What the engine asks the index for a 30 ft rule under the default policy.
SEARCH_RADIUS_M = InclusionPolicy().search_radius_m(THIRTY_FEET_M)


def time_queries(
    fleet: Fleet, seed: int, *, naive_queries: int, grid_queries: int
) -> dict[str, Any]:
    """Query both indexes at the fleet's scenes; timings in microseconds."""
    now = time.time()
    movers = Movers(fleet, seed, now)
    grid, linear = GridIndex(), LinearIndex()
    for i, device in enumerate(fleet.ids):
        lat, lon, acc = movers.step(i, now)
        grid.upsert(device, lat, lon, acc, now)
        linear.upsert(device, lat, lon, acc, now)
    scenes = fleet.scenes
    grid_us: list[float] = []
    for k in range(grid_queries):
        scene = scenes[k % len(scenes)]
        start = time.perf_counter()
        grid.within(scene.lat, scene.lon, SEARCH_RADIUS_M)
        grid_us.append((time.perf_counter() - start) * 1e6)
    naive_us: list[float] = []
    mismatches = 0
    for k in range(naive_queries):
        scene = scenes[k % len(scenes)]
        start = time.perf_counter()
        slow = linear.within(scene.lat, scene.lon, SEARCH_RADIUS_M)
        naive_us.append((time.perf_counter() - start) * 1e6)
        fast = grid.within(scene.lat, scene.lon, SEARCH_RADIUS_M)
        # Geodesic and chord differ by far less than a millimetre at these ranges; only a
        # fix within that of the boundary could differ, so any mismatch is reported.
        if {f.device_id for f, _ in slow} != {f.device_id for f, _ in fast}:
            mismatches += 1
    grid_median = statistics.median(grid_us)
    naive_median = statistics.median(naive_us)
    return {
        "grid_us": grid_us,
        "naive_us": naive_us,
        "grid_median_us": grid_median,
        "naive_median_us": naive_median,
        "naive_scan_ratio": naive_median / grid_median,
        "mismatches": mismatches,
        "search_radius_m": SEARCH_RADIUS_M,
    }
