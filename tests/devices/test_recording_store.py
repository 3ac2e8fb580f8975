"""Recordings on disk: one file per segment and a manifest that is always whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from actimesh.broker.messages import DeviceKind
from actimesh.devices.media import Segment, SyntheticSource
from actimesh.devices.recorder import (
    MANIFEST_FORMAT_VERSION,
    ActivationRecord,
    Recording,
    RecordingStore,
    StopCause,
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
        "stopped_at": None,
        "stopped_by": None,
        "activations": [],
        "segments": [],
    }
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
