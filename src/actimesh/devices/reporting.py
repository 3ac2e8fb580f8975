"""When a device sends telemetry: about once a second, or when it matters (motion-scaled).

The engine needs a device's position for one question: is it within 30 ft (9.144 m) of
an event? A device standing still answers that the same way every second, so sending its
fix every second (most of a shift: officers stand at scenes, cruisers park) is traffic
that tells the engine nothing. In :attr:`TelemetryMode.MOTION` a device sends telemetry
only when one of these holds, checked at every GPS epoch (``telemetry_interval_s``):

* it has moved more than its **dead-band** from the fix it last sent;
* its state changed (off, buffering, recording), or it gained or lost its fix;
* its reported accuracy changed materially: by more than ``acc_change_m`` (2 m) and
  ``acc_change_fraction`` (half) of the accuracy it last sent, since the engine widens
  the radius by it;
* its ground speed changed by more than ``speed_change_mps`` (1 m/s) from the speed it
  last sent: the engine grows a fix's uncertainty by that speed times the fix's age
  (geofence/policy.py), so an officer who was standing and starts to walk says so at
  once rather than after walking the whole dead-band;
* ``heartbeat_s`` (10 s) has passed since the last report: the heartbeat re-asserts the
  position (with the current fix and its time) and shows the device is alive. While the
  engine's slow-down holds (devices/slowdown.py) the heartbeat is longer, from the report
  after the one that announced it: each report keeps the promise made by the last.

The dead-band, from the radius ``r`` and the reported 1-sigma accuracy ``acc``::

    db = min(max(deadband_fraction * r, deadband_acc_factor * acc), deadband_max_fraction * r)
       = min(max(r / 4, acc / 2), r / 2)     # 2.29 m to 4.57 m for the 30 ft rule

Why these numbers. ``r / 4`` (2.29 m, 7.5 ft): the engine adds the dead-band to the
inclusion margin (geofence/policy.py), so it must stay small against the radius; a
quarter keeps the extra reach under 2.3 m while a walking officer (1.4 m/s) still
reports every second or two and a cruiser at any speed above 2.3 m/s every second,
exactly as at 1 Hz. ``acc / 2``: a worse fix wanders more while the device stands
still (GPS error is correlated over tens of seconds, so successive fixes of a still
receiver drift by a fraction of the accuracy, not by all of it), and reporting that
wander would cost messages and tell the engine nothing. ``r / 2`` caps it so that even a
poor fix never lets a device move half the radius unreported.

Every motion-scaled report carries ``hb`` (the heartbeat promised) and ``db`` (the
dead-band promised from this fix), so the engine judges each fix by the promise that came
with it. :attr:`TelemetryMode.FIXED` (``"1hz"``) sends every epoch and no ``hb``/``db``,
as devices did before, for comparison and for engines that predate the fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from actimesh.broker.messages import DeviceState
from actimesh.geofence import distance_m

__all__ = ["MAX_SPEED_MPS", "MotionReporter", "Position", "ReportingSettings", "TelemetryMode"]

#: The fastest ground speed telemetry carries (``spd``'s bound on the wire), m/s.
MAX_SPEED_MPS = 150.0


@dataclass(frozen=True, slots=True)
class Position:
    """A GPS fix as the device's receiver reports it."""

    lat: float
    lon: float
    acc: float | None = None
    ts: float | None = None  # when the fix was taken; None = now
    speed: float | None = None  # ground speed, m/s; None = the receiver does not say


#: The 30 ft rule's radius, the default the dead-band is tied to.
RULE_RADIUS_M = 9.144


class TelemetryMode(StrEnum):
    """How often a device sends telemetry."""

    #: Every GPS epoch (about once a second), without ``hb``/``db``: the old behaviour.
    FIXED = "1hz"
    #: On motion beyond the dead-band, state or accuracy change, and a heartbeat.
    MOTION = "motion"


@dataclass(frozen=True, slots=True)
class ReportingSettings:
    """When a device sends telemetry (module docstring)."""

    mode: TelemetryMode = TelemetryMode.FIXED
    heartbeat_s: float = 10.0
    radius_m: float = RULE_RADIUS_M
    deadband_fraction: float = 0.25
    deadband_acc_factor: float = 0.5
    deadband_max_fraction: float = 0.5
    acc_change_m: float = 2.0
    acc_change_fraction: float = 0.5
    speed_change_mps: float = 1.0

    def __post_init__(self) -> None:
        try:
            mode = TelemetryMode(self.mode)
        except ValueError:
            names = " or ".join(repr(m.value) for m in TelemetryMode)
            raise ValueError(f"telemetry mode must be {names}, got {self.mode!r}") from None
        object.__setattr__(self, "mode", mode)
        if not 0.0 < self.heartbeat_s <= 300.0:
            raise ValueError(f"heartbeat_s must be within (0, 300], got {self.heartbeat_s!r}")
        if not 0.0 < self.radius_m <= 1_000.0:
            raise ValueError(f"radius_m must be within (0, 1000], got {self.radius_m!r}")
        for name in (
            "deadband_fraction",
            "deadband_acc_factor",
            "acc_change_fraction",
            "acc_change_m",
            "speed_change_mps",
        ):
            value = getattr(self, name)
            if not 0.0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.deadband_fraction <= self.deadband_max_fraction <= 1.0:
            raise ValueError(
                "deadband_max_fraction must be within [deadband_fraction, 1], "
                f"got {self.deadband_max_fraction!r}"
            )

    def deadband_m(self, acc: float | None) -> float:
        """The dead-band in metres for a fix of this reported accuracy."""
        r = self.radius_m
        noise = self.deadband_acc_factor * acc if acc is not None and acc >= 0.0 else 0.0
        return min(max(self.deadband_fraction * r, noise), self.deadband_max_fraction * r)


@dataclass(frozen=True, slots=True)
class _Sent:
    ts: float
    state: DeviceState
    fix: Position | None
    deadband_m: float
    heartbeat_s: float


class MotionReporter:
    """Decides, epoch by epoch, whether a device sends telemetry (module docstring).

    Pure (time passed in), so the agent and the fleet simulator's measurements use the
    same rule. ``reasons`` counts why each report went out.
    """

    def __init__(self, settings: ReportingSettings) -> None:
        self.settings = settings
        self._sent: _Sent | None = None
        self._before: _Sent | None = None
        self.reasons: dict[str, int] = {}
        #: The engine's slow-down heartbeat while one holds (devices/slowdown.py); the
        #: device's owner sets it each epoch. It lengthens the heartbeat, never shortens
        #: it, and makes a 1 Hz device report motion-scaled meanwhile.
        self.slow_heartbeat_s: float | None = None

    @property
    def motion_scaled(self) -> bool:
        return self.settings.mode is TelemetryMode.MOTION or self.slow_heartbeat_s is not None

    @property
    def heartbeat_s(self) -> float:
        """The heartbeat in use now: the device's own, or the engine's slower one."""
        own = self.settings.heartbeat_s
        slow = self.slow_heartbeat_s
        return own if slow is None else max(own, slow)

    def why(self, now: float, state: DeviceState, fix: Position | None) -> str | None:
        """Why a report is due now, or None when the device stays quiet this epoch."""
        last = self._sent
        if last is None or not self.motion_scaled:
            return "first" if self.motion_scaled else "epoch"
        if state is not last.state:
            return "state"
        before = last.fix
        if fix is None or before is None:
            if (fix is None) != (before is None):
                return "fix"
        else:
            changed = self._changed(fix, before, last.deadband_m)
            if changed is not None:
                return changed
        # The engine judges the last fix by the heartbeat announced with it: keep that
        # promise even when a slow-down has lengthened the heartbeat since (the next
        # report announces the longer one), so no fix goes stale in the gap, and the
        # fleet does not answer a slow-down with a burst of reports all at once.
        if now - last.ts >= min(self.heartbeat_s, last.heartbeat_s):
            return "heartbeat"
        return None

    def _changed(self, fix: Position, before: Position, deadband_m: float) -> str | None:
        s = self.settings
        acc, was = fix.acc, before.acc
        if (acc is None) != (was is None) or (
            acc is not None
            and was is not None
            and abs(acc - was) > max(s.acc_change_m, s.acc_change_fraction * was)
        ):
            return "accuracy"
        if distance_m(fix.lat, fix.lon, before.lat, before.lon) > deadband_m:
            return "moved"
        speed, was_speed = fix.speed, before.speed
        if (speed is None) != (was_speed is None) or (
            speed is not None
            and was_speed is not None
            and abs(speed - was_speed) > s.speed_change_mps
        ):
            return "speed"
        return None

    def sent(
        self, now: float, state: DeviceState, fix: Position | None, reason: str
    ) -> float | None:
        """Record a report sent now; return its dead-band (None in 1 Hz mode)."""
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if not self.motion_scaled:
            return None
        deadband = self.settings.deadband_m(fix.acc if fix is not None else None)
        self._before = self._sent
        self._sent = _Sent(now, state, fix, deadband, self.heartbeat_s)
        return deadband

    def unsent(self) -> None:
        """The report :meth:`sent` recorded did not leave (the link failed): measure from
        the one before, so the next epoch tries again rather than waiting for the
        heartbeat while the engine holds an older fix than the device believes."""
        self._sent = self._before
