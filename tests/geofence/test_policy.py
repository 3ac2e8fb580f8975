from __future__ import annotations

import math

import pytest

from actimesh.geofence import InclusionMode, InclusionPolicy, Verdict

RADIUS_M = 9.144  # 30 ft


def judge(
    policy: InclusionPolicy,
    distance_m: float,
    *,
    fix_ts: float = 1000.0,
    event_ts: float = 1000.0,
    acc_device: float | None = None,
    acc_event: float | None = None,
) -> tuple[Verdict, float]:
    return policy.judge(
        distance_m=distance_m,
        radius_m=RADIUS_M,
        fix_ts=fix_ts,
        event_ts=event_ts,
        acc_device=acc_device,
        acc_event=acc_event,
    )


def test_defaults_are_inclusive_10_s_and_6_m() -> None:
    policy = InclusionPolicy()
    assert policy.mode is InclusionMode.INCLUSIVE
    assert policy.max_fix_age_s == 10.0
    assert policy.max_margin_m == 6.0


def test_fresh_fix_inside_the_radius_is_within() -> None:
    assert judge(InclusionPolicy(), 9.0) == (Verdict.WITHIN, 0.0)


def test_fix_exactly_on_the_radius_is_within() -> None:
    assert judge(InclusionPolicy(mode=InclusionMode.CENTRE), RADIUS_M)[0] is Verdict.WITHIN


def test_fresh_fix_beyond_radius_and_margin_is_too_far() -> None:
    verdict, margin = judge(InclusionPolicy(), 13.0, acc_device=3.0, acc_event=0.0)
    assert (verdict, margin) == (Verdict.TOO_FAR, 3.0)


def test_inclusive_mode_counts_an_officer_whose_fix_is_off_by_the_reported_error() -> None:
    # 12 m apart by centre points, but each fix reports 3 m: combined 4.24 m of margin.
    verdict, margin = judge(InclusionPolicy(), 12.0, acc_device=3.0, acc_event=3.0)
    assert verdict is Verdict.WITHIN
    assert margin == pytest.approx(math.hypot(3.0, 3.0))


def test_centre_mode_applies_the_literal_rule() -> None:
    policy = InclusionPolicy(mode=InclusionMode.CENTRE)
    assert judge(policy, 12.0, acc_device=3.0, acc_event=3.0) == (Verdict.TOO_FAR, 0.0)
    assert judge(policy, 9.0, acc_device=3.0, acc_event=3.0) == (Verdict.WITHIN, 0.0)


@pytest.mark.parametrize(
    ("acc_device", "acc_event", "expected"),
    [
        (None, None, 0.0),
        (4.0, None, 4.0),
        (None, 5.0, 5.0),
        (3.0, 4.0, 5.0),
        (500.0, None, 6.0),  # a wild fix is capped, it must not activate a city block
        (5.0, 5.0, 6.0),
        (math.inf, 1.0, 6.0),
        (math.nan, 2.0, 2.0),  # no usable report adds nothing
        (-3.0, 2.0, 2.0),
    ],
)
def test_margin_is_combined_accuracy_capped(
    acc_device: float | None, acc_event: float | None, expected: float
) -> None:
    assert InclusionPolicy().margin_m(acc_device, acc_event) == pytest.approx(expected)


def test_margin_cap_is_configurable() -> None:
    assert InclusionPolicy(max_margin_m=2.0).margin_m(10.0, 10.0) == 2.0
    assert InclusionPolicy(max_margin_m=0.0).margin_m(10.0, 10.0) == 0.0


def test_capped_margin_still_rejects_a_camera_far_beyond_it() -> None:
    verdict, margin = judge(InclusionPolicy(), 60.0, acc_device=500.0)
    assert (verdict, margin) == (Verdict.TOO_FAR, 6.0)


def test_centre_mode_margin_is_zero_whatever_the_accuracy() -> None:
    assert InclusionPolicy(mode=InclusionMode.CENTRE).margin_m(8.0, 8.0) == 0.0


def test_search_radius_covers_the_largest_possible_margin_in_either_mode() -> None:
    """Centre mode searches the same band, so cameras just outside get a row."""
    assert InclusionPolicy().search_radius_m(RADIUS_M) == pytest.approx(RADIUS_M + 6.0)
    centre = InclusionPolicy(mode=InclusionMode.CENTRE)
    assert centre.search_radius_m(RADIUS_M) == pytest.approx(RADIUS_M + 6.0)
    # A margin set lower (it has no other use in centre mode) does not narrow the band
    # every camera gets a decision row in; a wider one widens it.
    for mode in InclusionMode:
        narrow = InclusionPolicy(mode=mode, max_margin_m=0.0)
        assert narrow.search_radius_m(RADIUS_M) == pytest.approx(RADIUS_M + 6.0)
        wide = InclusionPolicy(mode=mode, max_margin_m=10.0)
        assert wide.search_radius_m(RADIUS_M) == pytest.approx(RADIUS_M + 10.0)


@pytest.mark.parametrize("mode", list(InclusionMode))
@pytest.mark.parametrize(
    ("fix_ts", "event_ts"),
    [
        pytest.param(1000.0, 1010.5, id="fix-older-than-event"),
        pytest.param(1010.5, 1000.0, id="fix-newer-than-event"),
        pytest.param(math.nan, 1000.0, id="nan-fix-time"),
    ],
)
def test_stale_fix_is_not_trusted_in_either_direction(
    mode: InclusionMode, fix_ts: float, event_ts: float
) -> None:
    verdict, _ = judge(InclusionPolicy(mode=mode), 1.0, fix_ts=fix_ts, event_ts=event_ts)
    assert verdict is Verdict.STALE


@pytest.mark.parametrize(("fix_ts", "event_ts"), [(1000.0, 1010.0), (1010.0, 1000.0)])
def test_fix_exactly_max_age_apart_is_still_fresh(fix_ts: float, event_ts: float) -> None:
    verdict, _ = judge(InclusionPolicy(), 1.0, fix_ts=fix_ts, event_ts=event_ts)
    assert verdict is Verdict.WITHIN


def test_stale_verdict_still_reports_the_margin() -> None:
    assert judge(InclusionPolicy(), 1.0, fix_ts=0.0, acc_device=2.0) == (Verdict.STALE, 2.0)


def test_mode_may_be_given_as_its_config_string() -> None:
    policy = InclusionPolicy(mode="centre")  # type: ignore[arg-type]
    assert policy.mode is InclusionMode.CENTRE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"max_fix_age_s": -1.0}, "max_fix_age_s must be", id="negative-age"),
        pytest.param({"max_fix_age_s": math.nan}, "max_fix_age_s must be", id="nan-age"),
        pytest.param({"max_fix_age_s": math.inf}, "max_fix_age_s must be", id="inf-age"),
        pytest.param({"max_margin_m": -0.5}, "max_margin_m must be", id="negative-margin"),
        pytest.param({"max_margin_m": math.nan}, "max_margin_m must be", id="nan-margin"),
        pytest.param({"mode": "nearest"}, "mode must be 'inclusive' or 'centre'", id="bad-mode"),
    ],
)
def test_invalid_settings_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InclusionPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_immutable() -> None:
    policy = InclusionPolicy()
    with pytest.raises(AttributeError):
        policy.max_margin_m = 100.0  # type: ignore[misc]
