"""End-of-shift offload: a docked camera uploads its stopped recordings to the evidence store.

For each stopped recording in the camera's :class:`~actimesh.devices.recorder.RecordingStore`
(``root/<device>/<recording>/``), oldest first, the uploader (protocol in
:mod:`actimesh.evidence.upload_api`):

1. hashes every file the manifest lists (SHA-256), and leaves a recording whose own
   files do not match its manifest where it is, reported;
2. creates the upload with the signed manifest (again, after a cut: the store answers
   with the same upload and how much of each file it holds);
3. sends each file from the store's offset in chunks; a connection cut mid-file is
   retried with backoff from the offset ``HEAD`` reports;
4. commits; the store verifies the signature and every hash and answers with a receipt.

The local copy is deleted only when the receipt names this recording, the SHA-256 of
the manifest as sent, and every file with the SHA-256 computed here. It is renamed to
``.<recording>.offloaded`` first and then removed, so a crash never leaves half a
recording that looks whole. A refused recording stays on the camera.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from actimesh.broker.topics import is_identifier
from actimesh.devices.manifest import MANIFEST_NAME
from actimesh.errors import EvidenceError

__all__ = ["OffloadReport", "Offloader", "local_files"]

log = logging.getLogger(__name__)

UPLOADS_PATH = "/api/v1/evidence/uploads"
_PIECE = 256 * 1024


def local_files(folder: Path, manifest: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """Every file the manifest lists, as found on disk: name to (bytes, SHA-256)."""
    media = manifest["media"]
    names = (
        [media["file"]]
        if media.get("file") is not None
        else [s["file"] for s in manifest["segments"]]
    )
    out: dict[str, tuple[int, str]] = {}
    for name in names:
        digest = hashlib.sha256()
        size = 0
        with (folder / name).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        out[str(name)] = (size, digest.hexdigest())
    return out


@dataclass(slots=True)
class OffloadReport:
    """What one :meth:`Offloader.run` did."""

    #: ``recording id`` to its receipt, for those stored and deleted here.
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``recording id`` to why it stays on the camera.
    kept: dict[str, str] = field(default_factory=dict)
    bytes_sent: int = 0
    retries: int = 0


class Offloader:
    """Uploads one device's stopped recordings with ``client`` (its base URL the store's,
    its auth the device's Basic login). Resumable; see the module docstring."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        root: Path,
        device_id: str,
        chunk_bytes: int = 4 << 20,
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
    ) -> None:
        if not is_identifier(device_id):
            raise EvidenceError("invalid", f"device id {device_id!r} is not a valid identifier")
        self.client = client
        self.folder = Path(root) / device_id
        self.device_id = device_id
        self.chunk_bytes = chunk_bytes
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s

    async def run(self) -> OffloadReport:
        """Offload every stopped recording; a refused one is kept and reported."""
        report = OffloadReport()
        for folder in await asyncio.to_thread(self._recordings):
            try:
                receipt = await self.offload(folder, report)
            except EvidenceError as exc:
                report.kept[folder.name] = str(exc)
                log.warning("offload: %s kept on the camera: %s", folder.name, exc)
                continue
            if receipt is not None:
                report.stored[folder.name] = receipt
        return report

    def _recordings(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and is_identifier(p.name))

    async def offload(self, folder: Path, report: OffloadReport) -> dict[str, Any] | None:
        """Offload one recording folder; its receipt, or None if it is still recording."""
        data = await asyncio.to_thread((folder / MANIFEST_NAME).read_bytes)
        manifest = json.loads(data)
        if manifest.get("stopped_at") is None:
            return None
        try:
            local = await asyncio.to_thread(local_files, folder, manifest)
        except (OSError, KeyError, TypeError) as exc:
            raise EvidenceError(
                "invalid", f"{folder.name}: its files cannot be read: {exc}"
            ) from exc
        answer = await self._call(
            "POST", UPLOADS_PATH, content=data, headers={"Content-Type": "application/json"}
        )
        body = answer.json()
        if body.get("state") != "stored":
            upload = f"{UPLOADS_PATH}/{body['upload_id']}"
            chunk = min(self.chunk_bytes, int(body.get("max_chunk_bytes") or self.chunk_bytes))
            for entry in body["files"]:
                await self._send(
                    folder,
                    upload,
                    entry["name"],
                    size=int(entry["bytes"]),
                    chunk=chunk,
                    report=report,
                )
            body = {"receipt": (await self._call("POST", f"{upload}/commit")).json()}
        receipt: dict[str, Any] = body["receipt"]
        self._check(folder.name, receipt, hashlib.sha256(data).hexdigest(), local)
        await asyncio.to_thread(_delete, folder)
        return receipt

    def _check(
        self,
        recording: str,
        receipt: Mapping[str, Any],
        manifest_sha: str,
        local: Mapping[str, tuple[int, str]],
    ) -> None:
        confirmed = {
            n: (int(f["bytes"]), str(f["sha256"])) for n, f in receipt.get("files", {}).items()
        }
        if (
            receipt.get("device_id") != self.device_id
            or receipt.get("recording_id") != recording
            or receipt.get("manifest_sha256") != manifest_sha
            or confirmed != dict(local)
        ):
            raise EvidenceError(
                "invalid",
                f"{recording}: the store's receipt does not match the "
                "files on the camera; keeping them",
            )

    async def _send(
        self, folder: Path, upload: str, name: str, *, size: int, chunk: int, report: OffloadReport
    ) -> None:
        url = f"{upload}/files/{name}"
        for attempt in range(self.attempts):
            try:
                head = await self.client.head(url, timeout=self.timeout_s)
                _raise_for(head)
                offset = int(head.headers["Upload-Offset"])
                while offset < size:
                    end = min(offset + chunk, size) - 1
                    put = await self.client.put(
                        url,
                        content=_read(folder / name, offset, end + 1),
                        headers={
                            "Content-Range": f"bytes {offset}-{end}/{size}",
                            "Content-Length": str(end + 1 - offset),
                        },
                        timeout=self.timeout_s,
                    )
                    if put.status_code == httpx.codes.CONFLICT and "Upload-Offset" in put.headers:
                        offset = int(put.headers["Upload-Offset"])
                        continue
                    _raise_for(put)
                    report.bytes_sent += end + 1 - offset
                    offset = int(put.json()["offset"])
            except httpx.TransportError as exc:
                if attempt + 1 >= self.attempts:
                    raise EvidenceError(
                        "unavailable",
                        f"{name}: the store cannot be reached ({exc}); offload again when docked",
                    ) from exc
                report.retries += 1
                await asyncio.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
            else:
                return

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.attempts):
            try:
                response = await self.client.request(method, url, timeout=self.timeout_s, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 >= self.attempts:
                    raise EvidenceError(
                        "unavailable",
                        f"the evidence store cannot be reached ({exc}); offload again when docked",
                    ) from exc
                await asyncio.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
                continue
            _raise_for(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = str(response.json().get("error"))
    except ValueError:
        error = response.text[:200]
    raise EvidenceError("refused", f"the store answered {response.status_code}: {error}")


async def _read(path: Path, start: int, stop: int) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = stop - start
        while left > 0:
            piece = await asyncio.to_thread(f.read, min(_PIECE, left))
            if not piece:
                raise EvidenceError("invalid", f"{path.name} shrank while being sent")
            left -= len(piece)
            yield piece


def _delete(folder: Path) -> None:
    gone = folder.with_name(f".{folder.name}.offloaded")
    folder.rename(gone)
    shutil.rmtree(gone)
