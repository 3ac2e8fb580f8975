"""Each device's recent fixes: enough to say where it was at an event's time when the
event reaches the engine late.

A trigger can wait in the broker while the devices around it go on reporting (a NATS
cluster electing new stream leaders holds QoS 1 messages for 10 s and more; telemetry
resumes first). By the time the engine judges such an event, every camera's latest fix
may be more than ``max_fix_age_s`` *after* it, and the latest fix alone would call a
camera standing still within 30 ft ``stale``. So the engine keeps a short track per
device and judges a late event against the fixes on either side of its time
(:meth:`actimesh.geofence.InclusionPolicy.judge_between`).

The track is bounded in count and thinned in time, because it costs memory for every
device the engine tracks (docs/PERFORMANCE.md): at most :data:`TRACK_FIXES` fixes, kept
at least :data:`TRACK_STEP_S` apart, so a 1 Hz device's track spans a minute. A gap in a
device's telemetry keeps both of its ends: the last fix before the gap is kept when the
first one after it arrives, so a bracket around an outage is as tight as the telemetry
that got through. Each fix is five doubles in one ``array`` (time, latitude, longitude,
accuracy and speed, NaN for "not reported"): about 560 bytes for a full track, nothing
for a device that never sent a position.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

__all__ = ["TRACK_FIXES", "TRACK_STEP_S", "PastFix", "around", "keep"]

#: Fixes kept per device, and the least time between two kept fixes.
TRACK_FIXES = 12
TRACK_STEP_S = 5.0
_WIDTH = 5


@dataclass(frozen=True, slots=True)
class PastFix:
    """One fix of a device's track; ``acc`` and ``spd`` None when not reported."""

    ts: float
    lat: float
    lon: float
    acc: float | None
    spd: float | None


def _opt(value: float | None) -> float:
    return math.nan if value is None else value


def keep(track: array[float] | None, fix: PastFix) -> array[float]:
    """``track`` with ``fix`` appended (a new track when None), the oldest fix dropped
    when it is full. Fixes must come in time order: the caller keeps only fixes the
    index accepted as the latest."""
    if track is None:
        track = array("d")
    track.extend((fix.ts, fix.lat, fix.lon, _opt(fix.acc), _opt(fix.spd)))
    if len(track) > TRACK_FIXES * _WIDTH:
        del track[:_WIDTH]
    return track


def newest_ts(track: array[float] | None) -> float:
    """The time of the newest kept fix; -inf for an empty track."""
    return -math.inf if not track else track[-_WIDTH]


def _at(track: array[float], i: int) -> PastFix:
    ts, lat, lon, acc, spd = track[i : i + _WIDTH]
    return PastFix(ts, lat, lon, None if math.isnan(acc) else acc, None if math.isnan(spd) else spd)


def around(
    track: array[float] | None, latest: PastFix | None, ts: float
) -> tuple[PastFix | None, PastFix | None]:
    """The last fix at or before ``ts`` and the first at or after it, among the track
    and ``latest`` (the device's indexed fix, which the track may not hold yet)."""
    before: PastFix | None = None
    after: PastFix | None = None
    fixes = [_at(track, i) for i in range(0, len(track), _WIDTH)] if track else []
    if latest is not None:
        fixes.append(latest)
    for fix in fixes:
        if fix.ts <= ts and (before is None or fix.ts > before.ts):
            before = fix
        if fix.ts >= ts and (after is None or fix.ts < after.ts):
            after = fix
    return before, after
