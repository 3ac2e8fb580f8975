"""The false-activation cancel window, on the camera: kept and marked, never dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.messages import AckStatus, DeviceKind, DeviceState
from actimesh.devices import Camera, RecordingStore, SyntheticSource, verify_manifest
from actimesh.devices.camera import DEFAULT_CANCEL_WINDOW_S, ActivationOrder, ActivationResult
from tests.devices.helpers import manifest_of

T = 1_700_000_000.4
KEY = Ed25519PrivateKey.generate()


def _camera(tmp_path: Path, **kwargs: Any) -> Camera:
    return Camera(
        "bwc-1",
        DeviceKind.BODY_CAM,
        SyntheticSource("bwc-1", segment_bytes=64),
        RecordingStore(tmp_path, manifest_every=1),
        started_at=T - 3600.0,
        signing_key=KEY,
        **kwargs,
    )


def _activate(
    cam: Camera, aid: str = "act-1", *, eid: str = "evt-1", now: float = T + 0.5
) -> ActivationResult:
    return cam.activate(
        ActivationOrder(aid, eid, "taser_draw", "cew-9", T, 30.0),
        now,
    )


def test_default_window_is_ten_seconds() -> None:
    assert DEFAULT_CANCEL_WINDOW_S == 10.0


def test_cancel_within_window_stops_and_marks_the_recording_but_keeps_it(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    started = _activate(cam)
    cam.advance(T + 6.0)
    result = cam.cancel(T + 6.2)
    assert result.accepted
    assert result.recording_id == started.recording_id
    assert cam.state is DeviceState.BUFFERING
    assert cam.recording is None
    rec_path = tmp_path / "bwc-1" / str(started.recording_id)
    manifest = manifest_of(rec_path)
    assert manifest["stopped_by"] == "cancelled"
    assert manifest["stopped_at"] == T + 6.2
    assert manifest["cancel"] == {
        "at": T + 6.2,
        "aid": "act-1",
        "by": "officer",
        "activated_at": T + 0.5,
        "window_s": 10.0,
    }
    # Kept whole: the pre-roll and what was filmed until the cancel, and still signed.
    assert manifest["segments"][0]["start"] <= T - 30.0
    assert manifest["segments"][-1]["end"] == T + 6.2
    assert verify_manifest(rec_path, KEY.public_key()).ok


def test_cancel_after_the_window_is_refused_and_recording_goes_on(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam, now=T + 0.5)
    result = cam.cancel(T + 11.0)
    assert not result.accepted
    assert result.detail == "the 10 s cancel window closed 0.5 s ago"
    assert cam.state is DeviceState.RECORDING
    assert manifest_of(cam.recording.path)["cancel"] is None  # type: ignore[union-attr]


def test_cancel_exactly_at_the_end_of_the_window_is_accepted(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam, now=T + 0.5)
    assert cam.cancel(T + 10.5).accepted


def test_activation_that_joined_a_running_recording_cannot_be_cancelled(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam, "act-1", eid="evt-1", now=T + 0.5)
    _activate(cam, "act-2", eid="evt-2", now=T + 1.0)  # the camera was already recording
    result = cam.cancel(T + 2.0, aid="act-2")
    assert not result.accepted
    assert result.detail == "activation act-2 joined a recording that was already running"
    assert not cam.cancel(T + 2.0, aid="act-9").accepted
    assert cam.state is DeviceState.RECORDING


def test_recording_another_event_joined_cannot_be_cancelled(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam, "act-1", eid="evt-1")
    _activate(cam, "act-2", eid="evt-2", now=T + 1.0)
    result = cam.cancel(T + 2.0)
    assert not result.accepted
    assert result.detail == "another event joined this recording since it started"


def test_engine_command_for_the_same_event_does_not_block_the_cancel(tmp_path: Path) -> None:
    # Local first: the CEW's paired camera starts at once, the engine's command for the
    # same event joins a few milliseconds later. The officer may still cancel.
    cam = _camera(tmp_path)
    _activate(cam, "local-evt-1", eid="evt-1", now=T + 0.01)
    _activate(cam, "act-engine", eid="evt-1", now=T + 0.05)
    assert cam.cancel(T + 3.0).accepted


def test_commands_for_a_cancelled_event_are_refused_redeliveries_are_duplicates(
    tmp_path: Path,
) -> None:
    cam = _camera(tmp_path)
    first = _activate(cam, "local-evt-1", eid="evt-1")
    assert cam.cancel(T + 2.0).accepted
    # The engine's command arrives after the cancel: recording again would undo it.
    late = _activate(cam, "act-engine", eid="evt-1", now=T + 2.5)
    assert late.status is AckStatus.REFUSED
    assert late.recording_id == first.recording_id
    assert late.detail == "event evt-1 was cancelled on this camera as a false activation"
    assert cam.state is DeviceState.BUFFERING
    # A redelivery of the cancelled activation answers as before; nothing restarts.
    again = _activate(cam, "local-evt-1", eid="evt-1", now=T + 3.0)
    assert again.duplicate
    assert cam.state is DeviceState.BUFFERING
    # Another event records as usual.
    assert _activate(cam, "act-3", eid="evt-3", now=T + 4.0).status is AckStatus.RECORDING
    assert len(list((tmp_path / "bwc-1").iterdir())) == 2


def test_nothing_to_cancel_when_not_recording(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    result = cam.cancel(T)
    assert not result.accepted
    assert result.recording_id is None
    _activate(cam)
    cam.stop(T + 2.0)
    assert cam.cancel(T + 3.0).detail == "nothing to cancel: the camera is not recording"


def test_window_of_zero_disables_cancelling(tmp_path: Path) -> None:
    cam = _camera(tmp_path, cancel_window_s=0.0)
    _activate(cam, now=T + 0.5)
    assert not cam.cancel(T + 0.6).accepted


@pytest.mark.parametrize("window", [-1.0, 61.0, float("nan")])
def test_bad_window_is_rejected(tmp_path: Path, window: float) -> None:
    with pytest.raises(ValueError, match="cancel_window_s"):
        _camera(tmp_path, cancel_window_s=window)


def test_cancelled_events_are_remembered_within_bounds(tmp_path: Path) -> None:
    cam = _camera(tmp_path, remember_activations=2)
    for n in range(3):
        _activate(cam, f"a{n}", eid=f"e{n}", now=T + 20 * n)
        assert cam.cancel(T + 20 * n + 1).accepted
    # e0 was forgotten; e1 and e2 are still refused.
    assert _activate(cam, "b2", eid="e2", now=T + 70).status is AckStatus.REFUSED
    assert _activate(cam, "b0", eid="e0", now=T + 71).status is AckStatus.RECORDING
