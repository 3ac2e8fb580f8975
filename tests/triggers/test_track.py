"""Each device's short track of fixes: bounded, in time order, both ends of a gap."""

from __future__ import annotations

from actimesh.triggers.track import TRACK_FIXES, PastFix, around, keep


def fix(ts: float, spd: float | None = None) -> PastFix:
    return PastFix(ts, 51.0 + ts / 1e6, -114.0, None, spd)


def test_a_track_keeps_its_newest_fixes_and_no_more() -> None:
    track = None
    for n in range(TRACK_FIXES + 5):
        track = keep(track, fix(float(n * 5)))
    assert track is not None
    assert len(track) == TRACK_FIXES * 32  # 32 bytes a fix
    before, after = around(track, None, 0.0)
    assert before is None  # the oldest were dropped
    assert after == fix(25.0)


def test_around_finds_the_fixes_on_either_side_including_the_indexed_one() -> None:
    track = keep(keep(None, fix(0.0, spd=0.0)), fix(10.0, spd=1.5))
    assert around(track, fix(30.0), 12.0) == (fix(10.0, spd=1.5), fix(30.0))
    assert around(track, fix(30.0), 10.0) == (fix(10.0, spd=1.5), fix(10.0, spd=1.5))
    assert around(track, None, 12.0) == (fix(10.0, spd=1.5), None)
    assert around(None, None, 12.0) == (None, None)
    # Not reported stays not reported (NaN inside the track).
    before, _ = around(track, None, 5.0)
    assert before is not None
    assert (before.acc, before.spd) == (None, 0.0)
