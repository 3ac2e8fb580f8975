"""H.264 segments: each one decodes alone, and they join into one gapless stream."""

from __future__ import annotations

import math
from pathlib import Path

import av
import pytest

from actimesh.devices.h264 import (
    PTS_HZ,
    H264Encoder,
    H264Settings,
    H264Source,
    frame_times,
    pts_of,
)
from actimesh.devices.media import MediaSource
from actimesh.devices.pattern import TestPattern, caption_time
from actimesh.errors import MediaError
from tests.devices.helpers import PTS_WRAP, burned_in_time, decode, wall_pts

T0 = 1_700_000_000.0
SMALL = H264Settings(width=160, height=90, fps=5)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_segment_decodes_alone_starting_with_a_key_frame(tmp_path: Path) -> None:
    source = H264Source("bwc-1", SMALL)
    data = source.render(7, T0 + 7, T0 + 8)
    assert data[0] == 0x47  # MPEG-TS sync byte
    decoded = decode(_write(tmp_path / "one.ts", data), source.pattern)
    assert len(decoded.pts) == 5
    assert decoded.key_frames == [True, False, False, False, False]
    # Timestamps are the wall clock at 90 kHz: the file says when it was filmed.
    assert decoded.pts[0] == wall_pts(T0 + 7)
    assert decoded.steps == {PTS_HZ // 5}


def test_consecutive_segments_concatenate_into_one_gapless_stream(tmp_path: Path) -> None:
    source = H264Source("bwc-1", SMALL)
    data = b"".join(source.render(i, T0 + i, T0 + i + 1) for i in range(6))
    decoded = decode(_write(tmp_path / "six.ts", data), source.pattern)
    assert len(decoded.pts) == 30
    assert decoded.steps == {PTS_HZ // 5}
    assert decoded.duration_s == pytest.approx(6.0)
    assert [i for i, key in enumerate(decoded.key_frames) if key] == [0, 5, 10, 15, 20, 25]


def test_stream_stays_gapless_across_the_33_bit_timestamp_wrap(tmp_path: Path) -> None:
    source = H264Source("bwc-1", SMALL)
    wrap = 17_787 * PTS_WRAP / PTS_HZ  # a moment when the 90 kHz clock wraps
    start = math.floor(wrap) - 3
    data = b"".join(source.render(i, start + i, start + i + 1) for i in range(6))
    decoded = decode(_write(tmp_path / "wrap.ts", data), source.pattern)
    assert len(decoded.pts) == 30
    assert decoded.steps == {PTS_HZ // 5}
    assert decoded.pts[0] % PTS_WRAP == wall_pts(start)


def test_caption_burns_in_device_and_frame_time(tmp_path: Path) -> None:
    source = H264Source("bwc-1", SMALL)
    start = T0 + 0.4 * 5  # any segment boundary
    decoded = decode(_write(tmp_path / "c.ts", source.render(2, start, start + 1)), source.pattern)
    assert burned_in_time(decoded, source.pattern, start, fps=5) == start
    assert caption_time(1_700_000_000.4) == "2023-11-14T22:13:20.400Z"


def test_partial_segment_holds_the_frames_filmed_before_the_stop(tmp_path: Path) -> None:
    source = H264Source("bwc-1", SMALL)
    data = source.render(3, T0 + 3, T0 + 3.5)
    decoded = decode(_write(tmp_path / "p.ts", data), source.pattern)
    assert len(decoded.pts) == 3  # ticks at +0.0, +0.2, +0.4
    assert frame_times(T0, T0 + 0.5, 5) == [T0, T0 + 0.2, T0 + 0.4]
    assert frame_times(T0, T0 + 0.01, 5) == [T0]


def test_same_segment_renders_the_same_bytes() -> None:
    a, b = H264Source("bwc-1", SMALL), H264Source("bwc-1", SMALL)
    assert a.render(1, T0 + 1, T0 + 2) == b.render(1, T0 + 1, T0 + 2)
    assert a.render(1, T0 + 1, T0 + 2) != H264Source("bwc-2", SMALL).render(1, T0 + 1, T0 + 2)


def test_h264_source_is_a_media_source_whose_segments_concatenate() -> None:
    source: MediaSource = H264Source("bwc-1", SMALL)
    assert source.segment_seconds == 1.0
    assert source.format.concatenable
    assert source.format.container == "mpegts"
    assert source.format.video is not None
    assert source.format.video.to_json() == {
        "codec": "h264",
        "width": 160,
        "height": 90,
        "fps": 5,
        "pts_hz": 90_000,
    }


def test_bitrate_cap_bounds_segment_size_of_a_busy_scene() -> None:
    # Noise is the worst case for an encoder: without a cap it costs megabytes a second.
    settings = H264Settings(width=320, height=180, fps=10, max_kbps=500)
    frames = []
    for i in range(10):
        frame = av.VideoFrame(320, 180, "yuv420p")
        for n, plane in enumerate(frame.planes):
            plane.update(
                bytes(
                    (i * 7919 + n * 104729 + k * 2654435761) >> 7 & 255
                    for k in range(plane.buffer_size)
                )
            )
        frames.append(frame)
    capped = H264Encoder(settings).encode(T0, frames)
    uncapped = H264Encoder(H264Settings(width=320, height=180, fps=10, max_kbps=0)).encode(
        T0, frames
    )
    assert len(capped) * 8 / 1000 < 500 * 1.6
    assert len(uncapped) > 2 * len(capped)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fps": 7}, "divide 90000"),
        ({"fps": 0}, "fps"),
        ({"width": 161}, "even"),
        ({"height": 8}, "even"),
        ({"segment_seconds": 0.3}, "whole number of frames"),
        ({"segment_seconds": float("nan")}, "segment_seconds"),
        ({"crf": 52}, "crf"),
        ({"max_kbps": -1}, "max_kbps"),
    ],
)
def test_bad_h264_settings_are_rejected(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        H264Settings(**kwargs)  # type: ignore[arg-type]


def test_half_second_segments_stay_on_the_frame_grid(tmp_path: Path) -> None:
    settings = H264Settings(width=160, height=90, fps=10, segment_seconds=0.5)
    assert settings.frames_per_segment == 5
    source = H264Source("bwc-1", settings)
    data = b"".join(source.render(i, T0 + i / 2, T0 + (i + 1) / 2) for i in range(4))
    decoded = decode(_write(tmp_path / "h.ts", data), source.pattern)
    assert decoded.steps == {PTS_HZ // 10}
    assert decoded.pts[0] == pts_of(T0) % PTS_WRAP


def test_encoder_refuses_an_empty_segment() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        H264Encoder(SMALL).encode(T0, [])


def test_encoder_failure_is_a_media_error() -> None:
    settings = H264Settings(width=160, height=90, fps=5, preset="no-such-preset")
    frame = TestPattern("bwc-1", 160, 90).frame(T0)
    with pytest.raises(MediaError, match=r"H\.264 encoding failed"):
        H264Encoder(settings).encode(T0, [frame])


def test_pattern_rejects_odd_or_tiny_sizes() -> None:
    with pytest.raises(ValueError, match="even"):
        TestPattern("bwc-1", 15, 90)
