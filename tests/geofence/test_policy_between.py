"""A late event judged between two fixes of a camera, one on either side of its time."""

from __future__ import annotations

import math

import pytest

from actimesh.geofence import InclusionMode, InclusionPolicy, Verdict

FT = 0.3048
RADIUS = 30 * FT
T = 1_800_000_000.0


def between(
    policy: InclusionPolicy,
    distance: float,
    *,
    before: float = -8.0,
    after: float = 12.0,
    speed: float | None = 0.0,
    acc: float | None = 0.0,
    moved: float = math.inf,
) -> tuple[Verdict, float]:
    return policy.judge_between(
        distance_m=distance,
        radius_m=RADIUS,
        before_ts=T + before,
        after_ts=T + after,
        event_ts=T,
        acc_device=acc,
        acc_event=0.0,
        speed_mps=speed,
        moved_m=moved,
    )


@pytest.mark.parametrize("mode", [InclusionMode.INCLUSIVE, InclusionMode.CENTRE])
def test_a_still_camera_bracketed_by_its_fixes_is_judged_exactly(mode: InclusionMode) -> None:
    policy = InclusionPolicy(mode=mode)
    # Neither fix is within 10 s of the event, yet both say it stood there.
    assert between(policy, 29.9 * FT, before=-11.0, after=14.0) == (Verdict.WITHIN, 0.0)
    assert between(policy, 30.1 * FT, before=-11.0, after=14.0) == (Verdict.TOO_FAR, 0.0)


def test_a_moving_camera_gets_the_margin_of_how_far_it_can_have_left_the_line() -> None:
    policy = InclusionPolicy()
    # 1.4 m/s, the nearer fix 2 s from the event: it may be 2.8 m off the line.
    verdict, margin = between(policy, 30.1 * FT, before=-2.0, after=20.0, speed=1.4)
    assert verdict is Verdict.WITHIN
    assert margin == pytest.approx(2.8)
    verdict, margin = between(policy, RADIUS + 2.9, before=-2.0, after=20.0, speed=1.4)
    assert verdict is Verdict.TOO_FAR
    assert margin == pytest.approx(2.8)
    # The centre policy stays literal.
    centre = InclusionPolicy(mode=InclusionMode.CENTRE)
    assert between(centre, 30.1 * FT, before=-2.0, after=20.0, speed=1.4) == (
        Verdict.TOO_FAR,
        0.0,
    )


@pytest.mark.parametrize("speed", [None, math.nan, -1.0])
def test_an_unknown_speed_widens_to_the_cap_and_no_further(speed: float | None) -> None:
    policy = InclusionPolicy()
    assert between(policy, RADIUS + 5.9, speed=speed) == (Verdict.WITHIN, 6.0)
    assert between(policy, RADIUS + 6.1, speed=speed) == (Verdict.TOO_FAR, 6.0)


def test_fixes_that_do_not_bracket_the_event_or_are_too_far_apart_are_stale() -> None:
    policy = InclusionPolicy(max_bracket_s=60.0)
    assert between(policy, 1.0, before=1.0, after=12.0)[0] is Verdict.STALE
    assert between(policy, 1.0, before=-12.0, after=-1.0)[0] is Verdict.STALE
    assert between(policy, 1.0, before=-30.0, after=30.0)[0] is Verdict.WITHIN
    assert between(policy, 1.0, before=-30.0, after=30.1)[0] is Verdict.STALE
    nan = policy.judge_between(
        distance_m=1.0,
        radius_m=RADIUS,
        before_ts=T - 1,
        after_ts=T + 1,
        event_ts=math.nan,
        acc_device=0.0,
        acc_event=0.0,
        speed_mps=0.0,
    )
    assert nan[0] is Verdict.STALE


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_a_bracket_limit_that_is_not_a_finite_time_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="max_bracket_s"):
        InclusionPolicy(max_bracket_s=bad)


@pytest.mark.parametrize("mode", [InclusionMode.INCLUSIVE, InclusionMode.CENTRE])
def test_a_still_camera_across_a_gap_wider_than_a_minute_is_judged_exactly(
    mode: InclusionMode,
) -> None:
    """Silent 100 s (its link lost), in the same place before and after: judged as
    any still camera, 29.9 ft within and 30.1 ft too far."""
    policy = InclusionPolicy(mode=mode)
    gap = {"before": -40.0, "after": 60.0, "moved": 0.0}
    assert between(policy, 29.9 * FT, **gap) == (Verdict.WITHIN, 0.0)
    assert between(policy, 30.1 * FT, **gap) == (Verdict.TOO_FAR, 0.0)


def test_a_camera_that_moved_across_a_gap_wider_than_a_minute_is_stale() -> None:
    """Nothing says where it was at the event: its interpolated 29.9 ft is no evidence."""
    policy = InclusionPolicy()
    moved = {"before": -40.0, "after": 60.0, "moved": 10.0}
    assert between(policy, 29.9 * FT, **moved)[0] is Verdict.STALE
    assert between(policy, 0.0, **moved)[0] is Verdict.STALE
    # The same move within a minute is judged, at 29.9 ft within, at 30.1 ft too far
    # (still at both fixes, speed 0, so no margin).
    recent = {"before": -20.0, "after": 30.0, "moved": 10.0}
    assert between(policy, 29.9 * FT, **recent) == (Verdict.WITHIN, 0.0)
    assert between(policy, 30.1 * FT, **recent) == (Verdict.TOO_FAR, 0.0)


def test_still_means_within_the_worse_accuracy_or_a_metre() -> None:
    policy = InclusionPolicy()
    wide = {"before": -40.0, "after": 60.0}
    assert between(policy, 1.0, acc=0.0, moved=1.0, **wide)[0] is Verdict.WITHIN
    assert between(policy, 1.0, acc=0.0, moved=1.01, **wide)[0] is Verdict.STALE
    assert between(policy, 1.0, acc=4.0, moved=4.0, **wide)[0] is Verdict.WITHIN
    assert between(policy, 1.0, acc=4.0, moved=4.1, **wide)[0] is Verdict.STALE
    assert between(policy, 1.0, acc=4.0, moved=math.nan, **wide)[0] is Verdict.STALE


def test_a_still_cameras_bracket_is_bounded_too() -> None:
    policy = InclusionPolicy(max_bracket_s=60.0, max_still_bracket_s=180.0)
    assert between(policy, 1.0, before=-90.0, after=90.0, moved=0.0)[0] is Verdict.WITHIN
    assert between(policy, 1.0, before=-90.0, after=90.1, moved=0.0)[0] is Verdict.STALE
    # Set equal to max_bracket_s: no wider bracket for anyone.
    strict = InclusionPolicy(max_bracket_s=60.0, max_still_bracket_s=60.0)
    assert between(strict, 1.0, before=-30.0, after=30.1, moved=0.0)[0] is Verdict.STALE


@pytest.mark.parametrize("bad", [59.9, math.inf, math.nan])
def test_a_still_bracket_limit_below_the_bracket_or_not_finite_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="max_still_bracket_s"):
        InclusionPolicy(max_bracket_s=60.0, max_still_bracket_s=bad)
