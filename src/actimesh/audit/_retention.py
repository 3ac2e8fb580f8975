"""Retention: what is not linked to a case goes after the retention period, on the record.

Ledger records are never removed (that would break the chain): their bodies are redacted
and the query-table rows they describe deleted, by :meth:`Ledger.redact_expired`.
Recording folders (``root/<device>/<recording>/``) are deleted when every activation
they belong to (from the manifest and from the acknowledgements naming the recording)
was redacted, and their newest footage is older than the cutoff. A recording whose
activation the ledger does not know, or whose manifest cannot be read, is kept and
reported: deleting evidence by mistake is worse than keeping it.

A folder is first renamed to ``.<recording>.deleting`` (atomic), then its deletion is
recorded, then it is removed: a crash leaves a tombstone that the next run finishes,
never a deletion that was not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from actimesh.broker.topics import is_identifier
from actimesh.devices.recorder import MANIFEST_NAME
from actimesh.errors import AuditError, LedgerError
from actimesh.ledger import EventType, Ledger, Redaction, format_time, open_ledger

__all__ = [
    "RetentionReport",
    "apply_retention",
    "retain",
    "retention_loop",
]

log = logging.getLogger(__name__)

_DAY_S = 86_400.0
_TOMBSTONE = re.compile(r"^\.(.+)\.deleting$")


@dataclass(slots=True)
class RetentionReport:
    """What :func:`apply_retention` did (or, on a dry run, would do)."""

    cutoff: float
    dry_run: bool
    redactions: list[Redaction] = field(default_factory=list)
    recordings_deleted: list[str] = field(default_factory=list)
    #: ``device/recording`` kept for a reason worth a look (unknown activation, unreadable).
    recordings_kept: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the operator and the log."""
        records = sum(len(r.seqs) for r in self.redactions)
        activations = sum(1 for r in self.redactions if r.rows_deleted.get("activations"))
        redacted, deleted = ("redacted", "deleted")
        if self.dry_run:
            redacted, deleted = "would redact", "would delete"
        line = (
            f"retention before {format_time(self.cutoff)}: {redacted} {records} records "
            f"({activations} activations), {deleted} {len(self.recordings_deleted)} recordings"
        )
        if self.recordings_kept:
            first = next(iter(self.recordings_kept.items()))
            line += f", kept {len(self.recordings_kept)} to look at ({first[0]}: {first[1]})"
        if self.problems:
            line += f", {len(self.problems)} problem(s): {self.problems[0]}"
        return line


@dataclass(frozen=True, slots=True)
class _OnDisk:
    device_id: str
    recording_id: str
    path: Path
    aids: frozenset[str]
    latest: float | None  # None when the manifest cannot be read
    manifest_sha256: str | None
    segments: int
    size: int

    @property
    def subject(self) -> str:
        return f"{self.device_id}/{self.recording_id}"


def _read(device_id: str, path: Path) -> _OnDisk:
    aids: set[str] = set()
    latest = sha = None
    segments = size = 0
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):
        data = (path / MANIFEST_NAME).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        manifest = json.loads(data)
        aids = {str(a["aid"]) for a in manifest.get("activations", [])}
        listed = manifest.get("segments", [])
        times = [manifest.get("started_at"), manifest.get("stopped_at")]
        times += [s.get("end") for s in listed]
        numbers = [float(t) for t in times if isinstance(t, int | float)]
        segments, size = len(listed), sum(int(s.get("bytes", 0)) for s in listed)
        latest = max(numbers) if numbers else None
    return _OnDisk(device_id, path.name, path, frozenset(aids), latest, sha, segments, size)


def _scan(root: Path) -> tuple[list[_OnDisk], list[tuple[str, Path]]]:
    """Recordings under ``root``, and tombstones left by an interrupted deletion."""
    if not root.is_dir():
        raise AuditError(f"no recordings folder at {root}; check --recordings")
    recordings: list[_OnDisk] = []
    tombstones: list[tuple[str, Path]] = []
    for device in sorted(root.iterdir()):
        if not device.is_dir() or not is_identifier(device.name):
            continue
        for entry in sorted(device.iterdir()):
            if not entry.is_dir():
                continue
            if _TOMBSTONE.fullmatch(entry.name):
                tombstones.append((device.name, entry))
            elif is_identifier(entry.name):
                recordings.append(_read(device.name, entry))
    return recordings, tombstones


async def _verdict(ledger: Ledger, rec: _OnDisk, cutoff: float, expiring: set[str]) -> str | None:
    """None to delete it; ``kept`` for the ordinary reasons; otherwise why it was kept."""
    if rec.latest is None:
        return "unreadable manifest"
    aids = rec.aids | await ledger.recording_aids(rec.device_id, rec.recording_id)
    if not aids:
        return "no activation named in its manifest or acknowledgements"
    states = await ledger.activation_states(sorted(aids))
    unknown = sorted(aid for aid, state in states.items() if state == "unknown")
    if unknown:
        return f"activation {unknown[0]} is not in this ledger"
    gone = all(
        state == "redacted" or (state == "kept" and aid in expiring)
        for aid, state in states.items()
    )
    return None if gone and rec.latest < cutoff else "kept"


async def _delete(ledger: Ledger, rec: _OnDisk, report: RetentionReport) -> None:
    tomb = rec.path.with_name(f".{rec.recording_id}.deleting")
    try:
        await asyncio.to_thread(rec.path.rename, tomb)
    except OSError as exc:
        report.problems.append(f"cannot delete {rec.path}: {exc.strerror}")
        return
    body = {
        "kind": "recording",
        "device_id": rec.device_id,
        "recording_id": rec.recording_id,
        "aids": sorted(rec.aids),
        "manifest_sha256": rec.manifest_sha256,
        "segments": rec.segments,
        "bytes": rec.size,
        "latest": format_time(rec.latest or 0.0),
        "cutoff": format_time(report.cutoff),
    }
    try:
        await ledger.record_retention(rec.subject, "deleted", body)
    except LedgerError:
        await asyncio.to_thread(tomb.rename, rec.path)  # not recorded: not deleted
        raise
    report.recordings_deleted.append(rec.subject)
    await _remove(tomb, rec.subject, report)


async def _remove(tomb: Path, subject: str, report: RetentionReport) -> None:
    try:
        await asyncio.to_thread(shutil.rmtree, tomb)
    except OSError as exc:
        report.problems.append(f"{subject} is recorded as deleted but {tomb} remains: {exc}")


async def _prune(ledger: Ledger, root: Path, report: RetentionReport, expiring: set[str]) -> None:
    recordings, tombstones = await asyncio.to_thread(_scan, root)
    for device_id, tomb in tombstones:
        match = _TOMBSTONE.fullmatch(tomb.name)
        assert match is not None
        subject = f"{device_id}/{match[1]}"
        if report.dry_run:
            report.recordings_deleted.append(subject)
            continue
        if not await ledger.retention_recorded(subject):
            body = {
                "kind": "recording",
                "device_id": device_id,
                "recording_id": match[1],
                "note": "finished an interrupted deletion",
                "cutoff": format_time(report.cutoff),
            }
            await ledger.record_retention(subject, "deleted", body)
        report.recordings_deleted.append(subject)
        await _remove(tomb, subject, report)
    for rec in recordings:
        verdict = await _verdict(ledger, rec, report.cutoff, expiring)
        if verdict is None and report.dry_run:
            report.recordings_deleted.append(rec.subject)
        elif verdict is None:
            await _delete(ledger, rec, report)
        elif verdict != "kept":
            report.recordings_kept[rec.subject] = verdict


async def apply_retention(
    ledger: Ledger,
    days: float,
    *,
    recordings: Path | None = None,
    now: float | None = None,
    dry_run: bool = False,
) -> RetentionReport:
    """Apply retention to an open ledger and, if given, a RecordingStore root.

    Records older than ``days`` and not linked to a case are redacted and their table
    rows deleted; recording folders under ``recordings`` whose activations are all gone
    and whose newest footage is older than ``days`` are deleted. Each deletion is a
    ``retention_delete`` record. Safe while engines write to the same ledger file.
    ``days`` is the operator's ``[retention] days``: the caller reads it from its
    settings, so the audit package never reads configuration itself.
    """
    at = time.time() if now is None else now
    report = RetentionReport(cutoff=at - days * _DAY_S, dry_run=dry_run)
    report.redactions = await ledger.redact_expired(report.cutoff, now=at, dry_run=dry_run)
    if recordings is not None:
        expiring = {r.aid for r in report.redactions if r.aid is not None}
        await _prune(ledger, recordings, report, expiring)
    return report


async def retain(
    location: Path | str,
    days: float,
    *,
    recordings: Path | None = None,
    now: float | None = None,
    dry_run: bool = False,
    agency: str | None = None,
) -> RetentionReport:
    """:func:`apply_retention` on the ledger at ``location`` (a SQLite file, or the
    agency's chain at a PostgreSQL URL), which must exist."""
    async with open_ledger(location, create=False, agency=agency) as ledger:
        return await apply_retention(ledger, days, recordings=recordings, now=now, dry_run=dry_run)


async def retention_loop(
    location: Path | str,
    days: float,
    *,
    recordings: Path | None = None,
    interval_s: float = 6 * 3600.0,
    agency: str | None = None,
) -> None:
    """Apply retention every ``interval_s`` until cancelled; run it in the TaskGroup.

    It opens a ledger connection of its own, so a long run never queues in front of the
    engine's writes. A failed run is logged and written to the ledger as an alert (CJIS
    5.4: alert when audit processing fails), and tried again next time.
    """
    async with open_ledger(location, agency=agency) as ledger:
        while True:
            try:
                report = await apply_retention(ledger, days, recordings=recordings)
                log.info("%s", report.summary())
            except (LedgerError, OSError) as exc:
                log.exception("retention failed; trying again in %.0f s", interval_s)
                with contextlib.suppress(LedgerError):
                    await ledger.record_event(
                        "audit/retention",
                        EventType.ALERT,
                        "retention",
                        "failed",
                        {"error": str(exc)[:500]},
                    )
            await asyncio.sleep(interval_s)
