"""The inclusion policy for motion-scaled devices (telemetry with hb, db and spd).

A still device's heartbeat-confirmed fix is fresh and judged exactly as a 1 Hz device's;
a moving one's margin grows with speed times the fix's age, bounded by its dead-band;
a fix whose next report is overdue is stale. 1 Hz devices are judged as before.
"""

from __future__ import annotations

import math

import pytest

from actimesh.geofence import InclusionMode, InclusionPolicy, MotionPromise, Verdict

FT = 0.3048
RADIUS = 30 * FT
INSIDE, OUTSIDE = 29.9 * FT, 30.1 * FT
T0 = 1_800_000_000.0
INCLUSIVE = InclusionPolicy()
CENTRE = InclusionPolicy(mode=InclusionMode.CENTRE)
#: A walking officer's promise: heartbeat 10 s, dead-band r/4.
DB = RADIUS / 4
STILL: MotionPromise = (10.0, DB, 0.0)
WALKING: MotionPromise = (10.0, DB, 1.4)
DRIVING: MotionPromise = (10.0, DB, 14.0)
NO_SPEED: MotionPromise = (10.0, DB, None)


def judge(
    policy: InclusionPolicy, dist: float, motion: MotionPromise | None, age: float = 0.0
) -> tuple[Verdict, float]:
    return policy.judge(
        distance_m=dist,
        radius_m=RADIUS,
        fix_ts=T0 - age,
        event_ts=T0,
        acc_device=0.0,
        acc_event=0.0,
        motion=motion,
    )


@pytest.mark.parametrize("policy", [INCLUSIVE, CENTRE], ids=["inclusive", "centre"])
@pytest.mark.parametrize(
    ("motion", "age"),
    [
        pytest.param(None, 0.0, id="1hz-now"),
        pytest.param(None, 9.0, id="1hz-9s"),
        pytest.param(STILL, 0.0, id="still-now"),
        pytest.param(STILL, 12.0, id="still-heartbeat-12s"),
        pytest.param(WALKING, 0.0, id="walking-now"),
        pytest.param(DRIVING, 0.0, id="driving-now"),
    ],
)
def test_29_9_ft_is_within_and_30_1_ft_is_too_far_exactly(
    policy: InclusionPolicy, motion: MotionPromise | None, age: float
) -> None:
    """A 1 Hz device, a still one confirmed by its heartbeat, and a moving one whose fix
    is as old as the event: the boundary is exact in both policies."""
    assert judge(policy, INSIDE, motion, age) == (Verdict.WITHIN, 0.0)
    assert judge(policy, OUTSIDE, motion, age) == (Verdict.TOO_FAR, 0.0)


@pytest.mark.parametrize("motion", [WALKING, DRIVING, NO_SPEED], ids=["walk", "drive", "no-spd"])
def test_a_moving_device_at_30_1_ft_counts_in_inclusive_mode_once_it_may_have_crossed(
    motion: MotionPromise,
) -> None:
    """One second after its fix, a walker may be 1.4 m closer, a car the whole dead-band:
    inclusive mode widens the margin by that; centre mode stays literal."""
    verdict, margin = judge(INCLUSIVE, OUTSIDE, motion, age=1.0)
    assert verdict is Verdict.WITHIN
    speed = motion[2]
    assert margin == pytest.approx(DB if speed is None else min(DB, speed))
    assert judge(CENTRE, OUTSIDE, motion, age=1.0) == (Verdict.TOO_FAR, 0.0)
    assert judge(CENTRE, INSIDE, motion, age=1.0) == (Verdict.WITHIN, 0.0)


def test_the_drift_grows_with_age_up_to_the_dead_band_and_stops_there() -> None:
    margins = [judge(INCLUSIVE, OUTSIDE, WALKING, age)[1] for age in (0.0, 0.5, 1.0, 1.5, 10.0)]
    assert margins == pytest.approx([0.0, 0.7, 1.4, 2.1, DB])
    # A fix newer than the event (it arrived after): the same bound, the other way.
    assert judge(INCLUSIVE, OUTSIDE, WALKING, -1.0)[1] == pytest.approx(1.4)
    # Far enough out, even the full dead-band does not reach.
    assert judge(INCLUSIVE, RADIUS + DB + 0.01, WALKING, 10.0)[0] is Verdict.TOO_FAR
    assert judge(INCLUSIVE, RADIUS + DB - 0.01, WALKING, 10.0)[0] is Verdict.WITHIN


def test_the_drift_adds_to_the_accuracy_under_the_same_cap() -> None:
    verdict, margin = INCLUSIVE.judge(
        distance_m=OUTSIDE,
        radius_m=RADIUS,
        fix_ts=T0 - 10.0,
        event_ts=T0,
        acc_device=3.0,
        acc_event=4.0,
        motion=DRIVING,
    )
    assert (verdict, margin) == (Verdict.WITHIN, INCLUSIVE.max_margin_m)  # 5 + 2.29 > 6
    assert INCLUSIVE.margin_m(3.0, 0.0, 1.0) == pytest.approx(4.0)
    assert CENTRE.margin_m(3.0, 4.0, 2.0) == 0.0


@pytest.mark.parametrize("policy", [INCLUSIVE, CENTRE], ids=["inclusive", "centre"])
def test_freshness_follows_the_promised_heartbeat(policy: InclusionPolicy) -> None:
    """1 Hz: 10 s. Heartbeat 10 s: until the next report is 3 s overdue (13 s). A
    heartbeat slower than 15 s is held to 15 s. Either direction; the margin is still
    reported with a stale verdict."""
    assert judge(policy, INSIDE, None, 10.0)[0] is Verdict.WITHIN
    assert judge(policy, INSIDE, None, 10.01)[0] is Verdict.STALE
    assert judge(policy, INSIDE, STILL, 13.0)[0] is Verdict.WITHIN
    assert judge(policy, INSIDE, STILL, 13.01)[0] is Verdict.STALE
    assert judge(policy, INSIDE, STILL, -13.01)[0] is Verdict.STALE
    assert judge(policy, OUTSIDE, STILL, 12.0)[0] is Verdict.TOO_FAR
    slow: MotionPromise = (120.0, DB, 0.0)
    assert judge(policy, INSIDE, slow, 18.0)[0] is Verdict.WITHIN
    assert judge(policy, INSIDE, slow, 18.01)[0] is Verdict.STALE
    # A heartbeat faster than the 1 Hz limit never makes a fix stale sooner than that.
    fast: MotionPromise = (2.0, DB, 0.0)
    assert judge(policy, INSIDE, fast, 10.0)[0] is Verdict.WITHIN
    stale = judge(policy, INSIDE, WALKING, 20.0)
    assert stale == (Verdict.STALE, 0.0 if policy is CENTRE else DB)


def test_nan_times_are_stale_in_motion_mode_too() -> None:
    verdict, _ = INCLUSIVE.judge(
        distance_m=INSIDE,
        radius_m=RADIUS,
        fix_ts=math.nan,
        event_ts=T0,
        acc_device=0.0,
        acc_event=0.0,
        motion=STILL,
    )
    assert verdict is Verdict.STALE


def test_max_age_is_the_heartbeat_plus_grace_never_below_the_1_hz_limit() -> None:
    policy = InclusionPolicy(max_fix_age_s=5.0, max_heartbeat_s=20.0, heartbeat_grace_s=1.0)
    assert policy.max_age_s(None) == 5.0
    assert policy.max_age_s(2.0) == 5.0
    assert policy.max_age_s(12.0) == 13.0
    assert policy.max_age_s(60.0) == 21.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_heartbeat_s": -1.0}, "max_heartbeat_s"),
        ({"max_heartbeat_s": math.nan}, "max_heartbeat_s"),
        ({"max_heartbeat_s": 301.0}, "max_heartbeat_s"),
        ({"heartbeat_grace_s": math.inf}, "heartbeat_grace_s"),
        ({"heartbeat_grace_s": -0.5}, "heartbeat_grace_s"),
    ],
)
def test_invalid_heartbeat_settings_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InclusionPolicy(**kwargs)  # type: ignore[arg-type]  # the bad values are the point
