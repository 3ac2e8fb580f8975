"""The evidence store: where docked cameras offload their signed recordings.

* :mod:`.store`: :class:`EvidenceStore` (the Protocol) and :class:`DiskStore`, one folder
  per verified recording; nothing partial is ever listed.
* :mod:`.upload`: the resumable upload API a camera talks to (HTTP Basic with its own
  broker login; manifest first, chunks with ``Content-Range``, ``HEAD`` for the offset,
  commit verifies every SHA-256 and the signature and returns a receipt).
* :mod:`.service`: the store, the device keys and a ledger connection, shared by the
  upload API, the dispatch's evidence routes and retention.
* :mod:`.retention`: stored recordings not linked to a case go after 13 months.
* :mod:`.remux`: a stored H.264 recording as fragmented MP4 for a browser's player.

The camera side is :mod:`actimesh.devices.offload`.
"""

from actimesh.evidence.credentials import DeviceKeys, RegistryKeys, UploaderIdentity
from actimesh.evidence.remux import RemuxResult, playable_file, remux_to_mp4
from actimesh.evidence.retention import (
    EvidenceRetention,
    apply_evidence_retention,
    evidence_retention_loop,
)
from actimesh.evidence.service import EvidenceEvent, EvidenceFilter, EvidenceService
from actimesh.evidence.settings import EvidenceSettings
from actimesh.evidence.store import DiskStore, EvidenceStore, StoredRecording
from actimesh.evidence.upload import UPLOADS_PATH, Uploads, UploadServer, create_upload_app

__all__ = [
    "UPLOADS_PATH",
    "DeviceKeys",
    "DiskStore",
    "EvidenceEvent",
    "EvidenceFilter",
    "EvidenceRetention",
    "EvidenceService",
    "EvidenceSettings",
    "EvidenceStore",
    "RegistryKeys",
    "RemuxResult",
    "StoredRecording",
    "UploadServer",
    "UploaderIdentity",
    "Uploads",
    "apply_evidence_retention",
    "create_upload_app",
    "evidence_retention_loop",
    "playable_file",
    "remux_to_mp4",
]
