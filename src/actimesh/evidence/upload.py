"""The resumable upload of a recording: its state on disk, and the checks at each step.

A camera sends the signed manifest first, then each file in chunks, then commits.
Creating checks the manifest's Ed25519 signature with the key the registry holds for
the authenticated device, that the manifest is that device's, that the recording has
stopped, and the sizes against the bounds of ``[evidence]``. Creating again with the
same manifest returns the same upload with its offsets (so a camera that lost the answer
resumes) or, once stored, the receipt. A chunk cut off mid-way keeps what arrived: the
offset says where to go on. Commit runs :func:`~actimesh.devices.manifest.verify_manifest`
on the staged folder, writes an ``evidence_upload`` record, and moves the folder into the
store in one rename; only then does the camera get the receipt and delete its copy.

Staging is ``<staging>/<upload_id>/`` on local disk, and the state of an upload is its
folder, so a restart loses nothing; unfinished uploads are removed after
``upload_expiry_s``. The HTTP side is :mod:`.upload_api`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from actimesh.broker.topics import is_identifier
from actimesh.devices.manifest import (
    MANIFEST_NAME,
    SIGNATURE_DOMAIN,
    ManifestCheck,
    canonical_json,
    verify_manifest,
)
from actimesh.errors import EvidenceError
from actimesh.evidence.credentials import UploaderIdentity
from actimesh.evidence.service import EvidenceEvent, EvidenceService, aid_of
from actimesh.evidence.store import RECEIPT_NAME, media_files, write_atomic
from actimesh.security.limiter import LoginLimiter

__all__ = ["UPLOADS_PATH", "OffsetConflictError", "Uploads", "parse_manifest"]

UPLOADS_PATH = "/api/v1/evidence/uploads"
_STATE = "upload.json"
_RESERVED = frozenset({MANIFEST_NAME, RECEIPT_NAME, _STATE})
_RANGE = re.compile(r"^bytes (\d{1,15})-(\d{1,15})/(\d{1,15})$")
#: A second PUT on the same file waits this long for the first to finish, then 409.
_LOCK_WAIT_S = 10.0


class OffsetConflictError(EvidenceError):
    """A chunk that does not start where the stored bytes end."""

    def __init__(self, name: str, offset: int) -> None:
        super().__init__(
            "conflict", f"{name}: the store holds {offset} bytes; send from there (HEAD says so)"
        )
        self.offset = offset


@dataclass(frozen=True, slots=True)
class _Upload:
    upload_id: str
    device_id: str
    recording_id: str
    manifest_sha256: str
    created: float
    files: dict[str, tuple[int, str]]
    folder: Path

    @property
    def subject(self) -> str:
        return f"{self.device_id}/{self.recording_id}"

    def state(self) -> dict[str, Any]:
        return {
            "upload_id": self.upload_id,
            "device_id": self.device_id,
            "recording_id": self.recording_id,
            "manifest_sha256": self.manifest_sha256,
            "created": self.created,
            "files": {name: [size, sha] for name, (size, sha) in self.files.items()},
        }

    def unsent(self) -> int:
        """Bytes the device has yet to send for this upload."""
        return sum(max(0, size - _size(self.folder / n)) for n, (size, _) in self.files.items())

    def offsets(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "bytes": size, "offset": _size(self.folder / name)}
            for name, (size, _sha) in sorted(self.files.items())
        ]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _load(folder: Path) -> _Upload | None:
    try:
        raw = json.loads((folder / _STATE).read_bytes())
        files = {str(n): (int(v[0]), str(v[1])) for n, v in raw["files"].items()}
        return _Upload(
            str(raw["upload_id"]),
            str(raw["device_id"]),
            str(raw["recording_id"]),
            str(raw["manifest_sha256"]),
            float(raw["created"]),
            files,
            folder,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two readers may keep different copies: whose recording is it?
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def parse_manifest(data: bytes) -> Any:
    """The manifest's JSON, read strictly: a file meant for court must mean one thing to
    every reader, so duplicate keys, NaN and infinities are refused, and so is nesting
    deeper than the parser can follow (``bad_request``, with the reason)."""
    try:
        return json.loads(
            data, object_pairs_hook=_object, parse_constant=_constant, parse_float=_number
        )
    except RecursionError:
        raise EvidenceError("bad_request", "the manifest nests too deeply") from None
    except ValueError as exc:
        raise EvidenceError("bad_request", f"the body is not a manifest (JSON): {exc}") from exc


def _signature_problem(
    manifest: Mapping[str, Any], key: Ed25519PublicKey, device: str
) -> str | None:
    sig = manifest.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519":
        return f"the manifest is not signed with an Ed25519 device key; {device} must sign it"
    signed = SIGNATURE_DOMAIN + canonical_json(
        {k: v for k, v in manifest.items() if k != "signature"}
    )
    try:
        key.verify(bytes.fromhex(str(sig.get("value"))), signed)
    except (InvalidSignature, ValueError):
        return (
            f"the manifest's signature does not verify with the key registered for {device} "
            "(changed, signed by another device, or signed before a key rotation)"
        )
    return None


class Uploads:
    """The upload protocol's state and checks, over an :class:`EvidenceService`."""

    def __init__(self, service: EvidenceService) -> None:
        self.service = service
        self.staging = service.staging
        s = service.settings
        self.limiter = LoginLimiter(
            per_user=s.auth_max_failures,
            per_client=s.auth_max_failures_per_client,
            window_s=s.auth_window_s,
        )
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _refuse(
        self, who: UploaderIdentity, subject: str, reason: str, error: str, body: Mapping[str, Any]
    ) -> EvidenceError:
        """Record a refused upload (a security event) and return the error to raise."""
        await self.service.record(
            EvidenceEvent.UPLOAD,
            subject,
            "refused",
            {"uploaded_by": who.device_id, "error": error, **body},
        )
        return EvidenceError(reason, error)

    # ------------------------------------------------------------------ create
    async def create(self, who: UploaderIdentity, data: bytes) -> dict[str, Any]:
        """Start (or find) the upload of the recording ``data`` (its manifest) describes."""
        settings = self.service.settings
        if len(data) > settings.max_manifest_bytes:
            raise EvidenceError(
                "too_large", f"the manifest is over {settings.max_manifest_bytes} bytes"
            )
        manifest = parse_manifest(data)
        if not isinstance(manifest, dict):
            raise EvidenceError(
                "bad_request", "the body must be the recording's manifest.json object"
            )
        device, recording = manifest.get("device_id"), manifest.get("recording_id")
        if not (isinstance(recording, str) and is_identifier(recording)):
            raise EvidenceError("invalid", f"recording_id {recording!r} is not a valid identifier")
        subject = f"{who.device_id}/{recording}"
        if device != who.device_id:
            error = (
                f"the manifest is device {device!r}'s; {who.device_id} may only upload its "
                "own recordings"
            )
            raise await self._refuse(
                who, subject, "forbidden", error, {"manifest_device": str(device)[:64]}
            )
        aids = tuple(
            str(a.get("aid")) for a in manifest.get("activations") or () if isinstance(a, dict)
        )
        problem = _signature_problem(manifest, who.public_key, who.device_id)
        if problem is not None:
            raise await self._refuse(
                who, subject, "forbidden", problem, {"recording_id": recording, **aid_of(aids)}
            )
        if manifest.get("stopped_at") is None:
            raise EvidenceError(
                "conflict", f"recording {recording} is still live; offload it once stopped"
            )
        try:
            files = media_files(manifest)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EvidenceError(
                "invalid", f"the manifest does not list its files: {exc!r}"
            ) from exc
        for name, (size, _sha) in files.items():
            if not is_identifier(name) or name in _RESERVED or size < 0:
                raise EvidenceError(
                    "invalid", f"the manifest lists a file {name!r} the store cannot take"
                )
        total = sum(size for size, _ in files.values())
        if total > settings.max_upload_bytes:
            raise EvidenceError(
                "too_large",
                f"recording {recording} is {total} bytes; the store "
                f"takes at most {settings.max_upload_bytes} (evidence.max_upload_bytes)",
            )
        sha = hashlib.sha256(data).hexdigest()
        async with self._lock(subject):
            return await asyncio.to_thread(self._open, who.device_id, recording, sha, data, files)

    def _open(
        self, device: str, recording: str, sha: str, data: bytes, files: dict[str, tuple[int, str]]
    ) -> dict[str, Any]:
        stored = self.service.store.get(device, recording)
        if stored is not None:
            if stored.receipt.get("manifest_sha256") == sha:
                return {"state": "stored", "receipt": dict(stored.receipt)}
            raise EvidenceError(
                "conflict",
                f"recording {device}/{recording} is already stored "
                "with a different manifest; it is not replaced",
            )
        settings = self.service.settings
        mine = 0
        pending = 0  # bytes every open upload still has to send
        for up in self._uploads():
            pending += up.unsent()
            if (up.device_id, up.recording_id) != (device, recording):
                mine += up.device_id == device
                continue
            if up.manifest_sha256 == sha:
                return self._uploading(up)
            shutil.rmtree(up.folder, ignore_errors=True)  # superseded by a newer manifest
        if mine >= settings.max_open_uploads:
            raise EvidenceError(
                "too_many",
                f"{device} already has {mine} unfinished uploads "
                f"(evidence.max_open_uploads); finish or let one expire first",
            )
        self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        total = sum(size for size, _ in files.values())
        free = shutil.disk_usage(self.staging).free
        if total + pending + settings.min_free_bytes > free:
            raise EvidenceError(
                "insufficient_storage",
                f"recording {recording} needs {total} bytes and open uploads {pending} "
                f"more, but the store has {free} free and keeps {settings.min_free_bytes} "
                "spare (evidence.min_free_bytes); try again later",
            )
        upload_id = secrets.token_hex(16)
        folder = self.staging / upload_id
        folder.mkdir(mode=0o700)
        up = _Upload(upload_id, device, recording, sha, self.service.clock(), files, folder)
        write_atomic(folder / MANIFEST_NAME, data)
        write_atomic(folder / _STATE, json.dumps(up.state()).encode())
        return self._uploading(up)

    def _uploading(self, up: _Upload) -> dict[str, Any]:
        return {
            "state": "uploading",
            "upload_id": up.upload_id,
            "files": up.offsets(),
            "max_chunk_bytes": self.service.settings.max_chunk_bytes,
        }

    def _uploads(self) -> Iterator[_Upload]:
        if not self.staging.is_dir():
            return
        for folder in self.staging.iterdir():
            up = _load(folder) if folder.is_dir() else None
            if up is not None:
                yield up

    async def _get(self, who: UploaderIdentity, upload_id: str) -> _Upload:
        up = None
        if re.fullmatch(r"[0-9a-f]{32}", upload_id):
            up = await asyncio.to_thread(_load, self.staging / upload_id)
        if up is None or up.device_id != who.device_id:
            # Another device's upload is as unknown as a missing one.
            raise EvidenceError(
                "not_found",
                f"no upload {upload_id!r}; create it again (POST {UPLOADS_PATH} with the manifest)",
            )
        return up

    @staticmethod
    def _file(up: _Upload, name: str) -> tuple[int, str]:
        found = up.files.get(name)
        if found is None:
            raise EvidenceError("not_found", f"the manifest of {up.subject} lists no file {name!r}")
        return found

    # ------------------------------------------------------------------ chunks
    async def offset(self, who: UploaderIdentity, upload_id: str, name: str) -> tuple[int, int]:
        """(bytes held, the file's size)."""
        up = await self._get(who, upload_id)
        size, _sha = self._file(up, name)
        return _size(up.folder / name), size

    async def write(
        self,
        who: UploaderIdentity,
        upload_id: str,
        name: str,
        content_range: str,
        chunks: AsyncIterator[bytes],
    ) -> int:
        """Append one chunk at the offset ``content_range`` names; the new offset.

        A chunk cut off (the camera undocked) keeps what arrived; the caller's
        ClientDisconnect propagates after it is flushed.
        """
        up = await self._get(who, upload_id)
        size, _sha = self._file(up, name)
        match = _RANGE.fullmatch(content_range.strip())
        if match is None:
            raise EvidenceError("bad_request", "send Content-Range: bytes START-END/TOTAL")
        start, end, total = (int(g) for g in match.groups())
        length = end - start + 1
        if total != size or end < start or end >= total:
            raise EvidenceError(
                "bad_request",
                f"Content-Range {content_range!r} does not fit {name} of {size} bytes",
            )
        limit = self.service.settings.max_chunk_bytes
        if length > limit:
            raise EvidenceError(
                "too_large", f"a chunk may be at most {limit} bytes; send smaller ones"
            )
        lock = self._lock(f"{upload_id}/{name}")
        try:
            async with asyncio.timeout(_LOCK_WAIT_S):
                await lock.acquire()
        except TimeoutError:
            raise EvidenceError(
                "conflict",
                f"{name} is being written by another request; HEAD it and go on from its offset",
            ) from None
        try:
            path = up.folder / name
            held = await asyncio.to_thread(_size, path)
            if start != held:
                raise OffsetConflictError(name, held)
            return await self._append(path, start, length, chunks)
        finally:
            lock.release()

    @staticmethod
    async def _append(path: Path, start: int, length: int, chunks: AsyncIterator[bytes]) -> int:
        fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        written = 0
        try:
            async for piece in chunks:
                if written + len(piece) > length:
                    # The chunk is not what its header says: keep none of it.
                    await asyncio.to_thread(os.ftruncate, fd, start)
                    raise EvidenceError("bad_request", "the body is longer than its Content-Range")
                await asyncio.to_thread(_write_all, fd, piece)
                written += len(piece)
            if written != length:
                raise EvidenceError(
                    "bad_request",
                    f"the body has {written} bytes, its "
                    f"Content-Range {length}; HEAD and send the rest",
                )
        finally:
            await asyncio.to_thread(_close, fd)
        return start + written

    # ------------------------------------------------------------------ commit
    async def commit(self, who: UploaderIdentity, upload_id: str) -> dict[str, Any]:
        """Verify the staged recording, record it, store it; the receipt."""
        up = await self._get(who, upload_id)
        async with self._lock(up.subject):
            return await self._commit(who, up)

    async def _commit(self, who: UploaderIdentity, up: _Upload) -> dict[str, Any]:
        for name, (size, _sha) in up.files.items():
            held = await asyncio.to_thread(_size, up.folder / name)
            if size == 0 and held == 0:
                await asyncio.to_thread((up.folder / name).touch, 0o600)
            elif held != size:
                raise EvidenceError(
                    "conflict",
                    f"{name} has {held} of {size} bytes; send the rest before committing",
                )
        check = await asyncio.to_thread(self._verify, up, who)
        manifest = check.manifest or {}
        aids = [str(a["aid"]) for a in manifest.get("activations") or ()]
        body: dict[str, Any] = {
            "device_id": up.device_id,
            "recording_id": up.recording_id,
            "aids": aids,
            **aid_of(aids),
            "upload_id": up.upload_id,
            "uploaded_by": who.device_id,
            "manifest_sha256": up.manifest_sha256,
            "files": {n: {"bytes": s, "sha256": h} for n, (s, h) in sorted(up.files.items())},
            "bytes": sum(s for s, _ in up.files.values()),
        }
        if not check.ok:
            body["problems"] = list(check.problems[:10])
            await self.service.record(EvidenceEvent.UPLOAD, up.subject, "rejected", body)
            await asyncio.to_thread(shutil.rmtree, up.folder, True)
            raise EvidenceError(
                "invalid",
                f"recording {up.subject} refused: {check.problems[0]}; the camera keeps its copy",
            )
        if await asyncio.to_thread(self.service.store.get, up.device_id, up.recording_id):
            raise EvidenceError("conflict", f"recording {up.subject} is already stored")
        seq = await self.service.record(EvidenceEvent.UPLOAD, up.subject, "stored", body)
        receipt = {
            **body,
            "evidence_id": up.subject,
            "ledger_seq": seq,
            "stored_at": self.service.clock(),
            "verified": True,
        }
        await asyncio.to_thread(self._store, up, receipt)
        return receipt

    def _verify(self, up: _Upload, who: UploaderIdentity) -> ManifestCheck:
        return verify_manifest(up.folder, who.public_key)

    def _store(self, up: _Upload, receipt: Mapping[str, Any]) -> None:
        (up.folder / _STATE).unlink()
        write_atomic(up.folder / RECEIPT_NAME, json.dumps(receipt, sort_keys=True).encode())
        self.service.store.put(up.folder, up.device_id, up.recording_id)

    async def expire(self) -> int:
        """Remove unfinished uploads older than ``upload_expiry_s``; how many."""
        cutoff = self.service.clock() - self.service.settings.upload_expiry_s

        def sweep() -> int:
            gone = 0
            for up in list(self._uploads()):
                if up.created < cutoff:
                    shutil.rmtree(up.folder, ignore_errors=True)
                    gone += 1
            return gone

        return await asyncio.to_thread(sweep)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
