"""The [media] settings: one switch between synthetic segments and real H.264."""

from __future__ import annotations

from pathlib import Path

import pytest

from actimesh.devices import MediaKind, MediaSettings, StealthPolicy, SyntheticSource
from actimesh.devices.h264 import H264Source
from actimesh.devices.h264_live import LiveH264Source
from actimesh.devices.settings import open_media_source
from actimesh.errors import ConfigError
from actimesh.runtime.config import load_settings


def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "actimesh.toml"
    path.write_text(body)
    return path


def test_defaults_are_synthetic_with_vendor_defaults() -> None:
    media = load_settings().media
    assert media == MediaSettings()
    assert media.source is MediaKind.SYNTHETIC
    assert media.pre_roll_s == 30.0
    assert media.buffer_audio is False
    assert media.stealth is StealthPolicy.OFFICER
    assert media.cancel_window_s == 10.0


def test_media_table_is_read(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        """
[media]
source = "h264"
device = "none"
width = 320
height = 180
fps = 10
segment_s = 0.5
crf = 28
max_kbps = 800
pre_roll_s = 120
buffer_audio = true
stealth = "always"
cancel_window_s = 0
""",
    )
    media = load_settings(path).media
    assert media.source is MediaKind.H264
    assert (media.width, media.height, media.fps, media.segment_s) == (320, 180, 10, 0.5)
    assert media.h264().frames_per_segment == 5
    assert media.h264().max_kbps == 800
    assert media.pre_roll_s == 120
    assert media.buffer_audio is True
    assert media.stealth is StealthPolicy.ALWAYS
    assert media.cancel_window_s == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('source = "mjpeg"', "media.source must be 'synthetic' or 'h264', got 'mjpeg'"),
        ('stealth = "sometimes"', "media.stealth must be 'officer' or 'always' or 'never'"),
        ("pre_roll_s = 121", "media.pre_roll_s must be 0 to 120 s, got 121"),
        ("cancel_window_s = -1", "media.cancel_window_s must be 0 (no cancel) to 60 s"),
        ("segment_s = 0", "media.segment_s must be above 0 and at most 10"),
        ('source = "h264"\nfps = 7', "[media]: fps must be 1 to 60 and divide 90000"),
        ('source = "h264"\nwidth = 641', "[media]: frame size must be even"),
        ("buffer_audio = 1", "media.buffer_audio must be a bool, got 1"),
        ("fps = 15.5", "media.fps must be a"),
        ("volume = 11", "[media] has unknown key 'volume'"),
    ],
)
def test_bad_media_settings_are_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_toml(tmp_path, f"[media]\n{body}\n"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_synthetic_setting_gives_synthetic_segments() -> None:
    source = open_media_source(MediaSettings(segment_s=2.0), "bwc-1")
    assert isinstance(source, SyntheticSource)
    assert source.segment_seconds == 2.0


def test_h264_setting_gives_an_encoder_live_or_on_demand() -> None:
    media = MediaSettings(source=MediaKind.H264, width=160, height=90, fps=5)
    on_demand = open_media_source(media, "bwc-1", live=False)
    assert isinstance(on_demand, H264Source)
    live = open_media_source(media, "bwc-1", device="none")
    assert isinstance(live, LiveH264Source)
    try:
        assert live.running
    finally:
        live.switch_off()
