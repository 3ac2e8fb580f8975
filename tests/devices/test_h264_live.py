"""The live source: a thread per camera captures and encodes; which source to open."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import pytest

from actimesh.devices.capture import AvCapture, Capture
from actimesh.devices.h264 import PTS_HZ, H264Settings, H264Source
from actimesh.devices.h264_live import LiveH264Source, open_h264_source
from actimesh.devices.pattern import TestPattern
from actimesh.errors import MediaError
from tests.devices.helpers import burned_in_time, decode, wall_pts
from tests.waiting import eventually_sync

T0 = 1_700_000_000.0
SMALL = H264Settings(width=160, height=90, fps=5)


class Scripted:
    """A sensor that delivers the frames it was given, then nothing until stopped."""

    def __init__(self, times: list[float], pattern: TestPattern, stop: threading.Event) -> None:
        self.frames = [(t, pattern.frame(t)) for t in times]
        self.stop = stop
        self.closed = False

    def read(self) -> tuple[float, av.VideoFrame] | None:
        if self.frames:
            return self.frames.pop(0)
        self.stop.wait()
        return None

    def close(self) -> None:
        self.closed = True


def _ticks(first_slot: int, slots: int) -> list[float]:
    return [T0 + first_slot + i / 5 for i in range(slots * 5)]


@pytest.fixture
def scripted() -> Iterator[Callable[[list[float]], LiveH264Source]]:
    sources: list[LiveH264Source] = []

    def make(times: list[float], **kwargs: float) -> LiveH264Source:
        def capture(pattern: TestPattern, stop: threading.Event) -> Capture:
            return Scripted(times, pattern, stop)

        source = LiveH264Source("bwc-1", SMALL, capture=capture, stall_s=0.05, **kwargs)  # type: ignore[arg-type]
        sources.append(source)
        source.switch_on()
        eventually_sync(lambda: source.stats.frames == len(times))
        return source

    yield make
    for source in sources:
        source.switch_off()


def _is_no_signal(path: Path) -> bool:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    plane = frame.planes[0]
    # Bottom-left corner: the white colour bar in the pattern, black in NO SIGNAL.
    return bytes(plane)[(frame.height - 20) * plane.line_size + 4] < 40


def test_thread_encodes_each_segment_once_its_last_frame_is_in(
    tmp_path: Path, scripted: Callable[[list[float]], LiveH264Source]
) -> None:
    source = scripted(_ticks(0, 3))  # slots 0, 1 complete; slot 2 still being filmed
    eventually_sync(lambda: source.stats.segments_encoded == 2)
    data = source.render(0, T0, T0 + 1)
    # The thread's bytes are those of the same frames encoded on demand.
    assert data == H264Source("bwc-1", SMALL).render(0, T0, T0 + 1)
    assert source.stats.filled == 0
    path = tmp_path / "s.ts"
    path.write_bytes(data + source.render(1, T0 + 1, T0 + 2))
    decoded = decode(path, source.pattern)
    assert decoded.steps == {PTS_HZ // 5}
    assert decoded.pts[0] == wall_pts(T0)


def test_partial_segment_is_encoded_from_the_frames_filmed_so_far(
    tmp_path: Path, scripted: Callable[[list[float]], LiveH264Source]
) -> None:
    source = scripted([*_ticks(0, 1), T0 + 1.0, T0 + 1.2])
    path = tmp_path / "p.ts"
    path.write_bytes(source.render(1, T0 + 1.0, T0 + 1.3))
    decoded = decode(path, source.pattern)
    assert len(decoded.pts) == 2
    assert burned_in_time(decoded, source.pattern, T0 + 1.0, 5) == T0 + 1.0


def test_segment_the_sensor_never_delivered_is_no_signal_and_counted(
    tmp_path: Path, scripted: Callable[[list[float]], LiveH264Source]
) -> None:
    source = scripted(_ticks(3, 2))  # nothing before slot 3
    before = tmp_path / "before.ts"
    before.write_bytes(source.render(0, T0, T0 + 1))
    assert _is_no_signal(before)
    assert source.stats.filled == 1
    filmed = tmp_path / "filmed.ts"
    filmed.write_bytes(source.render(3, T0 + 3, T0 + 4))
    assert not _is_no_signal(filmed)
    # The stream stays continuous through the fill.
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(source.render(i, T0 + i, T0 + i + 1) for i in (1, 2)))
    assert decode(joined, source.pattern).steps == {PTS_HZ // 5}


def test_gaps_inside_a_segment_hold_the_last_frame(
    tmp_path: Path, scripted: Callable[[list[float]], LiveH264Source]
) -> None:
    # A sensor that stutters: frames at 0.0 and 0.6 only; then slot 1 begins.
    source = scripted([T0, T0 + 0.6, T0 + 1.0])
    eventually_sync(lambda: source.stats.segments_encoded == 1)
    path = tmp_path / "g.ts"
    path.write_bytes(source.render(0, T0, T0 + 1))
    decoded = decode(path, source.pattern)
    assert len(decoded.pts) == 5  # still a frame every 1/fps
    assert decoded.steps == {PTS_HZ // 5}


def test_encoded_segments_waiting_for_the_camera_are_bounded(
    scripted: Callable[..., LiveH264Source],
) -> None:
    source = scripted(_ticks(0, 9), keep_segments=3)
    eventually_sync(lambda: source.stats.segments_encoded == 8)
    # Three encoded segments and the raw frames of the one being filmed.
    raw = 5 * sum(p.buffer_size for p in source.pattern.frame(T0).planes)
    assert source.held_bytes <= raw + 3 * 64_000
    source.render(0, T0, T0 + 1)  # dropped long ago: made again, counted
    assert source.stats.filled == 1


def test_sensor_failure_is_counted_and_retried_until_switched_off(tmp_path: Path) -> None:
    opened: list[int] = []

    def failing(pattern: TestPattern, stop: threading.Event) -> Capture:
        opened.append(1)
        raise MediaError("camera /dev/video9 failed: unplugged")

    source = LiveH264Source("bwc-1", SMALL, capture=failing)
    source.switch_on()
    try:
        eventually_sync(lambda: len(opened) >= 2)
        assert source.stats.capture_errors >= 2
        path = tmp_path / "n.ts"
        path.write_bytes(source.render(0, T0, T0 + 1))
        assert _is_no_signal(path)
    finally:
        source.switch_off()
    assert not source.running
    source.switch_off()  # idempotent


def test_live_source_films_a_libav_input_and_reopens_it_at_its_end(tmp_path: Path) -> None:
    clip = tmp_path / "clip.ts"
    clip.write_bytes(H264Source("bwc-1", SMALL).render(0, T0, T0 + 1))

    def capture(pattern: TestPattern, stop: threading.Event) -> Capture:
        return AvCapture(str(clip), pattern, fmt=None)

    source = LiveH264Source("bwc-1", SMALL, capture=capture)
    source.switch_on()
    try:
        eventually_sync(lambda: source.stats.frames >= 5 and source.stats.capture_errors >= 1)
    finally:
        source.switch_off()


def test_open_h264_source_picks_on_demand_or_live(tmp_path: Path) -> None:
    on_demand = open_h264_source("bwc-1", SMALL, live=False)
    assert isinstance(on_demand, H264Source)
    live = open_h264_source("bwc-1", SMALL, device="none")
    assert isinstance(live, LiveH264Source)
    try:
        assert live.running
        eventually_sync(lambda: live.stats.frames > 0)
    finally:
        live.switch_off()


def test_open_h264_source_films_the_selected_device(tmp_path: Path) -> None:
    # A "device" that the probe accepts but libav cannot open: the thread keeps trying,
    # counts each failure, and the camera still gets (NO SIGNAL) segments.
    (tmp_path / "video0").touch()
    source = open_h264_source("bwc-1", SMALL, dev_dir=tmp_path, probe=lambda p: True)
    assert isinstance(source, LiveH264Source)
    try:
        eventually_sync(lambda: source.stats.capture_errors >= 1)
        path = tmp_path / "x.ts"
        path.write_bytes(source.render(0, T0, T0 + 1))
        assert _is_no_signal(path)
    finally:
        source.switch_off()


def test_live_source_rejects_a_zero_keep() -> None:
    with pytest.raises(ValueError, match="keep_segments"):
        LiveH264Source("bwc-1", SMALL, keep_segments=0)
