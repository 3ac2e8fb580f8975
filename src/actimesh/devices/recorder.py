"""Committed recordings on the camera's local disk.

Each recording is a folder ``root/<device_id>/<recording_id>/`` holding one file per
segment (``000042.seg``) and a ``manifest.json`` that says what the recording is: the
activations that asked for it, when it started and stopped, and every segment with its
SHA-256. Footage is uploaded at the end of the shift, so this folder *is* the evidence
until then; it is written so that a crash or power cut leaves it readable:

* every file is written to a temporary name and moved into place with ``os.replace``,
  so a reader never sees half a manifest or half a segment;
* segment files are written before the manifest that lists them, so every segment the
  manifest names exists;
* the manifest is rewritten when an activation is attached, when the recording stops,
  and every ``manifest_every`` segments while live: a crash loses at most that many
  segments from the manifest (the segment files themselves are on disk).

Nothing here decides *what* to record; that is :class:`~actimesh.devices.camera.Camera`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from actimesh.broker.messages import DeviceKind
from actimesh.broker.topics import IDENTIFIER_PATTERN, is_identifier
from actimesh.devices.media import Segment

__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "MANIFEST_NAME",
    "ActivationRecord",
    "Recording",
    "RecordingStore",
    "StopCause",
    "segment_file_name",
]

MANIFEST_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_TMP_SUFFIX = ".tmp"
# Police video: readable by the camera's own user only; the uploader runs as that user.
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class StopCause(StrEnum):
    """Why a recording ended. The mesh never stops a recording."""

    OFFICER = "officer"  # the officer stopped it on the camera
    POWER_OFF = "power_off"  # the camera was switched off (or lost power) while recording


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
    """The file name of segment ``seq`` inside a recording folder."""
    return f"{seq:06d}.seg"


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
    ) -> Recording:
        """Create a new, live recording and write its first manifest.

        ``started_at`` is the start of the recording's first segment (the earliest
        moment it will hold); segments committed later may only extend it backwards.
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
        )
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
    ) -> None:
        self.path = path
        self.recording_id = recording_id
        self.device_id = device_id
        self.device_kind = device_kind
        self._planned_start = started_at
        self._manifest_every = manifest_every
        self._durable = durable
        self._segments: list[Segment] = []
        self._activations: list[ActivationRecord] = []
        self._unlisted = 0  # segments written since the manifest was last rewritten
        self.stopped_at: float | None = None
        self.stopped_by: StopCause | None = None

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
    def segments(self) -> tuple[Segment, ...]:
        """Every segment committed so far, in order."""
        return tuple(self._segments)

    @property
    def activations(self) -> tuple[ActivationRecord, ...]:
        """Every activation attached so far, in the order they arrived."""
        return tuple(self._activations)

    def manifest(self) -> dict[str, Any]:
        """The manifest as it would be written now."""
        return {
            "format_version": MANIFEST_FORMAT_VERSION,
            "recording_id": self.recording_id,
            "device_id": self.device_id,
            "device_kind": None if self.device_kind is None else self.device_kind.value,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "stopped_by": None if self.stopped_by is None else self.stopped_by.value,
            "activations": [a.to_json() for a in self._activations],
            "segments": [
                {
                    "seq": s.seq,
                    "start": s.start,
                    "end": s.end,
                    "file": segment_file_name(s.seq),
                    "sha256": s.sha256,
                    "bytes": len(s.data),
                }
                for s in self._segments
            ],
        }

    # ------------------------------------------------------------------ writing
    def append(self, seg: Segment) -> None:
        """Write the next live segment; rewrite the manifest every ``manifest_every``."""
        self._check_live()
        if self._segments and seg.seq <= self._segments[-1].seq:
            raise ValueError(
                f"segment {seg.seq} does not follow segment {self._segments[-1].seq} "
                f"in recording {self.recording_id}"
            )
        self._write_segment(seg)
        self._segments.append(seg)
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
        for seg in earlier:
            self._write_segment(seg)
        self._segments[:0] = earlier
        self._activations.append(activation)
        self.write_manifest()

    def stop(self, now: float, by: StopCause = StopCause.OFFICER) -> None:
        """End the recording at ``now`` and write the final manifest."""
        self._check_live()
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now!r}")
        self.stopped_at = now
        self.stopped_by = by
        self.write_manifest()

    def write_manifest(self) -> None:
        """Rewrite ``manifest.json`` atomically (and durably unless the store says not)."""
        data = json.dumps(self.manifest(), allow_nan=False, separators=(",", ":")) + "\n"
        _write_atomic(self.manifest_path, data.encode(), durable=self._durable)
        if self._durable:
            # The renames of the segment files and of the manifest live in the directory:
            # flush it too, or a power cut may forget files the manifest names.
            _fsync_dir(self.path)
        self._unlisted = 0

    def _write_segment(self, seg: Segment) -> None:
        _write_atomic(self.path / segment_file_name(seg.seq), seg.data, durable=self._durable)

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
