"""Signed manifests: any changed byte of media or manifest is caught."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from actimesh.broker.messages import DeviceKind
from actimesh.devices import Camera, RecordingStore, SyntheticSource, verify_manifest
from actimesh.devices.camera import ActivationOrder
from actimesh.devices.h264 import H264Settings, H264Source
from actimesh.devices.manifest import (
    SIGNATURE_DOMAIN,
    canonical_json,
    public_key_hex,
    sign_manifest,
)
from actimesh.devices.recorder import Recording
from actimesh.devices.settings import MediaSettings

T = 1_700_000_000.4
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def _record(tmp_path: Path, *, h264: bool = True, stop: bool = True) -> Recording:
    source = (
        H264Source("bwc-1", H264Settings(width=160, height=90, fps=5))
        if h264
        else SyntheticSource("bwc-1", segment_bytes=64)
    )
    cam = Camera(
        "bwc-1",
        DeviceKind.BODY_CAM,
        source,
        RecordingStore(tmp_path, durable=False),
        started_at=T - 100.0,
        signing_key=KEY,
    )
    cam.activate(
        ActivationOrder("act-1", "evt-1", "taser_draw", "cew-9", T, 30.0),
        T + 1.0,
    )
    cam.advance(T + 4.0)
    if stop:
        rec = cam.stop(T + 4.5)
        assert rec is not None
        return rec
    assert cam.recording is not None
    return cam.recording


def _load(rec: Recording) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(rec.manifest_path.read_bytes())
    return result


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_untouched_recording_verifies(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    check = verify_manifest(rec.path, KEY.public_key())
    assert check.ok, check.problems
    assert check.manifest is not None
    assert verify_manifest(rec.manifest_path, KEY.public_key()).ok


def test_one_flipped_byte_in_a_segment_fails_and_names_the_segment(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    segment = _load(rec)["segments"][7]
    assert rec.media_path is not None
    _flip_byte(rec.media_path, segment["offset"] + segment["bytes"] // 2)
    check = verify_manifest(rec.path, KEY.public_key())
    assert not check.ok
    assert f"segment {segment['seq']}: SHA-256 does not match the manifest" in check.problems
    assert "recording.ts: SHA-256 does not match the manifest" in check.problems


def test_an_edited_manifest_fails_the_signature(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    manifest = _load(rec)
    manifest["first_frame_at"] -= 10.0  # claim more pre-roll than was filmed
    rec.manifest_path.write_bytes(canonical_json(manifest))
    check = verify_manifest(rec.path, KEY.public_key())
    assert not check.ok
    assert any(p.startswith("signature does not verify") for p in check.problems)


def test_stealth_record_cannot_be_removed_unnoticed(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    manifest = _load(rec)
    manifest["stealth"] = []
    rec.manifest_path.write_bytes(canonical_json(manifest))
    assert not verify_manifest(rec.path, KEY.public_key()).ok


def test_manifest_signed_by_another_device_fails(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    resigned = sign_manifest(_load(rec), OTHER)
    rec.manifest_path.write_bytes(canonical_json(resigned))
    check = verify_manifest(rec.path, KEY.public_key())
    assert "manifest names a different signing key than the one trusted" in check.problems
    assert verify_manifest(rec.path, OTHER.public_key()).ok


def test_unsigned_manifest_fails(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    manifest = _load(rec)
    del manifest["signature"]
    rec.manifest_path.write_bytes(canonical_json(manifest))
    assert verify_manifest(rec.path, KEY.public_key()).problems == ("manifest is not signed",)


def test_bytes_appended_after_a_stop_fail(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    assert rec.media_path is not None
    with rec.media_path.open("ab") as f:
        f.write(b"\x47" + bytes(187))
    check = verify_manifest(rec.path, KEY.public_key())
    assert "recording.ts: 188 bytes after the last listed segment" in check.problems


def test_truncated_file_fails(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    assert rec.media_path is not None
    data = rec.media_path.read_bytes()
    rec.media_path.write_bytes(data[:-188])
    assert not verify_manifest(rec.path, KEY.public_key()).ok


def test_one_file_per_segment_layout_is_verified_too(tmp_path: Path) -> None:
    rec = _record(tmp_path, h264=False)
    assert verify_manifest(rec.path, KEY.public_key()).ok
    entry = _load(rec)["segments"][0]
    first = rec.path / entry["file"]
    data = first.read_bytes()
    _flip_byte(first, 10)
    check = verify_manifest(rec.path, KEY.public_key())
    assert check.problems == (f"segment {entry['seq']}: SHA-256 does not match the manifest",)
    first.write_bytes(data + b"x")
    check = verify_manifest(rec.path, KEY.public_key())
    assert check.problems == (f"segment {entry['seq']}: {entry['file']} is 65 bytes, not 64",)
    first.unlink()
    assert "unreadable" in verify_manifest(rec.path, KEY.public_key()).problems[0]


def test_unreadable_or_malformed_manifest_is_reported_not_raised(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    rec.manifest_path.write_text("{half a manif")
    assert "manifest unreadable" in verify_manifest(rec.path, KEY.public_key()).problems[0]
    rec.manifest_path.write_text("[]")
    assert verify_manifest(rec.path, KEY.public_key()).problems == (
        "manifest is not a JSON object",
    )
    signed = sign_manifest({"segments": "not a list of segments"}, KEY)
    rec.manifest_path.write_bytes(canonical_json(signed))
    check = verify_manifest(rec.path, KEY.public_key())
    assert any(p.startswith("manifest is malformed") for p in check.problems)


def test_manifest_says_who_filmed_what_for_which_event(tmp_path: Path) -> None:
    manifest = _load(_record(tmp_path))
    assert manifest["device_id"] == "bwc-1"
    assert manifest["device_kind"] == "body_cam"
    (activation,) = manifest["activations"]
    assert (activation["aid"], activation["eid"]) == ("act-1", "evt-1")
    assert activation["pre_roll_requested_s"] == activation["pre_roll_covered_s"] == 30.0
    assert manifest["first_frame_at"] <= T - 30.0
    assert manifest["stealth"] == [{"at": T + 1.0, "on": False, "by": "policy"}]
    assert manifest["audio"]["pre_event"] is False
    assert manifest["cancel"] is None
    assert manifest["signature"]["public_key"] == public_key_hex(KEY.public_key())


def test_manifest_file_is_canonical_json(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    raw = rec.manifest_path.read_bytes()
    assert raw == canonical_json(json.loads(raw)) + b"\n"


def test_live_recording_verifies_with_a_note(tmp_path: Path) -> None:
    rec = _record(tmp_path, stop=False)
    check = verify_manifest(rec.path, KEY.public_key())
    assert check.ok
    assert len(check.notes) == 1


def test_buffer_audio_setting_is_recorded(tmp_path: Path) -> None:
    source = SyntheticSource("bwc-1")
    settings = MediaSettings(buffer_audio=True)
    cam = Camera(
        "bwc-1",
        DeviceKind.BODY_CAM,
        source,
        RecordingStore(tmp_path),
        started_at=T - 100.0,
        buffer_audio=settings.buffer_audio,
    )
    result = cam.activate(
        ActivationOrder("a", "e", "taser_draw", "cew-9", T, 30.0),
        T + 1.0,
    )
    assert cam.recording is not None
    audio = _load(cam.recording)["audio"]
    # No source records audio yet: the setting is kept, the pre-event part has none.
    assert audio == {"track": False, "pre_event": False, "buffer_audio": True}
    assert result.recording_id is not None


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), _JSON, max_size=6))
def test_any_signed_manifest_verifies_after_a_json_round_trip(manifest: dict[str, Any]) -> None:
    signed = sign_manifest(manifest, KEY)
    reread = json.loads(canonical_json(signed))
    payload = SIGNATURE_DOMAIN + canonical_json(
        {k: v for k, v in reread.items() if k != "signature"}
    )
    KEY.public_key().verify(bytes.fromhex(reread["signature"]["value"]), payload)


@pytest.mark.parametrize("field", ["alg", "value"])
def test_damaged_signature_fields_fail(tmp_path: Path, field: str) -> None:
    rec = _record(tmp_path)
    manifest = _load(rec)
    manifest["signature"][field] = "zz"
    rec.manifest_path.write_bytes(canonical_json(manifest))
    assert not verify_manifest(rec.path, KEY.public_key()).ok
