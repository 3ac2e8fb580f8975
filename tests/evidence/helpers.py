"""A real evidence store for tests: registry and ledger in a tmp dir, uvicorn on a free
loopback port, and signed recordings written by the camera's own RecordingStore."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actimesh.broker.messages import DeviceKind
from actimesh.devices.media import MediaFormat, Segment
from actimesh.devices.offload import Offloader
from actimesh.devices.recorder import ActivationRecord, RecordingOptions, RecordingStore
from actimesh.evidence import (
    DiskStore,
    EvidenceService,
    EvidenceSettings,
    RegistryKeys,
    Uploads,
    UploadServer,
    create_upload_app,
)
from actimesh.ledger import SqliteLedger
from actimesh.security.registry import DeviceCredentials, Registry
from tests.audit.helpers import DECISIONS, T0, activation

TS = MediaFormat(container="mpegts", extension="ts", concatenable=True)


@dataclass
class Env:
    """The parts of one running evidence store."""

    root: Path
    service: EvidenceService
    server: UploadServer
    creds: dict[str, DeviceCredentials]
    camera_root: Path

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite3"

    def client(self, device: str, password: str | None = None) -> httpx.AsyncClient:
        secret = self.creds[device].password if password is None else password
        return httpx.AsyncClient(
            base_url=self.server.url, auth=(device, secret), timeout=10.0, trust_env=False
        )

    def offloader(self, client: httpx.AsyncClient, device: str, **kw: object) -> Offloader:
        return Offloader(client, root=self.camera_root, device_id=device, backoff_s=0.01, **kw)  # type: ignore[arg-type]


def key_of(creds: DeviceCredentials) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(creds.private_key))


def record(
    root: Path,
    device: str,
    key: Ed25519PrivateKey,
    recording: str,
    aid: str | None,
    *,
    start: float = T0,
    sizes: tuple[int, ...] = (300_000, 200_000),
    one_file: bool = True,
) -> Path:
    """A stopped, signed recording on the camera (one ``recording.ts`` or one file a
    segment), attached to ``aid``; its folder."""
    options = RecordingOptions(media=TS if one_file else RecordingOptions().media, signing_key=key)
    store = RecordingStore(root, durable=False)
    rec = store.open(recording, device, start, device_kind=DeviceKind.BODY_CAM, options=options)
    segs = [
        Segment.of(i, start + 2.0 * i, start + 2.0 * (i + 1), bytes([i + 1]) * size)
        for i, size in enumerate(sizes)
    ]
    if aid is not None:
        rec.attach(
            ActivationRecord(aid, "e1", "taser_draw", "cew1", start, 30.0, 2.0, start), segs[:1]
        )
        for seg in segs[1:]:
            rec.append(seg)
    else:
        for seg in segs:
            rec.append(seg)
    rec.stop(start + 2.0 * len(sizes))
    return rec.path


@contextlib.asynccontextmanager
async def evidence_store(
    root: Path, settings: EvidenceSettings | None = None
) -> AsyncIterator[Env]:
    """Registry with cameras bwc1 and bwc2, a ledger with activations act-1..act-3 (in
    2020), and the upload API served by uvicorn; stopped on exit."""
    with Registry.open(root) as registry:
        creds = {d: registry.add(d, DeviceKind.BODY_CAM) for d in ("bwc1", "bwc2")}
    async with SqliteLedger(root / "ledger.sqlite3") as ledger:
        for n in (1, 2, 3):
            assert await ledger.record_activation(activation(n), DECISIONS)
    service = EvidenceService(
        store=DiskStore(root / "evidence"),
        staging=root / "evidence" / ".uploads",
        keys=RegistryKeys(root),
        ledger_location=root / "ledger.sqlite3",
        settings=settings or EvidenceSettings(max_chunk_bytes=256 * 1024),
    )
    async with service:
        server = UploadServer(
            create_upload_app(Uploads(service)),
            host="127.0.0.1",
            port=0,
            client_timeout_s=service.settings.client_timeout_s,
            max_clients=service.settings.max_clients,
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(server.run(), name="evidence-server")
            async with asyncio.timeout(15):
                await server.ready.wait()
            try:
                yield Env(root, service, server, creds, root / "camera")
            finally:
                task.cancel()
