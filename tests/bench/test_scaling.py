"""The side-by-side index timing behind the sweep's growth figure."""

from __future__ import annotations

import gc
import math

import pytest

from actimesh.bench.scaling import side_by_side


def test_every_size_and_layout_is_asked_the_same_number_of_questions() -> None:
    out = side_by_side([2_000, 200], seed=3, queries=300)
    assert (out["from_devices"], out["to_devices"]) == (200, 2_000)
    for layout in ("same_density", "same_city"):
        figures = out[layout]
        assert set(figures["sizes"]) == {"200", "2000"}
        for size in figures["sizes"].values():
            assert size["queries"] == 300
            assert 0 < size["p50_us"] <= size["p99_us"]
        small, large = figures["sizes"]["200"], figures["sizes"]["2000"]
        assert math.isclose(figures["p99_growth"], large["p99_us"] / small["p99_us"])
    # The headline figure is the one with the index's answer held equal.
    assert out["p99_growth"] == out["same_density"]["p99_growth"]
    assert out["p50_growth"] == out["same_density"]["p50_growth"]
    assert gc.get_freeze_count() == 0  # the heap it froze for the timing is thawed


def test_growth_needs_two_sizes() -> None:
    with pytest.raises(ValueError, match="two fleet sizes"):
        side_by_side([1_000], seed=3, queries=10)
