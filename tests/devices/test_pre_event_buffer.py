"""The pre-event buffer keeps at least its capacity behind the newest segment, no more."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actimesh.devices.buffer import PreEventBuffer
from actimesh.devices.media import Segment


def _seg(seq: int, start: float, end: float) -> Segment:
    return Segment.of(seq, start, end, b"")


def _fill(buf: PreEventBuffer, n: int, seconds: float = 1.0, t0: float = 1000.0) -> None:
    for i in range(n):
        buf.append(_seg(i, t0 + i * seconds, t0 + (i + 1) * seconds))


def test_capacity_is_pre_roll_plus_late_allowance_plus_one_segment() -> None:
    assert PreEventBuffer(30.0, 1.0).capacity_s == 31.0
    assert PreEventBuffer(30.0, 2.0, late_allowance_s=10.0).capacity_s == 42.0


def test_buffer_keeps_at_least_capacity() -> None:
    buf = PreEventBuffer(30.0, 1.0)
    _fill(buf, 100)
    assert len(buf) == 31
    assert buf.covered_s >= buf.capacity_s
    assert buf.earliest_start() == 1000.0 + 100 - 31
    assert buf.latest_end() == 1100.0


def test_buffer_rounds_capacity_up_to_whole_segments() -> None:
    buf = PreEventBuffer(5.0, 2.0)  # capacity 7 s: four 2 s segments are needed
    _fill(buf, 10, seconds=2.0)
    assert len(buf) == 4
    assert buf.covered_s == 8.0


def test_buffer_holds_everything_until_capacity_is_reached() -> None:
    buf = PreEventBuffer(30.0, 1.0)
    _fill(buf, 10)
    assert len(buf) == 10
    assert buf.earliest_start() == 1000.0


def test_since_returns_segments_ending_after_t_in_order() -> None:
    buf = PreEventBuffer(30.0, 1.0)
    _fill(buf, 10)
    got = buf.since(1004.5)
    assert [s.seq for s in got] == [4, 5, 6, 7, 8, 9]
    assert buf.since(1004.0)[0].seq == 4
    assert buf.since(2000.0) == []


def test_empty_buffer_reports_nothing() -> None:
    buf = PreEventBuffer(0.0, 1.0)
    assert len(buf) == 0
    assert buf.earliest_start() is None
    assert buf.latest_end() is None
    assert buf.covered_s == 0.0


def test_buffer_rejects_out_of_order_segments() -> None:
    buf = PreEventBuffer(30.0, 1.0)
    _fill(buf, 3)
    with pytest.raises(ValueError, match="does not follow"):
        buf.append(_seg(2, 1002.0, 1003.0))
    with pytest.raises(ValueError, match="does not follow"):
        buf.append(_seg(9, 1002.5, 1003.5))


def test_clear_forgets_everything() -> None:
    buf = PreEventBuffer(30.0, 1.0)
    _fill(buf, 3)
    buf.clear()
    assert len(buf) == 0
    assert list(buf) == []


@pytest.mark.parametrize(
    ("pre_roll", "seconds", "late"),
    [
        (-1.0, 1.0, 0.0),
        (120.5, 1.0, 0.0),
        (float("nan"), 1.0, 0.0),
        (30.0, 0.0, 0.0),
        (30.0, 1.0, -1.0),
        (30.0, 1.0, float("inf")),
    ],
)
def test_buffer_rejects_bad_settings(pre_roll: float, seconds: float, late: float) -> None:
    with pytest.raises(ValueError, match="must"):
        PreEventBuffer(pre_roll, seconds, late_allowance_s=late)


@given(
    pre_roll=st.floats(0.0, 120.0),
    late=st.floats(0.0, 30.0),
    steps=st.lists(
        st.tuples(st.floats(0.05, 10.0), st.floats(0.0, 5.0)),  # (duration, gap before)
        min_size=1,
        max_size=200,
    ),
)
def test_any_append_sequence_keeps_coverage_at_least_capacity(
    pre_roll: float, late: float, steps: list[tuple[float, float]]
) -> None:
    buf = PreEventBuffer(pre_roll, 1.0, late_allowance_s=late)
    appended: list[Segment] = []
    t = 1_700_000_000.0
    for seq, (duration, gap) in enumerate(steps):
        start = t + gap
        t = start + duration
        seg = _seg(seq, start, t)
        buf.append(seg)
        appended.append(seg)
        held = list(buf)
        # What is held is the newest part of what was appended, in order.
        assert held == appended[-len(held) :]
        if t - appended[0].start >= buf.capacity_s:
            assert buf.covered_s >= buf.capacity_s
        else:
            assert held == appended  # nothing dropped before capacity is reached
        # And nothing more than needed: without its oldest segment it would fall short.
        if len(held) > 1:
            assert t - held[1].start < buf.capacity_s
