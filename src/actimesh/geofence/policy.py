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

:attr:`InclusionMode.CENTRE` is the literal rule, centre point against centre point, for
agencies whose policy says exactly that. Freshness applies in both modes.

Every decision returns the margin it used, so the activation ledger can show why a
camera 12 m away was, or was not, told to record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DECISION_BAND_M", "InclusionMode", "InclusionPolicy", "Verdict"]

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
        try:
            mode = InclusionMode(self.mode)
        except ValueError:
            names = " or ".join(repr(m.value) for m in InclusionMode)
            raise ValueError(f"mode must be {names}, got {self.mode!r}") from None
        # Accept the plain string from a config file; the field then holds the enum.
        object.__setattr__(self, "mode", mode)

    def margin_m(self, acc_device: float | None, acc_event: float | None) -> float:
        """Return the metres added to the radius for these two reported accuracies.

        INCLUSIVE: ``hypot(acc_device, acc_event)`` capped at ``max_margin_m``, a missing
        accuracy counting as 0. CENTRE: always 0.
        """
        if self.mode is InclusionMode.CENTRE:
            return 0.0
        return min(math.hypot(_accuracy(acc_device), _accuracy(acc_event)), self.max_margin_m)

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
    ) -> tuple[Verdict, float]:
        """Decide whether a camera's fix counts as within ``radius_m`` of an event.

        Returns the verdict and the margin in metres it was judged with: STALE when the
        fix and event times differ by more than ``max_fix_age_s`` (either direction),
        else WITHIN when ``distance_m <= radius_m + margin``, else TOO_FAR.
        """
        margin = self.margin_m(acc_device, acc_event)
        # Written as `not <=` so that a NaN time is stale rather than silently fresh.
        if not abs(event_ts - fix_ts) <= self.max_fix_age_s:
            return Verdict.STALE, margin
        if distance_m <= radius_m + margin:
            return Verdict.WITHIN, margin
        return Verdict.TOO_FAR, margin
