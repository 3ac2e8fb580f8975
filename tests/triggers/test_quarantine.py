"""The flood watch: refusals per device, in fixed windows."""

from __future__ import annotations

import pytest

from actimesh.triggers.quarantine import FloodWatch


def test_fires_once_when_the_limit_is_reached_within_a_window() -> None:
    watch = FloodWatch(limit=3, window_s=10.0)
    assert [watch.note("bwc-1", t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [
        False,
        False,
        True,
        False,
        False,
    ]


def test_a_slow_trickle_never_fires() -> None:
    watch = FloodWatch(limit=3, window_s=10.0)
    assert not any(watch.note("bwc-1", t * 6.0) for t in range(100))


def test_devices_are_counted_apart() -> None:
    watch = FloodWatch(limit=2, window_s=10.0)
    assert not watch.note("bwc-1", 0.0)
    assert not watch.note("bwc-2", 0.0)
    assert watch.note("bwc-1", 0.1)
    assert watch.note("bwc-2", 0.1)


def test_fires_again_in_a_later_window() -> None:
    watch = FloodWatch(limit=2, window_s=1.0)
    assert [watch.note("bwc-1", t) for t in (0.0, 0.5, 1.0, 1.5)] == [False, True, False, True]


def test_zero_turns_it_off() -> None:
    watch = FloodWatch(limit=0, window_s=1.0)
    assert not any(watch.note("bwc-1", 0.0) for _ in range(10_000))


def test_memory_is_bounded_by_max_devices() -> None:
    watch = FloodWatch(limit=5, window_s=10.0, max_devices=100)
    for n in range(1_000):
        watch.note(f"dev-{n}", float(n) / 1_000)
    assert len(watch._counts) <= 100


@pytest.mark.parametrize(("limit", "window"), [(-1, 1.0), (1, 0.0)])
def test_bad_settings_are_refused(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="flood watch"):
        FloodWatch(limit, window)
