"""The evidence service: the store, the uploads into it, and its records in the ledger.

One :class:`EvidenceService` per process holds a ledger connection of its own (appends
take the ledger's write lock like an engine replica would, so the chain stays
contiguous) and is shared by the device upload API (:mod:`.upload`), the dispatch's
evidence routes and retention (:mod:`.retention`). Its ledger records:

===================  ==================  ======================  ==========================
event_type           component           subject                 outcome
===================  ==================  ======================  ==========================
``evidence_upload``  ``evidence/store``  ``device/recording``    ``stored``, ``rejected``,
                                                                 ``refused``
``evidence_view``    ``dispatch/<id>``   the user or token       ``listed``, ``viewed``,
                                                                 ``played``
``evidence_download`` ``dispatch/<id>``  the user or token       ``started``
``retention_delete`` ``audit/retention`` ``device/recording``    ``deleted``
===================  ==================  ======================  ==========================

A body names the recording's first activation as ``aid`` when it has one, which ties
the record to the activation: it is exported with the case and kept as long as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from actimesh.devices.manifest import ManifestCheck, verify_manifest
from actimesh.errors import EvidenceError
from actimesh.evidence.credentials import DeviceKeys
from actimesh.evidence.settings import EvidenceSettings
from actimesh.evidence.store import EvidenceStore, StoredRecording
from actimesh.ledger import open_ledger

__all__ = ["STORE_COMPONENT", "EvidenceEvent", "EvidenceFilter", "EvidenceService"]

STORE_COMPONENT = "evidence/store"


class EvidenceEvent(StrEnum):
    """The ledger event types the evidence store and its viewers write."""

    UPLOAD = "evidence_upload"
    VIEW = "evidence_view"
    DOWNLOAD = "evidence_download"


class EvidenceFilter:
    """Which stored recordings a listing shows (every given condition must hold)."""

    def __init__(
        self,
        *,
        device_id: str | None = None,
        aid: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> None:
        self.device_id = device_id
        self.aid = aid
        self.since = since
        self.until = until

    def __call__(self, rec: StoredRecording) -> bool:
        return (
            (self.device_id is None or rec.device_id == self.device_id)
            and (self.aid is None or self.aid in rec.aids)
            and (self.since is None or rec.latest >= self.since)
            and (self.until is None or rec.started_at <= self.until)
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def aid_of(aids: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The ``aid`` member that ties a record to the recording's first activation."""
    return {"aid": aids[0]} if aids else {}


class EvidenceService:
    """The store, device keys and a ledger connection. ``async with EvidenceService(...)``."""

    def __init__(
        self,
        *,
        store: EvidenceStore,
        staging: Path,
        keys: DeviceKeys,
        ledger_location: Path | str,
        agency: str | None = None,
        settings: EvidenceSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.staging = staging
        self.keys = keys
        self.settings = settings or EvidenceSettings()
        self.clock = clock
        # create=False: the engine makes the ledger; an evidence store pointed at the wrong
        # data directory must say so rather than start an empty chain of its own.
        self.ledger = open_ledger(ledger_location, create=False, agency=agency)

    async def __aenter__(self) -> Self:
        await self.ledger.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ledger.__aexit__(*exc)

    async def record(
        self,
        event: EvidenceEvent,
        subject: str,
        outcome: str,
        body: Mapping[str, Any],
        *,
        component: str = STORE_COMPONENT,
    ) -> int:
        """Append one record; its seq. Raises LedgerError if it was not written."""
        return await self.ledger.record_event(
            component, event.value, subject[:256] or "-", outcome, body, at=self.clock()
        )

    async def list(self, where: EvidenceFilter | None = None) -> list[StoredRecording]:
        """Stored recordings matching ``where``, oldest first."""
        found = await asyncio.to_thread(self.store.recordings)
        chosen = [r for r in found if where is None or where(r)]
        return sorted(chosen, key=lambda r: (r.started_at, r.evidence_id))

    async def get(self, device_id: str, recording_id: str) -> StoredRecording:
        """One stored recording; :class:`EvidenceError` ``not_found`` if it is not."""
        found = await asyncio.to_thread(self.store.get, device_id, recording_id)
        if found is None:
            raise EvidenceError("not_found", f"no recording {device_id}/{recording_id} in store")
        return found

    async def verify(self, rec: StoredRecording) -> ManifestCheck:
        """Check a stored recording again: signature with the registered key, every hash."""

        def check() -> ManifestCheck:
            folder = self.store.local_path(rec.device_id, rec.recording_id)
            key = self.keys.public_key(rec.device_id)
            if folder is None:
                raise EvidenceError("not_found", f"recording {rec.evidence_id} is gone")
            if key is None:
                return ManifestCheck(folder, (f"device {rec.device_id} is not registered",))
            return verify_manifest(folder, key)

        return await asyncio.to_thread(check)
