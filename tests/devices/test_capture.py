"""Where a live camera's frames come from: a libav input, and which sensor to film."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh.devices.capture import AvCapture, select_video_device
from actimesh.devices.h264 import H264Settings, H264Source
from actimesh.devices.pattern import TestPattern
from actimesh.errors import MediaError

T0 = 1_700_000_000.0


def test_av_capture_scales_and_captions_frames_from_a_libav_input(tmp_path: Path) -> None:
    # A file stands in for /dev/video0: both are libav inputs decoded frame by frame.
    big = H264Source("bwc-1", H264Settings(width=320, height=180, fps=5))
    clip = tmp_path / "clip.ts"
    clip.write_bytes(big.render(0, T0, T0 + 1))
    pattern = TestPattern("bwc-1", 160, 90)
    times = iter([T0 + 7.0 + i for i in range(10)])
    capture = AvCapture(str(clip), pattern, fmt=None, clock=lambda: next(times))
    try:
        got = capture.read()
        assert got is not None
        t, frame = got
        assert t == T0 + 7.0
        assert (frame.width, frame.height, frame.format.name) == (160, 90, "yuv420p")
        for _ in range(4):
            capture.read()
        with pytest.raises(MediaError, match="stopped sending frames"):
            capture.read()
    finally:
        capture.close()


def test_av_capture_of_a_missing_device_is_a_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="cannot open camera"):
        AvCapture(str(tmp_path / "video0"), TestPattern("bwc-1", 160, 90), fmt=None)


# ---------------------------------------------------------------------- which sensor
def _devices(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).touch()
    return tmp_path


def test_auto_picks_the_first_device_that_opens_in_numeric_order(tmp_path: Path) -> None:
    dev = _devices(tmp_path, "video10", "video2", "video0", "video1")
    tried: list[str] = []

    def probe(path: Path) -> bool:
        tried.append(path.name)
        return path.name in {"video2", "video10"}

    assert select_video_device("auto", dev_dir=dev, probe=probe) == dev / "video2"
    # video1 is often the metadata node of video0: it does not open, it is skipped.
    assert tried == ["video0", "video1", "video2"]


def test_auto_without_a_usable_device_films_the_pattern(tmp_path: Path) -> None:
    assert select_video_device("auto", dev_dir=tmp_path, probe=lambda p: True) is None
    dev = _devices(tmp_path, "video0")
    assert select_video_device("auto", dev_dir=dev, probe=lambda p: False) is None


def test_none_never_looks_for_a_device(tmp_path: Path) -> None:
    def probe(path: Path) -> bool:
        raise AssertionError("probed")

    assert select_video_device("none", dev_dir=_devices(tmp_path, "video0"), probe=probe) is None


def test_a_named_device_must_exist_and_open(tmp_path: Path) -> None:
    missing = tmp_path / "video7"
    with pytest.raises(MediaError, match=r"does not exist; set media\.device") as info:
        select_video_device(str(missing), probe=lambda p: True)
    assert "\n" not in str(info.value)
    missing.touch()
    with pytest.raises(MediaError, match="does not open as a V4L2 capture device"):
        select_video_device(str(missing), probe=lambda p: False)
    assert select_video_device(str(missing), probe=lambda p: True) == missing


def test_a_plain_file_is_not_a_v4l2_camera(tmp_path: Path) -> None:
    # The real probe, against something that exists but is no camera.
    fake = _devices(tmp_path, "video0")
    assert select_video_device("auto", dev_dir=fake) is None
