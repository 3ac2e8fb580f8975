"""How index query latency grows with the fleet: every size timed side by side.

The sweep's runs are minutes apart on a shared two-core machine, and the p99 of an
8 µs query moves by 25 % or more between runs of the *same* size (docs/PERFORMANCE.md).
Compared across runs, that noise is most of what a growth ratio shows. So the growth
target is measured the way the other targets are, against a baseline taken in the same
run under the same conditions: one process loads a :class:`~actimesh.geofence.GridIndex`
for each fleet size (the runs' fleet model and positions), then asks them the same
question in turn, query by query (the smallest fleet first in one round, last in the
next), so a pause of the machine falls on every size alike.

Two layouts, because a query's work is the devices near the point (by design: that is
what makes it independent of the fleet):

* ``same_density``: the patrol area grows with the fleet (100,000 devices over 100 times
  the 1,000-device city, a state-wide fleet), so every size has the same answer at a
  scene and the same passers-by near it. Only the fleet size changes: the target's figure.
* ``same_city``: every size in the runs' 20 km city. At 100,000 devices that is 250
  devices per km², and passers-by fall in the queried cells of some scenes (up to 7
  candidates instead of the scene's 4): more work because there is more to look at.

The heap is frozen after loading, as the engine freezes its own at the end of its
warm-up (``[engine] freeze_heap``): a collection of the fleet models' objects in the
middle of a timed query would measure the collector, not the index.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from actimesh.bench.naive import SEARCH_RADIUS_M
from actimesh.bench.report import ratio
from actimesh.bench.workload import AREA_HALF_M, Movers, Scene, build_fleet
from actimesh.drill import percentile
from actimesh.geofence import GridIndex

__all__ = ["side_by_side"]


@dataclass(slots=True)
class _Loaded:
    devices: int
    index: GridIndex
    scenes: tuple[Scene, ...]
    samples_us: list[float]


def _load(devices: int, seed: int, now: float, area_half_m: float) -> _Loaded:
    fleet = build_fleet(devices, seed, area_half_m=area_half_m)
    movers = Movers(fleet, seed, now)
    index = GridIndex()
    for i, device in enumerate(fleet.ids):
        lat, lon, acc = movers.step(i, now)
        index.upsert(device, lat, lon, acc, now)
    return _Loaded(devices, index, fleet.scenes, [])


def _figures(loaded: Sequence[_Loaded]) -> dict[str, Any]:
    small, large = loaded[0], loaded[-1]
    return {
        "sizes": {
            str(one.devices): {
                "p50_us": percentile(one.samples_us, 50),
                "p99_us": percentile(one.samples_us, 99),
                "queries": len(one.samples_us),
            }
            for one in loaded
        },
        "p50_growth": ratio(percentile(large.samples_us, 50), percentile(small.samples_us, 50)),
        "p99_growth": ratio(percentile(large.samples_us, 99), percentile(small.samples_us, 99)),
    }


def side_by_side(sizes: Sequence[int], seed: int, *, queries: int) -> dict[str, Any]:
    """Time ``queries`` index queries per fleet size and layout, interleaved; µs.

    The top-level ``p50_growth`` and ``p99_growth`` are the ``same_density`` layout's.
    """
    if len(sizes) < 2 or queries < 1:
        raise ValueError("side_by_side needs two fleet sizes or more and one query or more")
    now = time.time()
    ordered = sorted(sizes)
    layouts = {
        "same_density": [
            _load(n, seed, now, AREA_HALF_M * math.sqrt(n / ordered[0])) for n in ordered
        ],
        "same_city": [_load(n, seed, now, AREA_HALF_M) for n in ordered],
    }
    everyone = [one for loaded in layouts.values() for one in loaded]
    gc.collect()
    gc.freeze()
    try:
        clock = time.perf_counter
        for k in range(queries):
            for one in everyone if k % 2 == 0 else reversed(everyone):
                scene = one.scenes[k % len(one.scenes)]
                start = clock()
                one.index.within(scene.lat, scene.lon, SEARCH_RADIUS_M)
                one.samples_us.append((clock() - start) * 1e6)
    finally:
        gc.unfreeze()
    out: dict[str, Any] = {
        "from_devices": ordered[0],
        "to_devices": ordered[-1],
        "queries_per_size": queries,
        **{name: _figures(loaded) for name, loaded in layouts.items()},
    }
    out["p50_growth"] = out["same_density"]["p50_growth"]
    out["p99_growth"] = out["same_density"]["p99_growth"]
    return out
