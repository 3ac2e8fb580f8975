"""Stealth: the recording light off, by policy or by the officer, in the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actimesh.broker.messages import DeviceKind
from actimesh.devices import Camera, RecordingStore, StealthPolicy, SyntheticSource
from actimesh.devices.camera import ActivationOrder
from tests.devices.helpers import manifest_of

T = 1_700_000_000.4


def _camera(tmp_path: Path, **kwargs: Any) -> Camera:
    return Camera(
        "bwc-1",
        DeviceKind.BODY_CAM,
        SyntheticSource("bwc-1", segment_bytes=64),
        RecordingStore(tmp_path),
        started_at=T - 100.0,
        **kwargs,
    )


def _activate(cam: Camera, now: float = T + 1.0) -> None:
    cam.activate(
        ActivationOrder("act-1", "evt-1", "taser_draw", "cew-9", T, 30.0),
        now,
    )


def test_light_is_dark_while_only_buffering(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    assert not cam.stealth
    assert not cam.recording_light


def test_light_shows_while_recording_by_default(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam)
    assert cam.recording_light
    assert cam.recording is not None
    assert manifest_of(cam.recording.path)["stealth"] == [
        {"at": T + 1.0, "on": False, "by": "policy"}
    ]


def test_officer_turns_the_light_off_and_on_during_a_recording(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam)
    assert cam.set_stealth(True, T + 5.0)
    assert cam.stealth
    assert not cam.recording_light
    assert cam.set_stealth(True, T + 6.0)  # already off: nothing new to record
    assert cam.set_stealth(False, T + 9.0)
    rec = cam.stop(T + 12.0)
    assert rec is not None
    assert manifest_of(rec.path)["stealth"] == [
        {"at": T + 1.0, "on": False, "by": "policy"},
        {"at": T + 5.0, "on": True, "by": "officer"},
        {"at": T + 9.0, "on": False, "by": "officer"},
    ]


def test_stealth_chosen_before_a_recording_is_its_starting_state(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    assert cam.set_stealth(True, T - 50.0)
    _activate(cam)
    assert not cam.recording_light
    assert cam.recording is not None
    assert manifest_of(cam.recording.path)["stealth"] == [
        {"at": T + 1.0, "on": True, "by": "officer"}
    ]


def test_policy_always_keeps_the_light_off(tmp_path: Path) -> None:
    cam = _camera(tmp_path, stealth=StealthPolicy.ALWAYS)
    assert cam.stealth
    assert not cam.set_stealth(False, T)
    assert cam.set_stealth(True, T)
    _activate(cam)
    assert not cam.recording_light
    assert cam.recording is not None
    assert manifest_of(cam.recording.path)["stealth"] == [
        {"at": T + 1.0, "on": True, "by": "policy"}
    ]


def test_policy_never_refuses_stealth(tmp_path: Path) -> None:
    cam = _camera(tmp_path, stealth=StealthPolicy.NEVER)
    _activate(cam)
    assert not cam.set_stealth(True, T + 2.0)
    assert cam.recording_light
    assert cam.recording is not None
    assert len(manifest_of(cam.recording.path)["stealth"]) == 1
