"""How index query latency grows with the fleet: every size timed side by side.

The sweep's runs are minutes apart on a shared two-core machine, and the p99 of an
8 µs query moves by 25 % or more between runs of the *same* size (docs/PERFORMANCE.md).
Compared across runs, that noise is most of what a growth ratio shows. So the growth
target is measured the way the other targets are, against a baseline taken in the same
run under the same conditions: one process loads a :class:`~actimesh.geofence.GridIndex`
for the smallest fleet and one for a larger one (the runs' fleet model and positions),
then asks them the same question in turn, query by query (the smallest first in one
round, last in the next), so a pause of the machine falls on both alike. Two indexes at
a time: with more in the same loop they evict each other from the CPU caches (six at
once measured 1.20-1.27x where two measure about 1.05x): the figure would be that.

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
from actimesh.geofence import GridIndex
from actimesh.stats import percentile

__all__ = ["side_by_side"]


@dataclass(slots=True)
class _Loaded:
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
    return _Loaded(index, fleet.scenes, [])


def _pair(small: _Loaded, large: _Loaded, queries: int) -> None:
    """Time both indexes, query by query, each round starting with the other one."""
    clock = time.perf_counter
    for k in range(queries):
        for one in (small, large) if k % 2 == 0 else (large, small):
            scene = one.scenes[k % len(one.scenes)]
            start = clock()
            one.index.within(scene.lat, scene.lon, SEARCH_RADIUS_M)
            one.samples_us.append((clock() - start) * 1e6)


def _layout(
    ordered: Sequence[int], seed: int, now: float, queries: int, *, same_density: bool
) -> dict[str, Any]:
    smallest, largest = ordered[0], ordered[-1]

    def load(n: int) -> _Loaded:
        half = AREA_HALF_M * math.sqrt(n / smallest) if same_density else AREA_HALF_M
        return _load(n, seed, now, half)

    # Each larger size is timed beside a fresh copy of the smallest, two indexes at a
    # time (see the module's docstring); the smallest's figures are from the last pair.
    timed: dict[int, list[float]] = {}
    for n in ordered[1:]:
        small, large = load(smallest), load(n)
        gc.collect()
        gc.freeze()
        try:
            _pair(small, large, queries)
        finally:
            gc.unfreeze()
        timed[smallest], timed[n] = small.samples_us, large.samples_us
    p50 = {n: percentile(samples, 50) for n, samples in timed.items()}
    p99 = {n: percentile(samples, 99) for n, samples in timed.items()}
    return {
        "sizes": {
            str(n): {"p50_us": p50[n], "p99_us": p99[n], "queries": len(timed[n])} for n in ordered
        },
        "p50_growth": ratio(p50[largest], p50[smallest]),
        "p99_growth": ratio(p99[largest], p99[smallest]),
    }


def side_by_side(sizes: Sequence[int], seed: int, *, queries: int) -> dict[str, Any]:
    """Time ``queries`` index queries per fleet size and layout, each larger size beside
    the smallest; microseconds. The top-level ``p50_growth`` and ``p99_growth`` are the
    ``same_density`` layout's, smallest to largest size.
    """
    if len(sizes) < 2 or queries < 1:
        raise ValueError("side_by_side needs two fleet sizes or more and one query or more")
    now = time.time()
    ordered = sorted(sizes)
    out: dict[str, Any] = {
        "from_devices": ordered[0],
        "to_devices": ordered[-1],
        "queries_per_size": queries,
        "same_density": _layout(ordered, seed, now, queries, same_density=True),
        "same_city": _layout(ordered, seed, now, queries, same_density=False),
    }
    out["p50_growth"] = out["same_density"]["p50_growth"]
    out["p99_growth"] = out["same_density"]["p99_growth"]
    return out
