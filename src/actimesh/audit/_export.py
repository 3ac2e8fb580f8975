"""Cases: link an activation to a case, and export one case's records with their hashes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from actimesh.audit._store import SELECT_RECORDS, record, snapshot
from actimesh.broker.topics import is_identifier
from actimesh.errors import AuditError, LedgerError
from actimesh.ledger import CHAIN_VERSION, ChainRecord, EventType, format_time, open_ledger

__all__ = ["ExportResult", "export_case", "link_case"]


async def link_case(
    location: Path | str, case_id: str, aid: str, by: str, *, agency: str | None = None
) -> tuple[int, bool]:
    """Link an activation to a case in the ledger at ``location`` (with ``agency`` for a
    PostgreSQL URL); (record seq, newly linked).

    The link is itself a chained record naming who made it (``by``); a linked activation
    and everything recorded about it are kept past retention.
    """
    try:
        async with open_ledger(location, create=False, agency=agency) as ledger:
            return await ledger.link_case(case_id, aid, by)
    except LedgerError as exc:
        raise AuditError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`export_case` wrote."""

    case_id: str
    records: int
    activations: tuple[str, ...]
    jsonl: Path
    csv: Path
    manifest: Path


def _case_records(
    location: Path | str, case_id: str, agency: str | None
) -> tuple[list[ChainRecord], list[str], str, str]:
    with snapshot(location, agency=agency) as db:
        links = [
            record(row)[0]
            for row in db.rows(
                f"{SELECT_RECORDS} WHERE event_type = ? AND subject = ? ORDER BY seq",
                (EventType.CASE_LINK.value, case_id),
            )
        ]
        if not links:
            raise AuditError(
                f"case {case_id} has no linked activation in {db.shown}; link one with "
                f"`actimesh audit link --case {case_id} --activation AID --by NAME`"
            )
        aids = sorted({str((r.parsed_body() or {}).get("aid")) for r in links})
        found = {r.seq: r for r in links}
        for aid in aids:
            # Everything about the activation except links to other cases.
            for row in db.rows(
                f"{SELECT_RECORDS} WHERE aid = ? AND event_type != ? ORDER BY seq",
                (aid, EventType.CASE_LINK.value),
            ):
                r, _aid = record(row)
                found[r.seq] = r
        head = db.one("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")
        assert head is not None  # the case's link records are in the chain
        return [found[seq] for seq in sorted(found)], aids, f"{head[0]}:{head[1]}", db.shown


def export_case(
    location: Path | str, case_id: str, out_dir: Path, *, agency: str | None = None
) -> ExportResult:
    """Write the records of one case (links, activations, acks, alerts) with their hashes.

    ``case-<id>.jsonl`` and ``case-<id>.csv`` hold one record per line with every column
    of the chain; the body is its exact stored text (null in JSON Lines, empty in CSV,
    once redacted), so ``sha256(body) == body_sha256`` and ``hash`` can be recomputed
    from the record's own columns (see :mod:`actimesh.ledger.chain`).
    ``case-<id>.manifest.json`` gives the ledger's head at export time and each file's
    SHA-256. Every record is checked against its hash before anything is written.
    """
    if not is_identifier(case_id):
        raise AuditError(f"case id {case_id!r} must be letters, digits, '.', '_' or '-'")
    records, aids, head, shown = _case_records(location, case_id, agency)
    for r in records:
        if not r.body_matches() or r.computed_hash() != r.hash:
            raise AuditError(
                f"record {r.seq} of case {case_id} does not match its hash; run "
                "`actimesh audit verify` and investigate before exporting"
            )
    columns = ChainRecord.COLUMNS
    jsonl = "".join(json.dumps({c: getattr(r, c) for c in columns}) + "\n" for r in records)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for r in records:
        writer.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in columns])
    stem = f"case-{case_id}"
    files = {f"{stem}.jsonl": jsonl.encode(), f"{stem}.csv": buffer.getvalue().encode()}
    manifest = {
        "case_id": case_id,
        "activations": aids,
        "records": len(records),
        "exported_at": format_time(time.time()),
        "ledger": shown,
        "ledger_head": head,
        "encoding": CHAIN_VERSION,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "how_to_verify": (
            "sha256(body) == body_sha256 unless body is null/empty (redacted); hash == "
            "sha256 of the netstrings (<length>:<utf-8 bytes>,) of actimesh.ledger.v1, "
            "prev_hash, seq, time, component, event_type, subject, outcome, body_sha256"
        ),
    }
    files[f"{stem}.manifest.json"] = (
        json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    ).encode()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            tmp = out_dir / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(out_dir / name)
    except OSError as exc:
        raise AuditError(
            f"cannot write the export to {out_dir}: {exc.strerror}; give a writable --out folder"
        ) from exc
    return ExportResult(
        case_id,
        len(records),
        tuple(aids),
        out_dir / f"{stem}.jsonl",
        out_dir / f"{stem}.csv",
        out_dir / f"{stem}.manifest.json",
    )
