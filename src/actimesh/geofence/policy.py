"""The inclusion policy: does a camera at a given distance count as within the radius?

The rule the mesh implements is "every camera within 30 ft (9.144 m) of the event". Both
positions in that comparison are GPS fixes, and consumer GPS is often 3 to 10 m off
(worse among buildings): an error as large as the radius itself. Comparing the two centre
points alone would therefore miss officers who really are within 30 ft, and a missed
activation (an incident with no video) is far worse than an extra one (a recording
nobody needed). So the default, :attr:`InclusionMode.INCLUSIVE`:

* widens the radius by the combined reported uncertainty of the two fixes,
  ``hypot(acc_device, acc_event)`` (1-sigma each, independent, so they add in
  quadrature; a missing accuracy counts as 0);
* caps that margin at ``max_margin_m`` (6 m by default), which bounds the blast radius
  of one bad fix: a phone claiming 500 m accuracy must not activate a whole city block;
* refuses stale fixes: a fix more than ``max_fix_age_s`` (10 s) away from the event time,
  in either direction, is not evidence of where the device is now (a car at 50 km/h
  moves 140 m in 10 s). A NaN time counts as stale.

Devices in **motion-scaled** mode (telemetry with ``hb`` and ``db``, docs/SCALING.md)
report when they have moved more than their dead-band ``db`` from their last fix, when
their state or accuracy changes, and otherwise every ``hb`` seconds, re-asserting their
position. So, for them:

* the fix stays fresh while its next report is not overdue: up to
  ``min(hb, max_heartbeat_s) + heartbeat_grace_s`` seconds (never less than
  ``max_fix_age_s``); a device that promises a slower heartbeat than ``max_heartbeat_s``
  is held to that;
* its uncertainty grows with the time between fix and event: INCLUSIVE mode adds
  ``min(db, spd * |event_ts - fix_ts|)`` to the margin (``spd``, the ground speed at the
  fix; ``db`` when the device did not say), under the same ``max_margin_m`` cap. ``db``
  bounds it because the device promised to report before moving farther; a still
  device (``spd`` 0) re-asserted by its heartbeat is judged on its fix alone, exactly
  as a 1 Hz device is. CENTRE mode stays literal: reported centre against the event's.

A **late event** (one that reaches the engine after the cameras' telemetry moved on: a
cluster electing a stream leader holds triggers 10 s and more while telemetry resumes
first) finds every latest fix stale. :meth:`InclusionPolicy.judge_between` then judges a
camera on its two fixes on either side of the event's time, at most ``max_bracket_s``
(60 s) apart: the caller measures the distance at the camera's position on the straight
line between them at the event's time, and INCLUSIVE mode adds how far it can have left
that line, ``speed * (time to the nearer fix)``, with the faster of the two reported
speeds; an unknown speed takes the whole ``max_margin_m`` (the cap bounds what a fix
without speed can reach, as it bounds a bad accuracy). A still camera at both fixes is
judged exactly, 29.9 ft within and 30.1 ft too far, in both modes. The dead-band bounds
nothing here: the reports it promises are the ones that did not get through. Sixty
seconds covers an election and a reconnect with room to spare; a wider gap says too
little about where a *moving* camera was in between.

A **still** camera says more. A device whose connection was lost reports again only
once its keepalive has noticed and it has reconnected (twice the keepalive and more:
two minutes and beyond at a 60 s keepalive), and an officer standing at a scene is the
common case. So fixes up to ``max_still_bracket_s`` (180 s) apart are still bridged
when the camera did not move between them: the two fixes no farther apart than the
worse of their reported accuracies (at least :data:`STILL_FLOOR_M`, so that two fixes
reporting no accuracy are not held to an exactness GPS never has). Such a camera is
judged as any bracketed one, at its position on the line, with the same margin
(``speed * nearest``, the cap when its speed is unknown). The bound exists because no
bracket is evidence forever; a camera that moved across a gap wider than
``max_bracket_s`` is left ``stale``: nothing says where it was at the event, and a
command on interpolation alone would be a command on no evidence.

:attr:`InclusionMode.CENTRE` is the literal rule, centre point against centre point, for
agencies whose policy says exactly that. Freshness applies in both modes.

Every decision returns the margin it used, so the activation ledger can show why a
camera 12 m away was, or was not, told to record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DECISION_BAND_M",
    "STILL_FLOOR_M",
    "InclusionMode",
    "InclusionPolicy",
    "MotionPromise",
    "Verdict",
]

#: A motion-scaled device's promise, from its telemetry: ``(hb, db, spd)``, the heartbeat
#: in seconds, the dead-band in metres and the ground speed (None: not reported).
MotionPromise = tuple[float, float, float | None]

#: The least separation of two fixes that still counts as "did not move" across a gap
#: wider than ``max_bracket_s``, whatever accuracy they report (one GPS epoch's jitter).
STILL_FLOOR_M = 1.0

#: Metres beyond the radius out to which every camera gets a decision row, at least,
#: whatever the policy: the default ``max_margin_m``, the widest band the default
#: policy searches.
DECISION_BAND_M = 6.0


class InclusionMode(StrEnum):
    """How position uncertainty affects "within the radius"."""

    #: Widen the radius by the combined reported accuracy, capped (the default).
    INCLUSIVE = "inclusive"
    #: Compare centre points only: the literal rule.
    CENTRE = "centre"


class Verdict(StrEnum):
    """The policy's answer for one camera and one event."""

    #: Close enough and fresh enough: the camera is told to record.
    WITHIN = "within"
    #: Fresh, but farther than the radius plus the margin.
    TOO_FAR = "too_far"
    #: The fix is too old (or too far in the future) to say where the camera is.
    STALE = "stale"


def _accuracy(acc: float | None) -> float:
    # A missing, NaN or negative accuracy is no report at all, so it adds nothing. An
    # infinite one is an honest "no idea" and ends up at the cap.
    if acc is None or not acc >= 0.0:
        return 0.0
    return acc


@dataclass(frozen=True, slots=True)
class InclusionPolicy:
    """When a camera at a given distance from an event counts as within the radius.

    ``max_fix_age_s`` is the largest gap between the fix time and the event time that
    is still trusted; ``mode`` chooses whether reported accuracy widens the radius; and
    ``max_margin_m`` caps that widening. See the module docstring for why.
    """

    max_fix_age_s: float = 10.0
    mode: InclusionMode = InclusionMode.INCLUSIVE
    max_margin_m: float = 6.0
    #: The slowest heartbeat trusted from a motion-scaled device, and how late its
    #: next report may be (delivery, a missed GPS epoch) before its fix is stale.
    max_heartbeat_s: float = 15.0
    heartbeat_grace_s: float = 3.0
    #: The longest gap between two fixes that :meth:`judge_between` still bridges, and
    #: the longest it bridges for a camera that did not move across it.
    max_bracket_s: float = 60.0
    max_still_bracket_s: float = 180.0

    def __post_init__(self) -> None:
        # `not 0 <= v < inf` also rejects NaN, which would otherwise make every
        # comparison below silently False.
        if not 0.0 <= self.max_fix_age_s < math.inf:
            raise ValueError(
                f"max_fix_age_s must be a finite number of seconds >= 0, got {self.max_fix_age_s!r}"
            )
        if not 0.0 <= self.max_margin_m < math.inf:
            raise ValueError(
                f"max_margin_m must be a finite number of metres >= 0, got {self.max_margin_m!r}"
            )
        if not 0.0 <= self.max_heartbeat_s <= 300.0:
            raise ValueError(
                f"max_heartbeat_s must be seconds within [0, 300], got {self.max_heartbeat_s!r}"
            )
        if not 0.0 <= self.heartbeat_grace_s < math.inf:
            raise ValueError(
                "heartbeat_grace_s must be a finite number of seconds >= 0, "
                f"got {self.heartbeat_grace_s!r}"
            )
        if not 0.0 <= self.max_bracket_s < math.inf:
            raise ValueError(
                f"max_bracket_s must be a finite number of seconds >= 0, got {self.max_bracket_s!r}"
            )
        if not self.max_bracket_s <= self.max_still_bracket_s < math.inf:
            raise ValueError(
                "max_still_bracket_s must be a finite number of seconds >= max_bracket_s "
                f"({self.max_bracket_s!r}), got {self.max_still_bracket_s!r}"
            )
        try:
            mode = InclusionMode(self.mode)
        except ValueError:
            names = " or ".join(repr(m.value) for m in InclusionMode)
            raise ValueError(f"mode must be {names}, got {self.mode!r}") from None
        # Accept the plain string from a config file; the field then holds the enum.
        object.__setattr__(self, "mode", mode)

    def margin_m(
        self, acc_device: float | None, acc_event: float | None, drift_m: float = 0.0
    ) -> float:
        """Return the metres added to the radius for these two reported accuracies.

        INCLUSIVE: ``hypot(acc_device, acc_event)`` plus ``drift_m`` (how far a
        motion-scaled device may have moved since its fix, :meth:`drift_m`), capped at
        ``max_margin_m``, a missing accuracy counting as 0. CENTRE: always 0.
        """
        if self.mode is InclusionMode.CENTRE:
            return 0.0
        margin = math.hypot(_accuracy(acc_device), _accuracy(acc_event)) + drift_m
        return min(margin, self.max_margin_m)

    @staticmethod
    def drift_m(motion: MotionPromise | None, age_s: float) -> float:
        """How far a device may have moved in ``age_s`` seconds since its fix: 0 for a
        1 Hz device (``motion`` None), else ``min(db, spd * |age_s|)``, ``db`` when the
        speed is unknown."""
        if motion is None:
            return 0.0
        _hb, deadband, speed = motion
        if speed is None:
            return deadband
        return min(deadband, speed * abs(age_s))

    def max_age_s(self, heartbeat_s: float | None = None) -> float:
        """Return the largest gap between fix and event time still fresh for a device
        with this heartbeat (None: a 1 Hz device, ``max_fix_age_s``)."""
        if heartbeat_s is None or not heartbeat_s > 0.0:
            return self.max_fix_age_s
        promised = min(heartbeat_s, self.max_heartbeat_s) + self.heartbeat_grace_s
        return max(self.max_fix_age_s, promised)

    @property
    def widest_margin_m(self) -> float:
        """The most any camera's margin can be: what a map draws beyond a rule's radius
        as the effective radius (``max_margin_m``; 0 in CENTRE mode)."""
        return 0.0 if self.mode is InclusionMode.CENTRE else self.max_margin_m

    def search_radius_m(self, radius_m: float) -> float:
        """Return the radius to ask the spatial index for: ``radius_m`` plus
        ``max_margin_m`` or :data:`DECISION_BAND_M`, whichever is larger.

        INCLUSIVE: at least the largest margin any pair can get, so no candidate is
        missed. CENTRE: the same band, although no camera in it beyond ``radius_m`` is
        commanded, so that every camera just outside the rule still gets a decision row
        saying why it was left out (``too_far``, ``stale``, ``offline``), whichever mode
        is in force. The floor keeps that band the same when ``max_margin_m`` is set
        lower (in centre mode it has no other use): a camera 30.1 ft away gets its row
        under every policy.
        """
        return radius_m + max(self.max_margin_m, DECISION_BAND_M)

    def judge(
        self,
        *,
        distance_m: float,
        radius_m: float,
        fix_ts: float,
        event_ts: float,
        acc_device: float | None,
        acc_event: float | None,
        motion: MotionPromise | None = None,
    ) -> tuple[Verdict, float]:
        """Decide whether a camera's fix counts as within ``radius_m`` of an event.

        Returns the verdict and the margin in metres it was judged with: STALE when the
        fix and event times differ by more than :meth:`max_age_s` (either direction),
        else WITHIN when ``distance_m <= radius_m + margin``, else TOO_FAR. ``motion``
        is a motion-scaled device's ``(hb, db, spd)``; None for a 1 Hz device.
        """
        age = event_ts - fix_ts
        if motion is None:
            margin = self.margin_m(acc_device, acc_event)
            limit = self.max_fix_age_s
        else:
            margin = self.margin_m(acc_device, acc_event, self.drift_m(motion, age))
            limit = self.max_age_s(motion[0])
        # Written as `not <=` so that a NaN time is stale rather than silently fresh.
        if not abs(age) <= limit:
            return Verdict.STALE, margin
        if distance_m <= radius_m + margin:
            return Verdict.WITHIN, margin
        return Verdict.TOO_FAR, margin

    def bridges(
        self, *, before_ts: float, after_ts: float, moved_m: float, acc_m: float | None
    ) -> bool:
        """Whether two fixes ``after_ts - before_ts`` apart are close enough in time to
        judge a camera between: at most ``max_bracket_s``, or ``max_still_bracket_s``
        when they are ``moved_m`` apart, no more than ``acc_m`` (the worse of their
        accuracies) or :data:`STILL_FLOOR_M`, whichever is larger. NaN bridges nothing."""
        span = after_ts - before_ts
        if span <= self.max_bracket_s:
            return True
        still = moved_m <= max(_accuracy(acc_m), STILL_FLOOR_M)
        return still and span <= self.max_still_bracket_s

    def judge_between(
        self,
        *,
        distance_m: float,
        radius_m: float,
        before_ts: float,
        after_ts: float,
        event_ts: float,
        acc_device: float | None,
        acc_event: float | None,
        speed_mps: float | None,
        moved_m: float = math.inf,
    ) -> tuple[Verdict, float]:
        """Decide from two fixes of one camera on either side of the event's time.

        ``distance_m`` is from the event to the camera's position at ``event_ts`` on
        the straight line between the two fixes; ``acc_device`` the worse of their
        accuracies; ``speed_mps`` the faster of their reported speeds (None: either
        did not say); ``moved_m`` how far apart the two fixes are (unknown: moved).
        STALE unless ``before_ts <= event_ts <= after_ts`` and :meth:`bridges` bridges
        them. Else judged as :meth:`judge` judges one fix, with the margin (INCLUSIVE)
        widened by how far the camera can have left that line: ``speed * min(event -
        before, after - event)``, the whole ``max_margin_m`` when the speed is unknown,
        under the same cap. A dead-band bounds nothing here: the reports it promises
        are what did not get through.
        """
        bridged = self.bridges(
            before_ts=before_ts, after_ts=after_ts, moved_m=moved_m, acc_m=acc_device
        )
        if not (before_ts <= event_ts <= after_ts and bridged):
            return Verdict.STALE, self.margin_m(acc_device, acc_event)
        nearest_s = min(event_ts - before_ts, after_ts - event_ts)
        # An unreported (or NaN) speed is no bound at all: the cap then bounds it.
        unknown = speed_mps is None or not speed_mps >= 0.0
        drift = math.inf if unknown or speed_mps is None else speed_mps * nearest_s
        margin = self.margin_m(acc_device, acc_event, drift)
        if distance_m <= radius_m + margin:
            return Verdict.WITHIN, margin
        return Verdict.TOO_FAR, margin
