"""The benchmark's fleet with motion-scaled telemetry: who stands, who walks, who drives.

``actimesh bench --telemetry motion`` (and the motion half of ``--side-by-side``) loads
the engine with the telemetry a motion-scaled fleet sends, not a message a second per
device. Each device is asked at every GPS epoch (``rate_hz``, 1 Hz by default) whether a
report is due, by the very rule a device runs (:class:`~actimesh.devices.reporting.
MotionReporter`: dead-band, speed and accuracy change, 10 s heartbeat), and only due
reports are sent, with ``hb``, ``db`` and ``spd``, so the engine judges them by the
motion-scaled freshness and drift rule (geofence/policy.py).

**The mixture** is the fleet simulator's shift (``python -m actimesh.devices.
simulator_rate --units 24 --hours 1``, docs/PERFORMANCE.md): its crews drive 71 % of
the device-seconds, stand and walk at scenes 25 %, and stand docked at the station the
rest. A benchmark lasts a minute, so each device keeps one activity for the run and the
shares are shares of devices (:data:`MIXTURE`):

* **driving** (71 %): cruise at 8 to 15 m/s along blocks of about 150 m, as
  :class:`~actimesh.bench.workload.Movers` drives, and wait at seven corners in ten for 2 to
  15 s (lights, stop signs): the seconds at which a driving crew saves messages;
* **at a scene** (25 %): stand, and now and then walk
  a few metres for 3 to 8 s. The scene cameras the probe's triggers must command are
  among them, standing still at their scene, as in the 1 Hz fleet;
* **at the station** (4 %, the simulator's 3 % and its rounding): stand.

Every device in the 1 Hz fleet moves all the time, because at 1 Hz it makes no
difference to the load; here it does, which is why the activity is modelled and not the
kind. Fixes carry the same accuracy as in the 1 Hz fleet (4 m, 3 m at the probe's
scenes), but their error wanders as a real receiver's does (a Gauss-Markov process with
the simulator's time constant, :data:`~actimesh.devices.simulator_world.GPS_ERROR_TAU_S`):
with a fresh draw every second a still device would look as if it moved and would
report every second or two. The scene cameras' error is a quarter of their accuracy, as
in :class:`~actimesh.bench.workload.Movers`, so the scenes hold together the same way in
both halves of a side-by-side run. The reported speed is the true ground speed (a
receiver's Doppler speed), 0 while standing.

The per-device state lives in flat lists, not objects, and one epoch costs a few
microseconds of the load generator's CPU (its own process, measured beside the engine's).
"""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from actimesh.bench.workload import Fleet, _to_latlon
from actimesh.broker.messages import DeviceState
from actimesh.devices.reporting import (
    MAX_SPEED_MPS,
    MotionReporter,
    Position,
    ReportingSettings,
    TelemetryMode,
)
from actimesh.devices.simulator_world import GPS_ERROR_TAU_S

__all__ = ["MIXTURE", "Activity", "MotionFleet", "MotionReport", "MotionSchedule"]


class Activity(StrEnum):
    """What a device's crew is doing for the whole run."""

    DRIVING = "driving"
    AT_SCENE = "at a scene"
    AT_STATION = "at the station"


#: Share of the fleet in each activity: the simulator's shift (module docstring).
MIXTURE: tuple[tuple[Activity, float], ...] = (
    (Activity.DRIVING, 0.71),
    (Activity.AT_SCENE, 0.25),
    (Activity.AT_STATION, 0.04),
)

#: A due report: ``(lat, lon, acc, db, spd)``.
MotionReport = tuple[float, float, float, float, float]

_GPS_ACC_M = 4.0
_SCENE_ACC_M = 3.0
_BLOCK_M = 150.0
_STOP_CHANCE = 0.7
_STOP_S = (2.0, 15.0)
_DRIVE_MPS = (8.0, 15.0)
_WALK_MPS = (1.0, 1.8)
_WALK_S = (3.0, 8.0)
#: A standing officer at a scene starts to walk once in this many seconds, on average.
_WALK_EVERY_S = 300.0
_STATE = DeviceState.BUFFERING


@dataclass(slots=True)
class MotionSchedule:
    """Every report of a stream, in the order due: report ``j`` is due at the stream's
    epoch ``epoch[j]`` (of ``rate`` epochs a second, round-robin over the fleet, as the
    1 Hz stream sends), from device ``device[j]``."""

    rate: float
    epochs: int
    heartbeat_s: float
    epoch: array[int] = field(default_factory=lambda: array("q"))
    device: array[int] = field(default_factory=lambda: array("l"))
    lat: array[float] = field(default_factory=lambda: array("d"))
    lon: array[float] = field(default_factory=lambda: array("d"))
    acc: array[float] = field(default_factory=lambda: array("d"))
    db: array[float] = field(default_factory=lambda: array("d"))
    spd: array[float] = field(default_factory=lambda: array("d"))

    def __len__(self) -> int:
        return len(self.epoch)


class MotionFleet:
    """Positions and reporting of every device of a :class:`Fleet` (module docstring).

    :meth:`epoch` advances one device to ``now`` and asks its reporter whether a report
    is due. ``reasons`` counts why reports went out, ``activity`` which each device does.
    """

    def __init__(
        self, fleet: Fleet, seed: int, now: float, reporting: ReportingSettings | None = None
    ) -> None:
        settings = reporting or ReportingSettings(mode=TelemetryMode.MOTION)
        if settings.mode is not TelemetryMode.MOTION:
            raise ValueError("a motion-scaled fleet needs ReportingSettings(mode='motion')")
        self.settings = settings
        rng = self._rng = random.Random(seed + 2)
        n = len(fleet)
        half = self._half = fleet.area_half_m
        self.scene_slots = fleet.scene_slots
        shares = [share for _, share in MIXTURE]
        kinds = [activity for activity, _ in MIXTURE]
        self.activity = [
            Activity.AT_SCENE if i in fleet.scene_slots else rng.choices(kinds, shares)[0]
            for i in range(n)
        ]
        self.east = [rng.uniform(-half, half) for _ in range(n)]
        self.north = [rng.uniform(-half, half) for _ in range(n)]
        for slot, (_, east, north) in fleet.scene_slots.items():
            self.east[slot], self.north[slot] = east, north
        self.heading = [rng.uniform(0, 2 * math.pi) for _ in range(n)]
        self.cruise = [
            rng.uniform(*_DRIVE_MPS) if a is Activity.DRIVING else rng.uniform(*_WALK_MPS)
            for a in self.activity
        ]
        #: Until when a driver waits at a corner, or an officer walks.
        self.until = [0.0] * n
        self.since_turn = [rng.uniform(0.0, _BLOCK_M) for _ in range(n)]
        self.speed = [0.0] * n
        self.last = [now] * n
        self._sigma = [
            (_SCENE_ACC_M / 4 if i in fleet.scene_slots else _GPS_ACC_M / math.sqrt(2))
            for i in range(n)
        ]
        self.acc = [_SCENE_ACC_M if i in fleet.scene_slots else _GPS_ACC_M for i in range(n)]
        self.error = [(rng.gauss(0.0, s), rng.gauss(0.0, s)) for s in self._sigma]
        self.reporters = [MotionReporter(settings) for _ in range(n)]

    @property
    def heartbeat_s(self) -> float:
        return self.settings.heartbeat_s

    def shares(self) -> dict[str, float]:
        """The share of devices in each activity (the mixture as drawn)."""
        counts = Counter(self.activity)
        return {str(a): counts[a] / len(self.activity) for a, _ in MIXTURE}

    def reasons(self) -> dict[str, int]:
        """Reports sent so far, by why (:class:`MotionReporter`'s reasons)."""
        total: Counter[str] = Counter()
        for reporter in self.reporters:
            total.update(reporter.reasons)
        return dict(total)

    def _move(self, i: int, now: float, dt: float) -> None:
        activity = self.activity[i]
        if activity is Activity.AT_STATION or i in self.scene_slots:
            return
        rng = self._rng
        if activity is Activity.DRIVING:
            if now < self.until[i]:
                self.speed[i] = 0.0
                return
            speed = self.speed[i] = self.cruise[i]
            moved = speed * dt
            self.since_turn[i] += moved
            if self.since_turn[i] > _BLOCK_M:
                self.since_turn[i] = 0.0
                self.heading[i] += rng.choice((-math.pi / 2, 0.0, math.pi / 2))
                if rng.random() < _STOP_CHANCE:
                    self.until[i] = now + rng.uniform(*_STOP_S)
        else:  # at a scene: mostly standing, now and then a short walk
            if now >= self.until[i]:
                if rng.random() >= dt / _WALK_EVERY_S:
                    self.speed[i] = 0.0
                    return
                self.until[i] = now + rng.uniform(*_WALK_S)
                self.heading[i] = rng.uniform(0, 2 * math.pi)
            self.speed[i] = self.cruise[i]
            moved = self.cruise[i] * dt
        heading = self.heading[i]
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

    def epoch(self, i: int, now: float) -> MotionReport | None:
        """Device ``i``'s GPS epoch at ``now``: its report if one is due, else None."""
        dt = min(max(now - self.last[i], 0.0), 60.0)
        self.last[i] = now
        self._move(i, now, dt)
        # The receiver's error wanders (module docstring): first-order Gauss-Markov.
        sigma = self._sigma[i]
        keep = math.exp(-dt / GPS_ERROR_TAU_S)
        fresh = sigma * math.sqrt(1.0 - keep * keep)
        err_e, err_n = self.error[i]
        rng = self._rng
        err_e = keep * err_e + rng.gauss(0.0, fresh)
        err_n = keep * err_n + rng.gauss(0.0, fresh)
        self.error[i] = (err_e, err_n)
        lat, lon = _to_latlon(self.east[i] + err_e, self.north[i] + err_n)
        speed = min(self.speed[i], MAX_SPEED_MPS)
        fix = Position(lat, lon, self.acc[i], now, speed)
        reporter = self.reporters[i]
        reason = reporter.why(now, _STATE, fix)
        if reason is None:
            return None
        deadband = reporter.sent(now, _STATE, fix, reason)
        assert deadband is not None  # motion mode always promises a dead-band
        return lat, lon, self.acc[i], deadband, speed

    def schedule(self, rate: float, duration_s: float) -> MotionSchedule:
        """The reports of a ``duration_s`` stream of ``rate`` epochs a second, decided
        ahead (on a clock starting at 0) so that the stream itself only packs and sends,
        as the 1 Hz stream does: the devices' own CPU is not the engine machine's."""
        n = len(self.activity)
        out = MotionSchedule(rate, int(rate * duration_s), self.heartbeat_s)
        for e in range(out.epochs):
            i = e % n
            report = self.epoch(i, e / rate)
            if report is not None:
                lat, lon, acc, deadband, speed = report
                out.epoch.append(e)
                out.device.append(i)
                out.lat.append(lat)
                out.lon.append(lon)
                out.acc.append(acc)
                out.db.append(deadband)
                out.spd.append(speed)
        return out
