"""The benchmark's fleet: who the devices are, where they are, how they move, what they send.

Every process of a run (load generator, probe, echo client, naive-scan timer) rebuilds
the same fleet from ``(devices, seed)``, so nothing but those two numbers has to travel
between them.

* Most devices patrol a 20 km x 20 km city area: 60 % officers on foot (body cameras,
  about 1.4 m/s, wandering) and 40 % cruisers (dash cameras, 8 to 15 m/s, turning at
  blocks of about 150 m). Positions carry GPS noise matching the 4 m accuracy they report.
* A few *scenes* (clusters) are incidents in progress: three officers and their cruiser
  standing within a few metres of each other. Each scene has a CEW (taser, no GPS,
  paired with the first officer's body camera) and a cruiser gateway (paired with the
  dash camera). Triggers alternate between a taser draw from the CEW (the engine borrows
  the body camera's fix) and emergency lights from the gateway (the event carries its
  position); either way all four cameras of the scene must be commanded.

Telemetry payloads are packed with a fixed layout (a msgpack map of seven keys with
float64 values; ten with ``hb``, ``db`` and ``spd`` for a motion-scaled report) so the
load generator spends well under a microsecond per message; a test checks the bytes
decode to a valid :class:`~actimesh.broker.messages.Telemetry`.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

from actimesh.broker.messages import DeviceKind

__all__ = [
    "AREA_HALF_M",
    "CENTER",
    "SCENE_SIZE",
    "TELEMETRY_HEAD",
    "Fleet",
    "Movers",
    "Scene",
    "build_fleet",
    "motion_payload",
    "telemetry_payload",
]

#: Downtown Calgary, the seed documents' city.
CENTER = (51.0447, -114.0719)
#: The patrol area is a square of twice this many metres on a side.
AREA_HALF_M = 10_000.0
#: Cameras per scene: three body cameras and one dash camera.
SCENE_SIZE = 4
_M_PER_DEG_LAT = 111_320.0
_M_PER_DEG_LON = _M_PER_DEG_LAT * math.cos(math.radians(CENTER[0]))
_GPS_ACC_M = 4.0
_SCENE_ACC_M = 3.0


@dataclass(frozen=True, slots=True)
class Scene:
    """An incident in progress: cameras standing together and two trigger devices."""

    index: int
    lat: float
    lon: float
    #: The cameras that every trigger at this scene must command.
    cameras: tuple[str, ...]
    cew: str  # paired with cameras[0]; no GPS
    gateway: str  # paired with the dash camera cameras[-1]; sends its position


@dataclass(frozen=True, slots=True)
class Fleet:
    """The devices of one run. ``ids[i]`` reports telemetry; scene trigger devices do not."""

    ids: tuple[str, ...]
    kinds: tuple[DeviceKind, ...]
    scenes: tuple[Scene, ...]
    #: Index into ``ids`` of each scene camera: where the load generator holds it still.
    scene_slots: dict[int, tuple[int, float, float]]
    #: Half the side of the square patrol area, metres.
    area_half_m: float = AREA_HALF_M

    def __len__(self) -> int:
        return len(self.ids)


def _scene_count(devices: int) -> int:
    return max(2, min(50, devices // 20))


def build_fleet(devices: int, seed: int, *, area_half_m: float = AREA_HALF_M) -> Fleet:
    """The deterministic fleet of ``devices`` telemetry-reporting cameras, patrolling a
    square of ``2 * area_half_m`` metres on a side (the runs use the 20 km city)."""
    if devices < 2 * SCENE_SIZE:
        raise ValueError(f"a benchmark fleet needs at least {2 * SCENE_SIZE} devices")
    if not area_half_m >= 1_000.0:
        raise ValueError(f"the patrol area must be at least 2 km across, not {area_half_m!r}")
    rng = random.Random(seed)
    ids: list[str] = []
    kinds: list[DeviceKind] = []
    for i in range(devices):
        on_foot = rng.random() < 0.6
        kinds.append(DeviceKind.BODY_CAM if on_foot else DeviceKind.DASH_CAM)
        ids.append(f"{'bwc' if on_foot else 'dsh'}-{i:07d}")
    scenes: list[Scene] = []
    slots: dict[int, tuple[int, float, float]] = {}
    count = _scene_count(devices)
    # Scenes sit on a coarse grid (>= 500 m apart), so no trigger reaches another scene.
    side = math.ceil(math.sqrt(count))
    step = 2 * area_half_m / (side + 1)
    stride = devices // count
    for s in range(count):
        east = -area_half_m + step * (1 + s % side)
        north = -area_half_m + step * (1 + s // side)
        lat, lon = _to_latlon(east, north)
        members: list[str] = []
        base = s * stride
        for j in range(SCENE_SIZE):
            slot = base + j
            kind = DeviceKind.DASH_CAM if j == SCENE_SIZE - 1 else DeviceKind.BODY_CAM
            kinds[slot] = kind
            ids[slot] = f"{'dsh' if kind is DeviceKind.DASH_CAM else 'bwc'}-{slot:07d}"
            # Officers within 2 m of the scene centre, the cruiser 3 m away.
            angle = 2 * math.pi * j / SCENE_SIZE
            dist = 3.0 if kind is DeviceKind.DASH_CAM else 2.0
            slots[slot] = (s, east + dist * math.cos(angle), north + dist * math.sin(angle))
            members.append(ids[slot])
        scenes.append(Scene(s, lat, lon, tuple(members), f"cew-{s:07d}", f"gtw-{s:07d}"))
    return Fleet(tuple(ids), tuple(kinds), tuple(scenes), slots, area_half_m)


def _to_latlon(east_m: float, north_m: float) -> tuple[float, float]:
    # Equirectangular is exact enough for a load model (not for the engine): positions
    # are only where devices are; distances are the index's to compute, exactly.
    return CENTER[0] + north_m / _M_PER_DEG_LAT, CENTER[1] + east_m / _M_PER_DEG_LON


class Movers:
    """Positions of every device, advanced on each report (officers walk, cruisers drive)."""

    def __init__(self, fleet: Fleet, seed: int, now: float) -> None:
        rng = random.Random(seed + 1)
        self._rng = rng
        n = len(fleet)
        half = self._half = fleet.area_half_m
        self.east = [rng.uniform(-half, half) for _ in range(n)]
        self.north = [rng.uniform(-half, half) for _ in range(n)]
        self.heading = [rng.uniform(0, 2 * math.pi) for _ in range(n)]
        self.speed = [
            rng.uniform(1.0, 1.8) if k is DeviceKind.BODY_CAM else rng.uniform(8.0, 15.0)
            for k in fleet.kinds
        ]
        self.since_turn = [0.0] * n
        self.last = [now] * n
        self._still = fleet.scene_slots
        for slot, (_, east, north) in self._still.items():
            self.east[slot], self.north[slot], self.speed[slot] = east, north, 0.0

    def step(self, i: int, now: float) -> tuple[float, float, float]:
        """Advance device ``i`` to ``now``; its reported ``(lat, lon, acc)``."""
        rng = self._rng
        if i in self._still:
            _, east, north = self._still[i]
            noise = _SCENE_ACC_M / 4  # scene fixes are good: officers stand still outdoors
            lat, lon = _to_latlon(east + rng.gauss(0, noise), north + rng.gauss(0, noise))
            return lat, lon, _SCENE_ACC_M
        dt = min(max(now - self.last[i], 0.0), 60.0)
        self.last[i] = now
        speed = self.speed[i]
        heading = self.heading[i]
        moved = speed * dt
        if speed > 5.0:  # cruisers turn at blocks
            self.since_turn[i] += moved
            if self.since_turn[i] > 150.0:
                self.since_turn[i] = 0.0
                heading += rng.choice((-math.pi / 2, 0.0, math.pi / 2))
        else:  # officers wander
            heading += rng.gauss(0.0, 0.3) * min(dt, 5.0)
        east = self.east[i] + moved * math.cos(heading)
        north = self.north[i] + moved * math.sin(heading)
        half = self._half
        if not -half <= east <= half:
            heading = math.pi - heading
            east = max(-half, min(half, east))
        if not -half <= north <= half:
            heading = -heading
            north = max(-half, min(half, north))
        self.east[i], self.north[i], self.heading[i] = east, north, heading
        sigma = _GPS_ACC_M / math.sqrt(2)
        lat, lon = _to_latlon(east + rng.gauss(0, sigma), north + rng.gauss(0, sigma))
        return lat, lon, _GPS_ACC_M


# {"v": 1, "ts": f64, "state": "buffering", "lat": f64, "lon": f64, "acc": f64, "batt": f64}
_HEAD = b"\x87\xa1v\x01\xa2ts\xcb"
#: The bytes of a telemetry payload before its timestamp (a float64, big-endian).
TELEMETRY_HEAD = _HEAD
_STATE = b"\xa5state\xa9buffering\xa3lat\xcb"
_LON = b"\xa3lon\xcb"
_ACC = b"\xa3acc\xcb"
_BATT = b"\xa4batt\xcb"
_TELEMETRY = struct.Struct(
    f">{len(_HEAD)}sd{len(_STATE)}sd{len(_LON)}sd{len(_ACC)}sd{len(_BATT)}sd"
)


def telemetry_payload(ts: float, lat: float, lon: float, acc: float, batt: float) -> bytes:
    """A Telemetry payload (state ``buffering``) in msgpack, packed with a fixed layout."""
    return _TELEMETRY.pack(_HEAD, ts, _STATE, lat, _LON, lon, _ACC, acc, _BATT, batt)


# The same, then {"hb": f64, "db": f64, "spd": f64}: a motion-scaled report (bench/motion.py)
_MOTION_HEAD = b"\x8a\xa1v\x01\xa2ts\xcb"
_HB = b"\xa2hb\xcb"
_DB = b"\xa2db\xcb"
_SPD = b"\xa3spd\xcb"
_MOTION = struct.Struct(
    f">{len(_MOTION_HEAD)}sd{len(_STATE)}sd{len(_LON)}sd{len(_ACC)}sd{len(_BATT)}sd"
    f"{len(_HB)}sd{len(_DB)}sd{len(_SPD)}sd"
)


def motion_payload(
    ts: float, lat: float, lon: float, acc: float, batt: float, *, hb: float, db: float, spd: float
) -> bytes:
    """A motion-scaled Telemetry payload (``hb``, ``db``, ``spd``), fixed layout."""
    fields = (_MOTION_HEAD, ts, _STATE, lat, _LON, lon, _ACC, acc, _BATT, batt)
    return _MOTION.pack(*fields, _HB, hb, _DB, db, _SPD, spd)
