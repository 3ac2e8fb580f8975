"""Recordings on disk: one file per segment and a manifest that is always whole."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from actimesh.broker.messages import DeviceKind
from actimesh.devices.media import MediaFormat, Segment, SyntheticSource
from actimesh.devices.recorder import (
    MANIFEST_FORMAT_VERSION,
    ActivationRecord,
    CancelRecord,
    Recording,
    RecordingOptions,
    RecordingStore,
    SegmentInfo,
    StealthChange,
    StopCause,
    media_file_name,
    segment_file_name,
)

T0 = 1_700_000_000.0
SOURCE = SyntheticSource("bwc-1")


def _seg(seq: int) -> Segment:
    start, end = T0 + seq, T0 + seq + 1
    return Segment.of(seq, start, end, SOURCE.render(seq, start, end))


def _activation(aid: str = "act-1") -> ActivationRecord:
    return ActivationRecord(
        aid=aid,
        eid="evt-1",
        event_type="taser_draw",
        source="cew-9",
        event_ts=T0 + 30.5,
        pre_roll_requested_s=30.0,
        pre_roll_covered_s=30.0,
        received_at=T0 + 31.0,
    )


def _manifest(rec: Recording) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(rec.manifest_path.read_text())
    return result


def _open(tmp_path: Path, **kwargs: Any) -> Recording:
    store = RecordingStore(tmp_path, **kwargs)
    return store.open("rec-1", "bwc-1", T0, device_kind=DeviceKind.BODY_CAM)


def test_open_creates_folder_per_device_and_recording_with_live_manifest(tmp_path: Path) -> None:
    rec = _open(tmp_path)
    assert rec.path == tmp_path / "bwc-1" / "rec-1"
    manifest = _manifest(rec)
    assert manifest == {
        "format_version": MANIFEST_FORMAT_VERSION,
        "recording_id": "rec-1",
        "device_id": "bwc-1",
        "device_kind": "body_cam",
        "started_at": T0,
        "first_frame_at": None,
        "stopped_at": None,
        "stopped_by": None,
        "cancel": None,
        "stealth": [],
        "audio": {"track": False, "pre_event": False, "buffer_audio": False},
        "media": {
            "container": "synthetic",
            "file": None,
            "bytes": 0,
            "sha256": None,
            "video": None,
        },
        "activations": [],
        "segments": [],
    }
    assert "signature" not in manifest  # no device key given
    assert rec.live


def test_manifest_lists_activation_and_every_segment(tmp_path: Path) -> None:
    rec = _open(tmp_path)
    rec.attach(_activation(), [_seg(0), _seg(1)])
    manifest = _manifest(rec)
    assert manifest["activations"] == [
        {
            "aid": "act-1",
            "eid": "evt-1",
            "type": "taser_draw",
            "source": "cew-9",
            "event_ts": T0 + 30.5,
            "pre_roll_requested_s": 30.0,
            "pre_roll_covered_s": 30.0,
            "received_at": T0 + 31.0,
        }
    ]
    first = _seg(0)
    assert manifest["segments"][0] == {
        "seq": 0,
        "start": first.start,
        "end": first.end,
        "file": "000000.seg",
        "sha256": first.sha256,
        "bytes": len(first.data),
    }
    assert manifest["started_at"] == T0


def test_manifest_hashes_match_segment_files(tmp_path: Path) -> None:
    rec = _open(tmp_path, manifest_every=1)
    rec.attach(_activation(), [_seg(0), _seg(1)])
    for seq in range(2, 6):
        rec.append(_seg(seq))
    rec.stop(T0 + 6.0)
    segments = _manifest(rec)["segments"]
    assert [s["seq"] for s in segments] == list(range(6))
    for entry in segments:
        data = (rec.path / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    on_disk = sorted(p.name for p in rec.path.glob("*.seg"))
    assert on_disk == [s["file"] for s in segments]


def test_manifest_written_atomically(tmp_path: Path) -> None:
    rec = _open(tmp_path, manifest_every=2)

    def check() -> dict[str, Any]:
        # Always a whole JSON document, and no temporary file left beside it.
        assert [p for p in rec.path.iterdir() if p.name.endswith(".tmp")] == []
        return _manifest(rec)

    check()
    rec.attach(_activation(), [_seg(0)])
    check()
    for seq in range(1, 6):
        rec.append(_seg(seq))
        check()
    rec.stop(T0 + 6.0)
    assert check()["stopped_at"] == T0 + 6.0


def test_live_manifest_is_rewritten_every_n_segments(tmp_path: Path) -> None:
    rec = _open(tmp_path, manifest_every=3)
    rec.attach(_activation(), [])
    listed = []
    for seq in range(7):
        rec.append(_seg(seq))
        listed.append(len(_manifest(rec)["segments"]))
    # A crash loses at most manifest_every - 1 segments from the manifest ...
    assert listed == [0, 0, 3, 3, 3, 6, 6]
    # ... while every segment file is already on disk.
    assert len(list(rec.path.glob("*.seg"))) == 7


def test_stop_writes_final_manifest(tmp_path: Path) -> None:
    rec = _open(tmp_path)
    rec.attach(_activation(), [_seg(0)])
    rec.append(_seg(1))
    rec.stop(T0 + 2.0)
    manifest = _manifest(rec)
    assert manifest["stopped_at"] == T0 + 2.0
    assert manifest["stopped_by"] == "officer"
    assert len(manifest["segments"]) == 2
    assert not rec.live


def test_stopped_recording_cannot_change(tmp_path: Path) -> None:
    rec = _open(tmp_path)
    rec.stop(T0 + 1.0, StopCause.POWER_OFF)
    assert _manifest(rec)["stopped_by"] == "power_off"
    with pytest.raises(ValueError, match="was stopped"):
        rec.append(_seg(0))
    with pytest.raises(ValueError, match="was stopped"):
        rec.attach(_activation())
    with pytest.raises(ValueError, match="was stopped"):
        rec.stop(T0 + 2.0)


def test_attach_extends_recording_backwards(tmp_path: Path) -> None:
    rec = _open(tmp_path)
    rec.attach(_activation("a"), [_seg(5), _seg(6)])
    rec.attach(_activation("b"), [_seg(2), _seg(3), _seg(4), _seg(5)])  # 5 already held
    assert [s.seq for s in rec.segments] == [2, 3, 4, 5, 6]
    manifest = _manifest(rec)
    assert manifest["started_at"] == T0 + 2
    assert [a["aid"] for a in manifest["activations"]] == ["a", "b"]


def test_append_rejects_segments_out_of_order(tmp_path: Path) -> None:
    rec = _open(tmp_path)
    rec.append(_seg(3))
    with pytest.raises(ValueError, match="does not follow"):
        rec.append(_seg(3))


def test_open_never_overwrites_an_existing_recording(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path)
    store.open("rec-1", "bwc-1", T0)
    with pytest.raises(FileExistsError):
        store.open("rec-1", "bwc-1", T0)


@pytest.mark.parametrize(("device_id", "recording_id"), [("..", "rec"), ("bwc", "../x"), ("", "r")])
def test_ids_cannot_escape_the_store(tmp_path: Path, device_id: str, recording_id: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        RecordingStore(tmp_path).open(recording_id, device_id, T0)


def test_store_rejects_manifest_every_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="manifest_every"):
        RecordingStore(tmp_path, manifest_every=0)


def test_segment_files_are_named_by_seq() -> None:
    assert segment_file_name(42) == "000042.seg"
    assert segment_file_name(1_234_567) == "1234567.seg"


def test_non_durable_store_still_writes_whole_files(tmp_path: Path) -> None:
    rec = _open(tmp_path, durable=False)
    rec.attach(_activation(), [_seg(0)])
    assert _manifest(rec)["segments"][0]["sha256"] == _seg(0).sha256


# ---------------------------------------------------------------------- one-file layout
ONE_FILE = MediaFormat(container="test", extension="bin", concatenable=True)


def _blob(seq: int) -> Segment:
    return Segment.of(seq, T0 + seq, T0 + seq + 1, bytes([seq]) * (100 + seq))


def _open_one_file(tmp_path: Path, **kwargs: Any) -> Recording:
    store = RecordingStore(tmp_path, **kwargs)
    return store.open("rec-1", "bwc-1", T0, options=RecordingOptions(media=ONE_FILE))


def test_concatenable_segments_go_into_one_file_with_byte_ranges(tmp_path: Path) -> None:
    rec = _open_one_file(tmp_path, manifest_every=1)
    assert rec.media_path == rec.path / media_file_name(ONE_FILE) == rec.path / "recording.bin"
    assert rec.media_path.read_bytes() == b""  # there from the start, empty
    rec.attach(_activation(), [_blob(0), _blob(1)])
    rec.append(_blob(2))
    data = rec.media_path.read_bytes()
    assert data == b"".join(_blob(i).data for i in range(3))
    manifest = _manifest(rec)
    assert [(s["offset"], s["bytes"]) for s in manifest["segments"]] == [
        (0, 100),
        (100, 101),
        (201, 102),
    ]
    assert manifest["media"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["media"]["bytes"] == len(data)
    assert list(rec.path.glob("*.seg")) == []


def test_extending_a_one_file_recording_backwards_rewrites_it_in_order(tmp_path: Path) -> None:
    rec = _open_one_file(tmp_path)
    rec.attach(_activation("a"), [_blob(5), _blob(6)])
    rec.append(_blob(7))
    rec.attach(_activation("b"), [_blob(3), _blob(4), _blob(5)])  # 5 already held
    assert rec.media_path is not None
    data = rec.media_path.read_bytes()
    assert data == b"".join(_blob(i).data for i in range(3, 8))
    manifest = _manifest(rec)
    assert [s["seq"] for s in manifest["segments"]] == [3, 4, 5, 6, 7]
    assert manifest["media"]["sha256"] == hashlib.sha256(data).hexdigest()
    # Appending after the rewrite keeps the running hash right.
    rec.append(_blob(8))
    rec.stop(T0 + 9.0)
    final = rec.media_path.read_bytes()
    assert _manifest(rec)["media"]["sha256"] == hashlib.sha256(final).hexdigest()


def test_failed_append_leaves_the_file_as_the_manifest_knows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _open_one_file(tmp_path)
    rec.attach(_activation(), [_blob(0)])
    real_write = os.write

    def disk_fills_up(fd: int, data: Any) -> int:
        real_write(fd, bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("actimesh.devices.recorder.os.write", disk_fills_up)
    with pytest.raises(OSError, match="No space left"):
        rec.append(_blob(1))
    monkeypatch.undo()
    assert rec.media_path is not None
    assert rec.media_path.read_bytes() == _blob(0).data
    rec.append(_blob(2))
    rec.stop(T0 + 3.0)
    data = rec.media_path.read_bytes()
    assert data == _blob(0).data + _blob(2).data
    assert _manifest(rec)["media"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_recording_keeps_no_media_in_memory(tmp_path: Path) -> None:
    rec = _open_one_file(tmp_path)
    rec.attach(_activation(), [_blob(0)])
    assert rec.segments == (SegmentInfo(0, T0, T0 + 1, _blob(0).sha256, 100),)


def test_cancel_is_recorded_with_the_stop_and_only_with_it(tmp_path: Path) -> None:
    rec = _open(tmp_path)
    with pytest.raises(ValueError, match="CancelRecord"):
        rec.stop(T0 + 1.0, StopCause.CANCELLED)
    mark = CancelRecord(T0 + 1.0, "act-1", "officer", T0 + 0.5, 10.0)
    with pytest.raises(ValueError, match="CancelRecord"):
        rec.stop(T0 + 1.0, StopCause.OFFICER, cancel=mark)
    rec.stop(T0 + 1.0, StopCause.CANCELLED, cancel=mark)
    manifest = _manifest(rec)
    assert manifest["stopped_by"] == "cancelled"
    assert manifest["cancel"]["aid"] == "act-1"


def test_stealth_change_after_stop_is_refused(tmp_path: Path) -> None:
    rec = _open(tmp_path)
    rec.note_stealth(StealthChange(T0 + 1.0, True, "officer"))
    assert _manifest(rec)["stealth"] == [{"at": T0 + 1.0, "on": True, "by": "officer"}]
    rec.stop(T0 + 2.0)
    with pytest.raises(ValueError, match="was stopped"):
        rec.note_stealth(StealthChange(T0 + 3.0, False, "officer"))
