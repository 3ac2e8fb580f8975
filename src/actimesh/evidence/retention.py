"""Retention of stored evidence: not linked to a case, gone after ``retention_days``.

A stored recording is deleted when its newest footage is older than the cutoff and
none of its activations (from its signed manifest, and from the acknowledgements that
name it) is linked to a case (``actimesh audit link``). A case-linked recording is kept.

Each deletion is a ``retention_delete`` record (``kind: "evidence"``, with the manifest's
SHA-256, the files and the size): the ledger never redacts those, so the proof of a
deletion outlives it. The recording is hidden first, then recorded, then removed: a
crash leaves a hidden folder that the next run finishes, never an unrecorded deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from actimesh.errors import LedgerError
from actimesh.evidence.service import EvidenceService
from actimesh.evidence.store import StoredRecording
from actimesh.ledger import EventType, format_time

__all__ = ["EvidenceRetention", "apply_evidence_retention", "evidence_retention_loop"]

log = logging.getLogger(__name__)
_DAY_S = 86_400.0


@dataclass(slots=True)
class EvidenceRetention:
    """What :func:`apply_evidence_retention` did (or would do, on a dry run)."""

    cutoff: float
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    #: ``device/recording`` kept because an activation of it is linked to a case.
    kept_for_case: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        line = (
            f"evidence retention before {format_time(self.cutoff)}: {verb} "
            f"{len(self.deleted)}, kept {len(self.kept_for_case)} linked to a case"
        )
        return line + (
            f", {len(self.problems)} problem(s): {self.problems[0]}" if self.problems else ""
        )


async def _linked(service: EvidenceService, rec: StoredRecording) -> bool:
    aids = set(rec.aids) | await service.ledger.recording_aids(rec.device_id, rec.recording_id)
    states = await service.ledger.activation_states(sorted(aids)) if aids else {}
    return any(state == "linked" for state in states.values())


async def _delete(
    service: EvidenceService, rec: StoredRecording, report: EvidenceRetention
) -> None:
    store = service.store
    if not await asyncio.to_thread(store.hide, rec.device_id, rec.recording_id):
        return  # deleted meanwhile
    body = {
        "kind": "evidence",
        "device_id": rec.device_id,
        "recording_id": rec.recording_id,
        "aids": list(rec.aids),
        "manifest_sha256": rec.receipt.get("manifest_sha256"),
        "files": sorted(rec.files),
        "bytes": rec.size,
        "latest": format_time(rec.latest),
        "cutoff": format_time(report.cutoff),
        "reason": "older than the retention period and not linked to a case",
    }
    try:
        await service.ledger.record_retention(rec.evidence_id, "deleted", body)
    except LedgerError:
        await asyncio.to_thread(store.restore, rec.device_id, rec.recording_id)  # not recorded
        raise
    report.deleted.append(rec.evidence_id)
    await _purge(service, rec.device_id, rec.recording_id, report)


async def _purge(
    service: EvidenceService, device: str, recording: str, report: EvidenceRetention
) -> None:
    try:
        await asyncio.to_thread(service.store.purge, device, recording)
    except OSError as exc:
        report.problems.append(f"{device}/{recording} is recorded as deleted but remains: {exc}")


async def apply_evidence_retention(
    service: EvidenceService,
    days: float | None = None,
    *,
    now: float | None = None,
    dry_run: bool = False,
) -> EvidenceRetention:
    """Delete stored recordings older than ``days`` (default: the settings') not linked to
    a case, each deletion recorded; finish deletions a crash interrupted."""
    at = time.time() if now is None else now
    keep_days = service.settings.retention_days if days is None else days
    report = EvidenceRetention(cutoff=at - keep_days * _DAY_S, dry_run=dry_run)
    for device, recording in await asyncio.to_thread(service.store.hidden):
        subject = f"{device}/{recording}"
        report.deleted.append(subject)
        if dry_run:
            continue
        if not await service.ledger.retention_recorded(subject):
            body = {
                "kind": "evidence",
                "device_id": device,
                "recording_id": recording,
                "note": "finished an interrupted deletion",
                "cutoff": format_time(report.cutoff),
            }
            await service.ledger.record_retention(subject, "deleted", body)
        await _purge(service, device, recording, report)
    for rec in await service.list():
        if rec.latest >= report.cutoff:
            continue
        if await _linked(service, rec):
            report.kept_for_case.append(rec.evidence_id)
        elif dry_run:
            report.deleted.append(rec.evidence_id)
        else:
            await _delete(service, rec, report)
    return report


async def evidence_retention_loop(
    service: EvidenceService, *, interval_s: float = 6 * 3600.0, expire: bool = True
) -> None:
    """Apply retention (and drop expired unfinished uploads) every ``interval_s`` until
    cancelled. A failed run is logged and written to the ledger as an alert."""
    from actimesh.evidence.upload import Uploads  # noqa: PLC0415 - the loop's only use

    uploads = Uploads(service)
    while True:
        try:
            report = await apply_evidence_retention(service)
            log.info("%s", report.summary())
            if expire:
                await uploads.expire()
        except (LedgerError, OSError) as exc:
            log.exception("evidence retention failed; trying again in %.0f s", interval_s)
            with contextlib.suppress(LedgerError):
                await service.ledger.record_event(
                    "evidence/retention",
                    EventType.ALERT,
                    "evidence-retention",
                    "failed",
                    {"error": str(exc)[:500]},
                )
        await asyncio.sleep(interval_s)
