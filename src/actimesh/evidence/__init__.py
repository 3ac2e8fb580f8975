"""The evidence store: where docked cameras offload their signed recordings.

* :mod:`.store`: :class:`EvidenceStore` (the Protocol) and :class:`DiskStore`, one folder
  per verified recording; nothing partial is ever listed.
* :mod:`.upload`: the resumable upload of one recording, its state and checks (manifest
  first, then chunks at the offset the store holds; commit verifies every SHA-256 and the
  signature and returns a receipt).
* :mod:`.upload_api`: that protocol over HTTP, as a camera talks to it (HTTP Basic with
  its own broker login, chunks with ``Content-Range``, ``HEAD`` for the offset).
* :mod:`.upload_server`: the upload API on its own listener.
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
from actimesh.evidence.upload import UPLOADS_PATH, Uploads
from actimesh.evidence.upload_api import create_upload_app
from actimesh.evidence.upload_server import UploadServer

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
