"""A real H.264 commit: one playable file from event time minus pre-roll, signed.

Most tests run the camera on a fake clock (the pattern source encodes any second on
demand, so 40 s of video take a fraction of a second); one runs the live path in real
time: a capture thread filming and encoding while the camera is driven by the wall clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.messages import AckStatus, DeviceKind, DeviceState
from actimesh.devices import Camera, RecordingStore, verify_manifest
from actimesh.devices.camera import ActivationOrder, ActivationResult
from actimesh.devices.h264 import PTS_HZ, H264Settings, H264Source
from actimesh.devices.h264_live import LiveH264Source
from actimesh.devices.pattern import TestPattern
from actimesh.devices.recorder import Recording
from tests.devices.helpers import burned_in_time, decode, manifest_of, wall_pts

#: Event time, deliberately not on a segment boundary.
T = 1_700_000_000.4
FPS = 5
SMALL = H264Settings(width=160, height=90, fps=FPS)
KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[Camera]:
    cam = Camera(
        "bwc-1",
        DeviceKind.BODY_CAM,
        H264Source("bwc-1", SMALL),
        RecordingStore(tmp_path, durable=False),
        started_at=T - 3600.0,
        signing_key=KEY,
    )
    yield cam
    cam.power_off()


def _activate(
    cam: Camera, *, aid: str = "act-1", event_ts: float = T, now: float, pre_roll_s: float = 30.0
) -> ActivationResult:
    return cam.activate(
        ActivationOrder(aid, f"evt-{aid}", "taser_draw", "cew-9", event_ts, pre_roll_s),
        now,
    )


def _media(rec: Recording) -> Path:
    assert rec.media_path is not None
    return rec.media_path


def test_commit_is_one_gapless_file_from_event_minus_30_s_to_the_stop(camera: Camera) -> None:
    # The command arrives 4 s after the event: pre-roll still counts back from the event.
    result = _activate(camera, now=T + 4.0)
    assert result.status is AckStatus.RECORDING
    assert result.pre_roll_covered_s == 30.0
    camera.advance(T + 14.0)
    rec = camera.stop(T + 14.3)
    assert rec is not None
    manifest = manifest_of(rec.path)
    first = manifest["first_frame_at"]
    assert T - 31.0 < first <= T - 30.0
    assert manifest["started_at"] == first == rec.segments[0].start

    decoded = decode(_media(rec), camera_pattern(camera))
    # Continuity: every frame exactly 1/fps after the one before, none missing.
    assert decoded.steps == {PTS_HZ // FPS}
    # The file's own clock says when the first frame was filmed ...
    assert decoded.pts[0] == wall_pts(first)
    # ... and so does the time burned into the picture.
    assert burned_in_time(decoded, camera_pattern(camera), first, FPS) == first
    # Duration: the pre-roll plus the live part, to the frame.
    expected = manifest["stopped_at"] - first
    assert decoded.duration_s == pytest.approx(expected, abs=1 / FPS)
    assert len(decoded.pts) == math.ceil(expected * FPS - 1e-9)
    # Every segment starts with a key frame, so the commit could start at any of them.
    keys = [i for i, key in enumerate(decoded.key_frames) if key]
    assert keys == list(range(0, len(decoded.pts), FPS))

    check = verify_manifest(rec.path, KEY.public_key())
    assert check.ok, check.problems
    assert check.notes == ()


def test_manifest_lists_byte_ranges_and_file_hash(camera: Camera) -> None:
    _activate(camera, now=T + 1.0)
    camera.advance(T + 5.0)
    rec = camera.stop(T + 5.0)
    assert rec is not None
    manifest = manifest_of(rec.path)
    media = manifest["media"]
    assert media["file"] == "recording.ts"
    assert media["bytes"] == _media(rec).stat().st_size
    assert media["video"] == {
        "codec": "h264",
        "width": 160,
        "height": 90,
        "fps": FPS,
        "pts_hz": PTS_HZ,
    }
    offset = 0
    for seg in manifest["segments"]:
        assert seg["file"] == "recording.ts"
        assert seg["offset"] == offset
        offset += seg["bytes"]
    assert offset == media["bytes"]
    assert manifest["activations"][0]["pre_roll_requested_s"] == 30.0
    assert manifest["activations"][0]["pre_roll_covered_s"] == 30.0
    assert manifest["audio"] == {"track": False, "pre_event": False, "buffer_audio": False}
    assert manifest["signature"]["alg"] == "ed25519"


def test_later_command_for_earlier_event_rewrites_file_still_gapless(camera: Camera) -> None:
    _activate(camera, aid="act-1", event_ts=T, now=T + 1.0)
    camera.advance(T + 3.0)
    second = _activate(camera, aid="act-2", event_ts=T - 6.0, now=T + 3.5)
    assert second.pre_roll_covered_s == 30.0
    camera.advance(T + 6.0)
    rec = camera.stop(T + 6.0)
    assert rec is not None
    first = manifest_of(rec.path)["first_frame_at"]
    assert T - 37.0 < first <= T - 36.0
    decoded = decode(_media(rec), camera_pattern(camera))
    assert decoded.pts[0] == wall_pts(first)
    assert decoded.steps == {PTS_HZ // FPS}
    assert verify_manifest(rec.path, KEY.public_key()).ok


def test_live_recording_file_plays_while_it_grows(camera: Camera) -> None:
    _activate(camera, now=T + 1.0)
    camera.advance(T + 4.0)
    rec = camera.recording
    assert rec is not None
    decoded = decode(_media(rec), camera_pattern(camera))
    assert decoded.steps == {PTS_HZ // FPS}
    assert len(decoded.pts) == len(rec.segments) * FPS
    # Segments written since the last manifest are on disk but not listed yet: a note.
    check = verify_manifest(rec.path, KEY.public_key())
    assert check.ok
    assert [n for n in check.notes if "recording live or interrupted" in n]


def test_partial_buffer_after_power_on_commits_what_it_has(tmp_path: Path) -> None:
    cam = Camera(
        "bwc-1",
        DeviceKind.BODY_CAM,
        H264Source("bwc-1", SMALL),
        RecordingStore(tmp_path, durable=False),
        started_at=T - 8.0,
        signing_key=KEY,
    )
    result = _activate(cam, now=T + 1.0)
    assert result.pre_roll_covered_s == pytest.approx(T - math.ceil(T - 8.0))
    rec = cam.stop(T + 2.0)
    assert rec is not None
    decoded = decode(_media(rec), camera_pattern(cam))
    assert decoded.pts[0] == wall_pts(math.ceil(T - 8.0))
    assert decoded.steps == {PTS_HZ // FPS}


def test_live_camera_films_and_commits_in_real_time(tmp_path: Path) -> None:
    """The path a deployed camera runs: a capture thread encodes; the camera collects."""
    settings = H264Settings(width=160, height=90, fps=10, segment_seconds=0.5)
    source = LiveH264Source("bwc-live", settings, wait_s=5.0, stall_s=5.0)
    source.switch_on()
    cam = Camera(
        "bwc-live",
        DeviceKind.BODY_CAM,
        source,
        RecordingStore(tmp_path),
        started_at=time.time(),
        pre_roll_s=1.0,
        late_allowance_s=0.5,
        signing_key=KEY,
    )

    def drive(until: float) -> None:
        # What the device agent's media loop does: advance on a tick. Time itself: the
        # capture thread films in real time, and the camera is driven as a deployed
        # one is, on its loop's 0.1 s period, for a stretch of wall-clock time.
        while time.time() < until:
            cam.advance(time.time())
            time.sleep(0.1)

    try:
        drive(cam.started_at + 2.2)
        event = time.time() - 0.2
        result = _activate(cam, event_ts=event, now=time.time(), pre_roll_s=1.0)
        drive(time.time() + 1.2)
        rec = cam.stop(time.time())
    finally:
        cam.power_off()
    assert not source.running
    assert rec is not None
    assert result.pre_roll_covered_s == 1.0
    manifest = manifest_of(rec.path)
    first = manifest["first_frame_at"]
    assert first <= event - 1.0
    decoded = decode(_media(rec), source.pattern)
    assert decoded.steps == {PTS_HZ // 10}
    assert decoded.pts[0] == wall_pts(first)
    assert decoded.duration_s == pytest.approx(manifest["stopped_at"] - first, abs=0.1)
    # Whole segments came from the capture thread, none were made up afterwards.
    assert source.stats.filled == 0
    assert source.stats.segments_encoded >= len(rec.segments) - 1
    assert verify_manifest(rec.path, KEY.public_key()).ok
    assert cam.state is DeviceState.OFF


def camera_pattern(cam: Camera) -> TestPattern:
    """The pattern a camera's H.264 source draws."""
    source = cam.source
    assert isinstance(source, H264Source)
    return source.pattern
