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
device the engine tracks, against a budget of 1 KB per device (docs/PERFORMANCE.md): at
most :data:`TRACK_FIXES` fixes, kept at least :data:`TRACK_STEP_S` apart, so a 1 Hz
device's track spans the last 60 to 72 s. How far back it reaches is how late a trigger
can be and still find a fix before its event: a trigger held through a leader election
is 10 to 15 s late, but one whose device's node was cut off the network waits for the
device's MQTT keepalive to notice (up to twice the keepalive), then for its reconnection
elsewhere: 31.5 s in the cluster drill, where a 5 s step (a 25 to 30 s track) left a
camera reporting twice a second ``stale`` with no fix before the event to judge it by.
The span matches the default ``max_bracket_s`` (60 s), the widest pair of fixes judged
for a moving camera (a still one's wider pair, ``max_still_bracket_s``, is the two ends
of a gap in its telemetry, which the track keeps); the cost of the wider step is a
coarser bracket (at most 12 s wide, 6 s to the nearer fix), which widens the margin of a
moving camera (``speed * nearest``) and changes nothing for a still one. A gap in a
device's telemetry keeps both of its ends: the last fix before the gap is kept when the
first one after it arrives, so a bracket around an outage is as tight as the telemetry
that got through. Each fix is 32 bytes packed in one ``bytes`` object (time, latitude
and longitude as doubles, accuracy and speed as floats, NaN for "not reported"; a
float's 7 digits are plenty for either): about 230 bytes for a full track, nothing for a
device that never sent a position. Appending copies it, once per :data:`TRACK_STEP_S` at
most.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

__all__ = ["TRACK_FIXES", "TRACK_STEP_S", "PastFix", "around", "keep"]

#: Fixes kept per device, and the least time between two kept fixes.
TRACK_FIXES = 6
TRACK_STEP_S = 12.0
_FIX = struct.Struct("<dddff")


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


def keep(track: bytes | None, fix: PastFix) -> bytes:
    """``track`` with ``fix`` appended (a new track when None), the oldest fix dropped
    when it is full. Fixes must come in time order: the caller keeps only fixes the
    index accepted as the latest."""
    packed = _FIX.pack(fix.ts, fix.lat, fix.lon, _opt(fix.acc), _opt(fix.spd))
    if track is None:
        return packed
    if len(track) >= TRACK_FIXES * _FIX.size:
        track = track[_FIX.size :]
    return track + packed


def _fixes(track: bytes) -> list[PastFix]:
    return [
        PastFix(ts, lat, lon, None if math.isnan(acc) else acc, None if math.isnan(spd) else spd)
        for ts, lat, lon, acc, spd in _FIX.iter_unpack(track)
    ]


def around(
    track: bytes | None, latest: PastFix | None, ts: float
) -> tuple[PastFix | None, PastFix | None]:
    """The last fix at or before ``ts`` and the first at or after it, among the track
    and ``latest`` (the device's indexed fix, which the track may not hold yet)."""
    before: PastFix | None = None
    after: PastFix | None = None
    fixes = _fixes(track) if track else []
    if latest is not None:
        fixes.append(latest)
    for fix in fixes:
        if fix.ts <= ts and (before is None or fix.ts > before.ts):
            before = fix
        if fix.ts >= ts and (after is None or fix.ts < after.ts):
            after = fix
    return before, after
