"""Where each device has been lately: a bounded ring of its recent fixes.

The ledger keeps what the engine decided (each camera's distance and fix age at the
event), not where the cameras were; the broker keeps only the latest telemetry. The
map needs more: a line from the event to where each camera *was* when it fired, a short
track behind a followed unit, and the replay of an incident from 30 s before the event.
So the dispatch keeps, per device, the fixes of the last ``horizon_s`` seconds (at most
``max_points`` of them, one fix a second is the devices' rate), with the device's
recording state at each. Memory is bounded twice: each ring by count and age, and all
of them together by ``max_total`` fixes (about 150 bytes each): with more devices than
``max_total / max_points``, each ring keeps its fair share (``max_total`` divided by the
devices tracked, never under ``min_points``), so a large fleet keeps a shorter history
rather than more memory. What falls out of a ring is gone: a replay of an incident older
than the horizon shows the ledger's decisions without movement.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

__all__ = ["Fix", "Tracks"]


@dataclass(frozen=True, slots=True)
class Fix:
    """One position report: device clock, position, accuracy, recording state."""

    ts: float
    lat: float
    lon: float
    acc: float | None
    state: str | None

    def to_json(self) -> list[float | str | None]:
        return [self.ts, self.lat, self.lon, self.acc, self.state]


class Tracks:
    """Recent fixes per device, oldest first."""

    def __init__(
        self,
        *,
        horizon_s: float = 900.0,
        max_points: int = 900,
        max_total: int = 500_000,
        min_points: int = 60,
    ) -> None:
        self.horizon_s = horizon_s
        self.max_points = max_points
        self.max_total = max_total
        self.min_points = min_points
        self._rings: dict[str, deque[Fix]] = {}
        #: Fixes dropped because a ring was full (not because they aged out).
        self.dropped = 0

    def share(self) -> int:
        """How many fixes each ring may keep now."""
        fair = self.max_total // max(1, len(self._rings))
        return max(self.min_points, min(self.max_points, fair))

    def add(self, device_id: str, fix: Fix) -> None:
        """Append a fix; an out-of-order one (older than the last) is ignored."""
        ring = self._rings.get(device_id)
        if ring is None:
            ring = self._rings[device_id] = deque(maxlen=self.max_points)
        elif ring and fix.ts < ring[-1].ts:
            return
        if len(ring) == self.max_points:
            self.dropped += 1
        ring.append(fix)
        for _ in range(len(ring) - self.share()):
            ring.popleft()
            self.dropped += 1
        horizon = fix.ts - self.horizon_s
        while ring and ring[0].ts < horizon:
            ring.popleft()

    def forget(self, device_id: str) -> None:
        self._rings.pop(device_id, None)

    def __len__(self) -> int:
        return sum(len(r) for r in self._rings.values())

    def between(self, device_id: str, start: float, end: float) -> list[Fix]:
        """The fixes with ``start <= ts <= end``, and the last one before ``start`` (so a
        replay knows where the device was when it begins)."""
        ring = self._rings.get(device_id)
        if not ring:
            return []
        points = list(ring)
        first = bisect_right([p.ts for p in points], start)
        lead = points[first - 1 : first] if first > 0 else []
        return lead + [p for p in points[first:] if p.ts <= end]

    def at(self, device_id: str, ts: float, max_age_s: float) -> Fix | None:
        """The last fix at or before ``ts`` (no older than ``max_age_s``), else the first
        after it within ``max_age_s``: where the device was at ``ts``."""
        ring = self._rings.get(device_id)
        if not ring:
            return None
        points = list(ring)
        i = bisect_right([p.ts for p in points], ts)
        before = points[i - 1] if i > 0 else None
        if before is not None and ts - before.ts <= max_age_s:
            return before
        after = points[i] if i < len(points) else None
        if after is not None and after.ts - ts <= max_age_s:
            return after
        return None
