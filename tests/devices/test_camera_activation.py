"""The camera core: pre-roll counted from the event, idempotent commands, local stop only."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.messages import AckStatus, DeviceKind, DeviceState
from actimesh.broker.topics import IDENTIFIER_PATTERN
from actimesh.devices.camera import ActivationOrder, ActivationResult, Camera
from actimesh.devices.manifest import verify_manifest
from actimesh.devices.media import SyntheticSource, parse_synthetic
from actimesh.devices.recorder import Recording, RecordingStore
from actimesh.errors import MediaError

#: Event time, deliberately not on a segment boundary.
T = 1_700_000_000.4
SHIFT_START = T - 3600.0


def _camera(
    tmp_path: Path,
    *,
    started_at: float = SHIFT_START,
    seconds: float = 1.0,
    kind: DeviceKind = DeviceKind.BODY_CAM,
    **kwargs: Any,
) -> Camera:
    return Camera(
        "bwc-1",
        kind,
        SyntheticSource("bwc-1", segment_seconds=seconds, segment_bytes=64),
        RecordingStore(tmp_path, manifest_every=1),
        started_at=started_at,
        **kwargs,
    )


def _activate(
    cam: Camera,
    *,
    aid: str = "act-1",
    event_ts: float = T,
    now: float = T + 1.0,
    pre_roll_s: float = 30.0,
) -> ActivationResult:
    return cam.activate(
        ActivationOrder(aid, f"evt-{aid}", "taser_draw", "cew-9", event_ts, pre_roll_s),
        now,
    )


def _live(cam: Camera) -> Recording:
    assert cam.recording is not None
    return cam.recording


def _manifest(rec: Recording) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(rec.manifest_path.read_text())
    return result


def test_commit_reaches_back_pre_roll_from_event_time_not_command_time(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    result = _activate(cam, event_ts=T, now=T + 5.0)

    assert result == ActivationResult(AckStatus.RECORDING, 30.0, result.recording_id)
    rec = _live(cam)
    first = rec.segments[0]
    assert T - 31.0 < first.start <= T - 30.0
    assert rec.segments[-1].end <= T + 5.0
    # The recording stays live: segments filmed after the command keep arriving.
    cam.advance(T + 20.0)
    assert rec.segments[-1].end == math.floor(T + 20.0)
    assert cam.state is DeviceState.RECORDING
    starts = [s.start for s in rec.segments]
    assert starts == [first.start + i for i in range(len(starts))]


def test_recording_files_prove_which_seconds_were_committed(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam, event_ts=T, now=T + 5.0)
    cam.advance(T + 10.0)
    rec = _live(cam)
    headers = [parse_synthetic(p.read_bytes()) for p in sorted(rec.path.glob("*.seg"))]
    assert headers[0].start == math.floor(T - 30.0)
    assert headers[-1].end == math.floor(T + 10.0)
    assert {h.device_id for h in headers} == {"bwc-1"}
    assert all(a.end == b.start for a, b in itertools.pairwise(headers))


def test_manifest_hashes_match_segment_files(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam)
    cam.advance(T + 15.0)
    rec = cam.stop(T + 15.5)
    assert rec is not None
    manifest = _manifest(rec)
    assert manifest["segments"]
    for entry in manifest["segments"]:
        data = (rec.path / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_duplicate_command_is_idempotent(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    first = _activate(cam, now=T + 1.0)
    again = _activate(cam, now=T + 3.0)
    assert again.duplicate
    assert (again.status, again.recording_id, again.pre_roll_covered_s) == (
        first.status,
        first.recording_id,
        first.pre_roll_covered_s,
    )
    assert len(_manifest(_live(cam))["activations"]) == 1
    assert len(list((tmp_path / "bwc-1").iterdir())) == 1


def test_duplicate_after_officer_stop_does_not_restart_recording(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    first = _activate(cam)
    cam.stop(T + 10.0)
    again = _activate(cam, now=T + 12.0)
    assert again.duplicate
    assert again.recording_id == first.recording_id
    assert cam.state is DeviceState.BUFFERING


def test_second_activation_attaches_to_running_recording(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    first = _activate(cam, aid="act-1", event_ts=T, now=T + 1.0)
    second = _activate(cam, aid="act-2", event_ts=T + 20.0, now=T + 21.0)

    assert second.status is AckStatus.RECORDING
    assert second.recording_id == first.recording_id
    assert not second.duplicate
    # The recording reaches 50 s before the second event: it owes only 30.
    assert second.pre_roll_covered_s == 30.0
    manifest = _manifest(_live(cam))
    assert [a["aid"] for a in manifest["activations"]] == ["act-1", "act-2"]
    assert manifest["started_at"] == math.floor(T - 30.0)
    assert len(list((tmp_path / "bwc-1").iterdir())) == 1


def test_later_command_for_earlier_event_extends_recording_backwards(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam, aid="act-1", event_ts=T, now=T + 1.0)
    # A second trigger that happened 4 s earlier, whose command arrived later.
    second = _activate(cam, aid="act-2", event_ts=T - 4.0, now=T + 2.0)
    assert second.pre_roll_covered_s == 30.0
    rec = _live(cam)
    assert T - 35.0 < rec.started_at <= T - 34.0
    seqs = [s.seq for s in rec.segments]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_cold_camera_reports_partial_coverage(tmp_path: Path) -> None:
    cam = _camera(tmp_path, started_at=T - 10.0)  # switched on 10 s before the event
    result = _activate(cam, event_ts=T, now=T + 1.0)
    assert result.status is AckStatus.RECORDING
    rec = _live(cam)
    assert rec.segments[0].start == math.ceil(T - 10.0)
    assert result.pre_roll_covered_s == pytest.approx(T - math.ceil(T - 10.0))
    assert result.pre_roll_covered_s < 10.0
    assert _manifest(rec)["activations"][0]["pre_roll_covered_s"] == result.pre_roll_covered_s


def test_camera_switched_on_just_now_records_from_next_segment(tmp_path: Path) -> None:
    cam = _camera(tmp_path, started_at=T + 0.2)
    result = _activate(cam, event_ts=T, now=T + 0.3)
    assert result.status is AckStatus.RECORDING
    assert result.pre_roll_covered_s == 0.0
    rec = _live(cam)
    assert rec.started_at == math.ceil(T)
    assert [s.start for s in rec.segments] == []
    cam.advance(T + 3.0)
    assert [s.start for s in rec.segments] == [math.ceil(T), math.ceil(T) + 1]


def test_command_later_than_allowance_reports_what_the_buffer_still_held(tmp_path: Path) -> None:
    cam = _camera(tmp_path, late_allowance_s=10.0)
    result = _activate(cam, event_ts=T, now=T + 25.0)
    # The buffer reaches 41 s behind its newest segment (which ends at floor(T + 25)).
    reaches = math.floor(T + 25.0) - 41.0
    assert result.pre_roll_covered_s == pytest.approx(T - reaches)
    assert result.pre_roll_covered_s < 30.0
    assert _live(cam).started_at == reaches


def test_command_within_allowance_gets_full_pre_roll(tmp_path: Path) -> None:
    cam = _camera(tmp_path, late_allowance_s=10.0)
    assert _activate(cam, event_ts=T, now=T + 10.0).pre_roll_covered_s == 30.0


def test_requested_pre_roll_shorter_than_buffer_commits_only_what_was_asked(
    tmp_path: Path,
) -> None:
    cam = _camera(tmp_path)
    result = _activate(cam, event_ts=T, now=T + 1.0, pre_roll_s=5.0)
    assert result.pre_roll_covered_s == 5.0
    assert _live(cam).started_at == math.floor(T - 5.0)


def test_zero_pre_roll_starts_with_segment_holding_the_event(tmp_path: Path) -> None:
    cam = _camera(tmp_path, pre_roll_s=0.0)
    result = _activate(cam, event_ts=T, now=T + 2.0, pre_roll_s=0.0)
    assert result.pre_roll_covered_s == 0.0
    assert _live(cam).started_at == math.floor(T)


def test_off_camera_refuses(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    cam.power_off(T - 5.0)
    result = _activate(cam)
    assert result.status is AckStatus.REFUSED
    assert result.recording_id is None
    assert result.pre_roll_covered_s == 0.0
    assert result.detail is not None
    assert "off" in result.detail
    assert cam.state is DeviceState.OFF
    assert len(cam.buffer) == 0
    assert not (tmp_path / "bwc-1").exists()


def test_camera_switched_back_on_buffers_afresh(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    cam.power_off(T - 60.0)
    assert cam.advance(T - 30.0) == 0
    cam.power_on(T - 5.5)
    refused_then = _activate(cam, now=T + 1.0)
    assert refused_then.status is AckStatus.RECORDING
    assert refused_then.pre_roll_covered_s == pytest.approx(T - math.ceil(T - 5.5))


def test_stop_closes_recording_and_returns_to_buffering(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam)
    rec = cam.stop(T + 10.25)
    assert rec is not None
    assert cam.state is DeviceState.BUFFERING
    assert cam.recording is None
    manifest = _manifest(rec)
    assert manifest["stopped_at"] == T + 10.25
    assert manifest["stopped_by"] == "officer"
    # What was filmed up to the stop is kept, including part of the current segment.
    assert manifest["segments"][-1]["end"] == T + 10.25
    # Back to buffering: the buffer keeps rolling, and a new activation opens a new file.
    cam.advance(T + 60.0)
    assert cam.buffer.latest_end() == math.floor(T + 60.0)
    again = _activate(cam, aid="act-2", event_ts=T + 60.0, now=T + 61.0)
    assert again.recording_id != rec.recording_id
    assert len(list((tmp_path / "bwc-1").iterdir())) == 2


def test_stop_when_not_recording_does_nothing(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    assert cam.stop(T) is None
    assert cam.state is DeviceState.BUFFERING


def test_power_off_closes_recording_and_drops_buffer(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam)
    rec = cam.power_off(T + 4.0)
    assert rec is not None
    assert cam.state is DeviceState.OFF
    assert len(cam.buffer) == 0
    manifest = _manifest(rec)
    assert manifest["stopped_by"] == "power_off"
    assert manifest["stopped_at"] == T + 4.0


def test_power_off_without_clock_ends_with_last_rendered_segment(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    _activate(cam, now=T + 3.0)
    rec = cam.power_off()
    assert rec is not None
    assert rec.stopped_at == math.floor(T + 3.0) == rec.segments[-1].end


def test_warm_camera_backfill_renders_only_what_the_buffer_keeps(tmp_path: Path) -> None:
    cam = _camera(tmp_path, started_at=T - 8 * 3600.0)
    rendered = cam.advance(T)
    assert rendered <= cam.buffer.capacity_s + 3
    assert cam.buffer.covered_s >= cam.buffer.capacity_s
    assert cam.buffer.latest_end() == math.floor(T)
    # Sequence numbers still count from the moment the camera was switched on.
    newest = list(cam.buffer)[-1]
    assert newest.seq == math.floor(T) - math.ceil(T - 8 * 3600.0) - 1


def test_segments_align_to_multiples_of_segment_seconds(tmp_path: Path) -> None:
    cam = _camera(tmp_path, started_at=T - 100.0, seconds=2.0)
    cam.advance(T)
    for seg in cam.buffer:
        assert seg.start % 2.0 == 0.0
        assert seg.end - seg.start == 2.0
    assert cam.advance(T) == 0  # nothing new until the next segment completes


def test_recording_ids_are_valid_identifiers(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    for n in range(5):
        result = _activate(cam, aid=f"act-{n}", event_ts=T + 100 * n, now=T + 100 * n + 1)
        assert result.recording_id is not None
        assert re.fullmatch(IDENTIFIER_PATTERN, result.recording_id)
        assert re.fullmatch(r"rec-[0-9a-f]{12}", result.recording_id)
        cam.stop(T + 100 * n + 2)
    assert len(list((tmp_path / "bwc-1").iterdir())) == 5


def test_storage_failure_refuses_with_reason(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    cam = Camera(
        "bwc-1",
        DeviceKind.BODY_CAM,
        SyntheticSource("bwc-1"),
        RecordingStore(blocked),
        started_at=SHIFT_START,
    )
    result = _activate(cam)
    assert result.status is AckStatus.REFUSED
    assert result.detail is not None
    assert result.detail.startswith("could not write recording")
    assert len(result.detail) <= 256
    assert cam.state is DeviceState.BUFFERING


@pytest.mark.parametrize("kind", [DeviceKind.DASH_CAM, DeviceKind.REAR_CAM])
def test_in_car_cameras_record_like_body_cameras(tmp_path: Path, kind: DeviceKind) -> None:
    cam = _camera(tmp_path, kind=kind)
    assert _activate(cam).pre_roll_covered_s == 30.0
    assert _manifest(_live(cam))["device_kind"] == kind.value


@pytest.mark.parametrize("kind", [DeviceKind.GATEWAY, DeviceKind.CEW])
def test_non_camera_kinds_are_rejected(tmp_path: Path, kind: DeviceKind) -> None:
    with pytest.raises(ValueError, match="not a camera kind"):
        _camera(tmp_path, kind=kind)


@pytest.mark.parametrize("pre_roll", [-1.0, 121.0, float("nan")])
def test_pre_roll_outside_0_to_120_is_rejected(tmp_path: Path, pre_roll: float) -> None:
    with pytest.raises(ValueError, match="pre_roll_s"):
        _camera(tmp_path, pre_roll_s=pre_roll)
    cam = _camera(tmp_path)
    with pytest.raises(ValueError, match="pre_roll_s"):
        _activate(cam, pre_roll_s=pre_roll)


def test_non_finite_times_are_rejected(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    with pytest.raises(ValueError, match="finite"):
        cam.advance(float("inf"))
    with pytest.raises(ValueError, match="finite"):
        _activate(cam, event_ts=float("nan"))


def test_memory_of_activation_ids_is_bounded(tmp_path: Path) -> None:
    cam = _camera(tmp_path, remember_activations=2)
    for aid in ("a1", "a2", "a3"):
        _activate(cam, aid=aid)
    assert _activate(cam, aid="a3").duplicate
    # a1 was forgotten: a redelivery now joins the running recording once more.
    assert not _activate(cam, aid="a1").duplicate
    assert len(_live(cam).activations) == 4


def test_power_on_while_on_changes_nothing(tmp_path: Path) -> None:
    cam = _camera(tmp_path)
    cam.advance(T)
    before = list(cam.buffer)
    cam.power_on(T)
    assert cam.state is DeviceState.BUFFERING
    assert list(cam.buffer) == before


@pytest.mark.parametrize(("device_id", "remember"), [("../bwc", 1024), ("bwc-1", 0)])
def test_bad_camera_settings_are_rejected(tmp_path: Path, device_id: str, remember: int) -> None:
    with pytest.raises(ValueError, match="must"):
        Camera(
            device_id,
            DeviceKind.BODY_CAM,
            SyntheticSource("bwc-1"),
            RecordingStore(tmp_path),
            started_at=SHIFT_START,
            remember_activations=remember,
        )


class _FailsOnce(SyntheticSource):
    """A source whose encoder fails on one segment."""

    def __init__(self, bad_seq: int) -> None:
        super().__init__("bwc-1", segment_bytes=64)
        self.bad_seq = bad_seq

    def render(self, seq: int, start: float, end: float) -> bytes:
        if seq == self.bad_seq:
            raise MediaError("H.264 encoding failed: test")
        return super().render(seq, start, end)


def test_segment_the_source_cannot_encode_is_skipped_not_fatal(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    probe = _camera(tmp_path / "probe")
    probe.advance(T + 5.0)
    bad = list(probe.buffer)[-3].seq  # a segment filmed after the activation below
    cam = Camera(
        "bwc-1",
        DeviceKind.BODY_CAM,
        _FailsOnce(bad),
        RecordingStore(tmp_path),
        started_at=SHIFT_START,
        signing_key=key,
    )
    _activate(cam, now=T + 1.0)
    cam.advance(T + 8.0)
    assert cam.media_errors == 1
    assert cam.state is DeviceState.RECORDING
    rec = cam.stop(T + 8.0)
    assert rec is not None
    seqs = [s.seq for s in rec.segments]
    assert bad not in seqs
    assert seqs[-1] > bad
    check = verify_manifest(rec.path, key.public_key())
    assert check.ok
    assert check.notes == (f"1.000 s missing before segment {bad + 1}",)
