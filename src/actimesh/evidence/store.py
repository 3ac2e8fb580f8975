"""Where offloaded recordings are kept once they verified: the evidence store.

:class:`EvidenceStore` is what the upload service, the dispatch and retention use;
:class:`DiskStore` keeps recordings on local disk, one folder per recording::

    root/<device_id>/<recording_id>/manifest.json   as the camera signed it
                                    recording.ts    (or 000001.seg, ... one a segment)
                                    receipt.json    what the store confirmed to the camera

A recording arrives as a complete, verified folder staged elsewhere (uploads are always
staged on local disk, since the signature and every hash are checked on the bytes) and
is moved into place with one ``rename``: a folder without ``receipt.json`` is never
listed, so nothing partial is ever evidence. Deletion hides the folder first
(``.<recording>.deleting``, atomic), lets the caller record it, then removes it.

An S3-compatible store would implement the same Protocol (``put`` uploading the staged
folder, ``open_file`` streaming an object); it is not part of this release.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from actimesh.broker.topics import is_identifier
from actimesh.devices.manifest import MANIFEST_NAME
from actimesh.errors import EvidenceError

__all__ = [
    "RECEIPT_NAME",
    "DiskStore",
    "EvidenceStore",
    "StoredRecording",
    "fsync_dir",
    "media_files",
    "write_atomic",
]

RECEIPT_NAME = "receipt.json"
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_TOMBSTONE = re.compile(r"^\.(.+)\.deleting$")


def media_files(manifest: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """The files a manifest lists: name to (bytes, SHA-256).

    One file for a recording whose segments concatenate, else one file a segment.
    Raises KeyError/TypeError/ValueError on a malformed manifest.
    """
    media = manifest["media"]
    if media.get("file") is not None:
        return {str(media["file"]): (int(media["bytes"]), str(media["sha256"]))}
    return {str(s["file"]): (int(s["bytes"]), str(s["sha256"])) for s in manifest["segments"]}


@dataclass(frozen=True, slots=True)
class StoredRecording:
    """One recording in the store, as its manifest and its receipt describe it."""

    device_id: str
    recording_id: str
    manifest: Mapping[str, Any]
    receipt: Mapping[str, Any]

    @property
    def evidence_id(self) -> str:
        """``device/recording``: how the ledger and the API name it."""
        return f"{self.device_id}/{self.recording_id}"

    @property
    def aids(self) -> tuple[str, ...]:
        """The activations the camera attached it to (from the signed manifest)."""
        return tuple(str(a["aid"]) for a in self.manifest.get("activations") or ())

    @property
    def started_at(self) -> float:
        return float(self.manifest.get("started_at") or 0.0)

    @property
    def latest(self) -> float:
        """The newest moment it holds: when it stopped (or its last segment ended)."""
        times = [self.manifest.get("started_at"), self.manifest.get("stopped_at")]
        times += [s.get("end") for s in self.manifest.get("segments") or ()]
        return max((float(t) for t in times if isinstance(t, int | float)), default=0.0)

    @property
    def files(self) -> dict[str, tuple[int, str]]:
        return media_files(self.manifest)

    @property
    def size(self) -> int:
        return sum(size for size, _ in self.files.values())


class EvidenceStore(Protocol):
    """Verified recordings at rest. Methods block (disk or network): call them in a thread."""

    def put(self, staged: Path, device_id: str, recording_id: str) -> StoredRecording:
        """Take a complete, verified folder (manifest, media, receipt) as one recording.

        Raises :class:`EvidenceError` ``conflict`` if that recording is already stored.
        """
        ...

    def get(self, device_id: str, recording_id: str) -> StoredRecording | None:
        """One stored recording, or None."""
        ...

    def recordings(self) -> list[StoredRecording]:
        """Every stored recording (never an upload in progress, never a hidden one)."""
        ...

    def open_file(self, device_id: str, recording_id: str, name: str) -> BinaryIO:
        """One of a stored recording's files, for reading. ``not_found`` if not listed."""
        ...

    def local_path(self, device_id: str, recording_id: str) -> Path | None:
        """A local folder holding the recording (to verify it), or None if not stored."""
        ...

    def hide(self, device_id: str, recording_id: str) -> bool:
        """Take it out of the listing, atomically, before its deletion is recorded."""
        ...

    def restore(self, device_id: str, recording_id: str) -> None:
        """Undo :meth:`hide` (the deletion could not be recorded)."""
        ...

    def purge(self, device_id: str, recording_id: str) -> None:
        """Remove a hidden recording for good."""
        ...

    def hidden(self) -> list[tuple[str, str]]:
        """(device, recording) hidden but not purged: an interrupted deletion."""
        ...


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary name, durably."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _check_ids(device_id: str, recording_id: str) -> None:
    # Both become path components: the identifier pattern keeps them inside the root.
    for label, value in (("device id", device_id), ("recording id", recording_id)):
        if not is_identifier(value):
            raise EvidenceError("not_found", f"no such recording: bad {label} {value!r}")


class DiskStore:
    """:class:`EvidenceStore` on local disk under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _folder(self, device_id: str, recording_id: str) -> Path:
        _check_ids(device_id, recording_id)
        return self.root / device_id / recording_id

    def put(self, staged: Path, device_id: str, recording_id: str) -> StoredRecording:
        target = self._folder(device_id, recording_id)
        if not (staged / RECEIPT_NAME).is_file():
            raise EvidenceError("invalid", f"{staged} has no receipt: it was not verified")
        target.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        if target.exists() or target.with_name(f".{recording_id}.deleting").exists():
            raise EvidenceError(
                "conflict", f"recording {device_id}/{recording_id} is already in the store"
            )
        for entry in staged.iterdir():
            with entry.open("rb") as f:
                os.fsync(f.fileno())
        fsync_dir(staged)
        # One rename: the recording appears whole, receipt included, or not at all.
        staged.rename(target)
        fsync_dir(target.parent)
        fsync_dir(staged.parent)
        found = self.get(device_id, recording_id)
        if found is None:  # pragma: no cover - we just put it there
            raise EvidenceError("unavailable", f"{target} vanished after it was stored")
        return found

    def get(self, device_id: str, recording_id: str) -> StoredRecording | None:
        try:
            folder = self._folder(device_id, recording_id)
        except EvidenceError:
            return None
        return _read(device_id, folder)

    def recordings(self) -> list[StoredRecording]:
        out: list[StoredRecording] = []
        if not self.root.is_dir():
            return out
        for device in sorted(self.root.iterdir()):
            if not device.is_dir() or not is_identifier(device.name):
                continue  # .uploads and anything else that is not a device folder
            for folder in sorted(device.iterdir()):
                if folder.is_dir() and is_identifier(folder.name):
                    found = _read(device.name, folder)
                    if found is not None:
                        out.append(found)
        return out

    def open_file(self, device_id: str, recording_id: str, name: str) -> BinaryIO:
        found = self.get(device_id, recording_id)
        if found is None or name not in found.files:
            raise EvidenceError(
                "not_found", f"no file {name!r} in recording {device_id}/{recording_id}"
            )
        return (self.root / device_id / recording_id / name).open("rb")

    def local_path(self, device_id: str, recording_id: str) -> Path | None:
        found = self.get(device_id, recording_id)
        return None if found is None else self.root / device_id / recording_id

    def hide(self, device_id: str, recording_id: str) -> bool:
        folder = self._folder(device_id, recording_id)
        try:
            folder.rename(folder.with_name(f".{recording_id}.deleting"))
        except FileNotFoundError:
            return False
        fsync_dir(folder.parent)
        return True

    def restore(self, device_id: str, recording_id: str) -> None:
        folder = self._folder(device_id, recording_id)
        folder.with_name(f".{recording_id}.deleting").rename(folder)

    def purge(self, device_id: str, recording_id: str) -> None:
        folder = self._folder(device_id, recording_id)
        shutil.rmtree(folder.with_name(f".{recording_id}.deleting"))
        with contextlib.suppress(OSError):
            fsync_dir(folder.parent)

    def hidden(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not self.root.is_dir():
            return out
        for device in sorted(self.root.iterdir()):
            if device.is_dir() and is_identifier(device.name):
                for entry in sorted(device.iterdir()):
                    match = _TOMBSTONE.fullmatch(entry.name)
                    if match and is_identifier(match[1]):
                        out.append((device.name, match[1]))
        return out


def _read(device_id: str, folder: Path) -> StoredRecording | None:
    """A stored recording, or None if the folder is not one (no receipt: not evidence)."""
    try:
        receipt = json.loads((folder / RECEIPT_NAME).read_bytes())
        manifest = json.loads((folder / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(receipt, dict) or not isinstance(manifest, dict):
        return None
    return StoredRecording(device_id, folder.name, manifest, receipt)
