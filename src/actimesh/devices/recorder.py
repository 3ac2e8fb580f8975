"""Committed recordings on the camera's local disk.

Each recording is a folder ``root/<device_id>/<recording_id>/`` holding the media and a
``manifest.json`` (see :mod:`actimesh.devices.manifest`) that says what the recording
is: the activations that asked for it, when it started and stopped, and every segment
with its SHA-256. How the media is laid out depends on the source's format:

* segments that concatenate (H.264 in MPEG-TS) go into one playable file,
  ``recording.ts``, appended to as they are filmed; the manifest gives each segment's
  byte range and the file's SHA-256;
* other segments (synthetic) are one file each, ``000042.seg``.

Footage is uploaded at the end of the shift, so this folder *is* the evidence until
then; it is written so that a crash or power cut leaves it readable:

* segment files and the manifest are written to a temporary name and moved into place
  with ``os.replace``, so a reader never sees half a manifest or half a segment file;
  the one-file layout is only ever appended to (MPEG-TS cut short still plays), except
  when an activation extends a young recording backwards, which rewrites it whole,
  atomically;
* media is written before the manifest that lists it, so everything listed exists;
* the manifest is rewritten (and signed again) when an activation is attached, when
  the stealth state changes, when the recording stops, and every ``manifest_every``
  segments while live: a crash loses at most that many segments from the manifest
  (the media itself is on disk).

Nothing here decides *what* to record; that is :class:`~actimesh.devices.camera.Camera`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.messages import DeviceKind
from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier
from actimesh.devices.manifest import (
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    canonical_json,
    sign_manifest,
)
from actimesh.devices.media import SYNTHETIC_FORMAT, MediaFormat, Segment

__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "MANIFEST_NAME",
    "ActivationRecord",
    "CancelRecord",
    "Recording",
    "RecordingOptions",
    "RecordingStore",
    "SegmentInfo",
    "StealthChange",
    "StopCause",
    "media_file_name",
    "segment_file_name",
]

_TMP_SUFFIX = ".tmp"
# Police video: readable by the camera's own user only; the uploader runs as that user.
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class StopCause(StrEnum):
    """Why a recording ended. The mesh never stops a recording."""

    OFFICER = "officer"  # the officer stopped it on the camera
    POWER_OFF = "power_off"  # the camera was switched off (or lost power) while recording
    CANCELLED = "cancelled"  # the officer cancelled a false activation within the window


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What a recording keeps of a segment once it is on disk (not the media itself)."""

    seq: int
    start: float
    end: float
    sha256: str
    size: int

    @classmethod
    def of(cls, seg: Segment) -> SegmentInfo:
        """The record of ``seg``."""
        return cls(seg.seq, seg.start, seg.end, seg.sha256, len(seg.data))


@dataclass(frozen=True, slots=True)
class StealthChange:
    """The recording light turned off (``on=True``: stealth) or back on, and by whom."""

    at: float
    on: bool
    by: str  # "policy" or "officer"

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this change."""
        return {"at": self.at, "on": self.on, "by": self.by}


@dataclass(frozen=True, slots=True)
class CancelRecord:
    """A false activation the officer cancelled: the recording is kept and marked."""

    at: float
    aid: str
    by: str
    activated_at: float
    window_s: float

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for the cancel."""
        return {
            "at": self.at,
            "aid": self.aid,
            "by": self.by,
            "activated_at": self.activated_at,
            "window_s": self.window_s,
        }


@dataclass(frozen=True, slots=True)
class RecordingOptions:
    """How one camera's recordings are written and signed.

    ``signing_key`` is the camera's Ed25519 device key; without one the manifest is
    written unsigned (simulated fleets). ``buffer_audio`` is the camera's setting for
    audio in the pre-event buffer, recorded in every manifest.
    """

    media: MediaFormat = SYNTHETIC_FORMAT
    signing_key: Ed25519PrivateKey | None = None
    buffer_audio: bool = False


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """One activation attached to a recording, as listed in its manifest."""

    aid: str
    eid: str
    event_type: str
    source: str
    event_ts: float
    pre_roll_requested_s: float
    pre_roll_covered_s: float
    received_at: float

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this activation."""
        return {
            "aid": self.aid,
            "eid": self.eid,
            "type": self.event_type,
            "source": self.source,
            "event_ts": self.event_ts,
            "pre_roll_requested_s": self.pre_roll_requested_s,
            "pre_roll_covered_s": self.pre_roll_covered_s,
            "received_at": self.received_at,
        }


def segment_file_name(seq: int) -> str:
    """The file name of segment ``seq`` inside a recording folder (one file a segment)."""
    return f"{seq:06d}.seg"


def media_file_name(media: MediaFormat) -> str:
    """The one media file of a recording whose segments concatenate."""
    return f"recording.{media.extension}"


class RecordingStore:
    """Where a camera keeps its committed recordings.

    ``durable=False`` skips every ``fsync`` (files are still moved into place
    atomically); it is for simulated fleets, where thousands of cameras share one disk
    and a power cut does not matter. Real devices keep the default.
    """

    def __init__(self, root: Path, *, manifest_every: int = 10, durable: bool = True) -> None:
        if manifest_every < 1:
            raise ValueError(f"manifest_every must be >= 1, got {manifest_every}")
        self.root = Path(root)
        self.manifest_every = manifest_every
        self.durable = durable

    def path_of(self, device_id: str, recording_id: str) -> Path:
        """The folder of one recording (whether or not it exists)."""
        for label, value in (("device id", device_id), ("recording id", recording_id)):
            # Both become path components: the pattern keeps them from escaping the root.
            if not is_identifier(value):
                raise ValueError(f"{label} {value!r} must match {IDENTIFIER_PATTERN}")
        return self.root / device_id / recording_id

    def open(
        self,
        recording_id: str,
        device_id: str,
        started_at: float,
        *,
        device_kind: DeviceKind | None = None,
        options: RecordingOptions | None = None,
        stealth: Sequence[StealthChange] = (),
    ) -> Recording:
        """Create a new, live recording and write its first manifest.

        ``started_at`` is the start of the recording's first segment (the earliest
        moment it will hold); segments committed later may only extend it backwards.
        ``stealth`` is the state of the recording light when it opens.
        Raises :class:`FileExistsError` rather than touch an existing recording, and
        :class:`OSError` if the disk cannot be written.
        """
        path = self.path_of(device_id, recording_id)
        if not math.isfinite(started_at):
            raise ValueError(f"started_at must be finite, got {started_at!r}")
        path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        path.mkdir(mode=_DIR_MODE)  # exist_ok=False: never overwrite evidence
        recording = Recording(
            path,
            recording_id=recording_id,
            device_id=device_id,
            started_at=started_at,
            device_kind=device_kind,
            manifest_every=self.manifest_every,
            durable=self.durable,
            options=options or RecordingOptions(),
            stealth=stealth,
        )
        if recording.media_path is not None:
            _write_atomic(recording.media_path, b"", durable=self.durable)
        recording.write_manifest()
        return recording


class Recording:
    """One recording folder, live until :meth:`stop`. Made by :meth:`RecordingStore.open`."""

    def __init__(
        self,
        path: Path,
        *,
        recording_id: str,
        device_id: str,
        started_at: float,
        device_kind: DeviceKind | None,
        manifest_every: int,
        durable: bool,
        options: RecordingOptions | None = None,
        stealth: Sequence[StealthChange] = (),
    ) -> None:
        self.path = path
        self.recording_id = recording_id
        self.device_id = device_id
        self.device_kind = device_kind
        self.options = options or RecordingOptions()
        self._planned_start = started_at
        self._manifest_every = manifest_every
        self._durable = durable
        self._segments: list[SegmentInfo] = []
        self._activations: list[ActivationRecord] = []
        self._stealth: list[StealthChange] = list(stealth)
        self._unlisted = 0  # segments written since the manifest was last rewritten
        media = self.options.media
        #: The one media file, when segments concatenate; None for one file a segment.
        self.media_path = path / media_file_name(media) if media.concatenable else None
        self._media_bytes = 0
        self._media_hash = hashlib.sha256()
        self.stopped_at: float | None = None
        self.stopped_by: StopCause | None = None
        self.cancel: CancelRecord | None = None

    # ------------------------------------------------------------------ reading
    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.path / MANIFEST_NAME

    @property
    def live(self) -> bool:
        """True until the recording is stopped."""
        return self.stopped_at is None

    @property
    def started_at(self) -> float:
        """Start of the first segment (or of the one expected first, while empty)."""
        return self._segments[0].start if self._segments else self._planned_start

    @property
    def segments(self) -> tuple[SegmentInfo, ...]:
        """Every segment committed so far, in order."""
        return tuple(self._segments)

    @property
    def stealth(self) -> tuple[StealthChange, ...]:
        """The recording light's state when the recording opened, then every change."""
        return tuple(self._stealth)

    @property
    def activations(self) -> tuple[ActivationRecord, ...]:
        """Every activation attached so far, in the order they arrived."""
        return tuple(self._activations)

    def manifest(self) -> dict[str, Any]:
        """The manifest as it would be written now (signed if the camera has a key)."""
        media = self.options.media
        manifest = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "recording_id": self.recording_id,
            "device_id": self.device_id,
            "device_kind": None if self.device_kind is None else self.device_kind.value,
            "started_at": self.started_at,
            # Every segment's first frame is filmed at its start.
            "first_frame_at": self._segments[0].start if self._segments else None,
            "stopped_at": self.stopped_at,
            "stopped_by": None if self.stopped_by is None else self.stopped_by.value,
            "cancel": None if self.cancel is None else self.cancel.to_json(),
            "stealth": [c.to_json() for c in self._stealth],
            "audio": {
                "track": media.audio,
                "pre_event": media.audio and self.options.buffer_audio,
                "buffer_audio": self.options.buffer_audio,
            },
            "media": {
                "container": media.container,
                "file": None if self.media_path is None else self.media_path.name,
                "bytes": sum(s.size for s in self._segments),
                "sha256": None if self.media_path is None else self._media_hash.hexdigest(),
                "video": None if media.video is None else media.video.to_json(),
            },
            "activations": [a.to_json() for a in self._activations],
            "segments": self._segment_entries(),
        }
        key = self.options.signing_key
        return manifest if key is None else sign_manifest(manifest, key)

    def _segment_entries(self) -> list[dict[str, Any]]:
        if self.media_path is None:
            return [
                {
                    "seq": s.seq,
                    "start": s.start,
                    "end": s.end,
                    "file": segment_file_name(s.seq),
                    "sha256": s.sha256,
                    "bytes": s.size,
                }
                for s in self._segments
            ]
        name, offsets = (
            self.media_path.name,
            itertools.accumulate((s.size for s in self._segments), initial=0),
        )
        return [
            {
                "seq": s.seq,
                "start": s.start,
                "end": s.end,
                "file": name,
                "offset": offset,
                "sha256": s.sha256,
                "bytes": s.size,
            }
            for s, offset in zip(self._segments, offsets, strict=False)
        ]

    # ------------------------------------------------------------------ writing
    def append(self, seg: Segment) -> None:
        """Write the next live segment; rewrite the manifest every ``manifest_every``."""
        self._check_live()
        if self._segments and seg.seq <= self._segments[-1].seq:
            raise ValueError(
                f"segment {seg.seq} does not follow segment {self._segments[-1].seq} "
                f"in recording {self.recording_id}"
            )
        self._write_media([seg], before=False)
        self._segments.append(SegmentInfo.of(seg))
        self._unlisted += 1
        if self._unlisted >= self._manifest_every:
            self.write_manifest()

    def attach(self, activation: ActivationRecord, earlier: Sequence[Segment] = ()) -> None:
        """List ``activation`` in the manifest, first committing ``earlier`` segments.

        ``earlier`` are buffered segments from before the recording's current first
        segment (oldest first): the pre-roll this activation asked for that the
        recording does not hold yet. The manifest is rewritten once, after every file.
        """
        self._check_live()
        earlier = list(earlier)
        if self._segments:
            earlier = [s for s in earlier if s.seq < self._segments[0].seq]
        for a, b in itertools.pairwise(earlier):
            if b.seq <= a.seq:
                raise ValueError(f"earlier segments out of order: {a.seq} then {b.seq}")
        if earlier:
            self._write_media(earlier, before=True)
        self._segments[:0] = [SegmentInfo.of(seg) for seg in earlier]
        self._activations.append(activation)
        self.write_manifest()

    def note_stealth(self, change: StealthChange) -> None:
        """The recording light changed while recording: list it and rewrite the manifest."""
        self._check_live()
        self._stealth.append(change)
        self.write_manifest()

    def stop(
        self, now: float, by: StopCause = StopCause.OFFICER, *, cancel: CancelRecord | None = None
    ) -> None:
        """End the recording at ``now`` and write the final manifest.

        A cancelled recording (``by=StopCause.CANCELLED``) names its ``cancel``; it is
        kept like any other recording, only marked.
        """
        self._check_live()
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        if (by is StopCause.CANCELLED) != (cancel is not None):
            raise ValueError("a cancelled recording, and only one, carries a CancelRecord")
        self.stopped_at = now
        self.stopped_by = by
        self.cancel = cancel
        self.write_manifest()

    def write_manifest(self) -> None:
        """Rewrite ``manifest.json`` atomically (and durably unless the store says not)."""
        data = canonical_json(self.manifest()) + b"\n"
        _write_atomic(self.manifest_path, data, durable=self._durable)
        if self._durable:
            # The renames of the segment files and of the manifest live in the directory:
            # flush it too, or a power cut may forget files the manifest names.
            _fsync_dir(self.path)
        self._unlisted = 0

    def _write_media(self, segs: Sequence[Segment], *, before: bool) -> None:
        if self.media_path is None:
            for seg in segs:
                path = self.path / segment_file_name(seg.seq)
                _write_atomic(path, seg.data, durable=self._durable)
            return
        data = b"".join(seg.data for seg in segs)
        if before and self._media_bytes:
            # Only a young recording can be extended backwards (the buffer reaches back
            # under two minutes), so rewriting the file whole stays small.
            with self.media_path.open("rb") as f:
                held = f.read(self._media_bytes)
            data += held
            _write_atomic(self.media_path, data, durable=self._durable)
            self._media_hash = hashlib.sha256(data)
            self._media_bytes = len(data)
            return
        _append(self.media_path, data, self._media_bytes, durable=self._durable)
        self._media_hash.update(data)
        self._media_bytes += len(data)

    def _check_live(self) -> None:
        if not self.live:
            raise ValueError(f"recording {self.recording_id} was stopped at {self.stopped_at}")


def _write_atomic(path: Path, data: bytes, *, durable: bool) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _append(path: Path, data: bytes, size: int, *, durable: bool) -> None:
    """Append ``data`` to a file known to hold ``size`` bytes; on failure, cut it back."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except OSError:
        # Disk full half-way: leave the file as the manifest knows it, not with half
        # a segment that a later append would bury in the middle.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
