"""Verify a ledger: the hash chain, then the query tables against it.

The chain is walked once in seq order keeping only the last two records, so memory does
not grow with the ledger. For each record it asks: does the body match ``body_sha256``;
does the hash match the record's own fields, and if not, does it match them at another
seq (the record was moved); is the seq the one after the previous record's; and does
``prev_hash`` name the previous record. The answers say what happened:

=============================  ===========================================================
changed                        a body or a field no longer matches the hash; or a record
                               whose successor was written after a different record
                               (changed, then its hash recomputed)
removed                        a gap in seq; or a record whose predecessor is nowhere
                               and whose own hash says it was renumbered
inserted                       a record its successor skips (written right after the one
                               before it); or a last record that links to nothing
reordered                      records that hash correctly only at another seq (swapped,
                               or renumbered after an insert or a removal)
truncated                      the chain ends before a head recorded elsewhere
=============================  ===========================================================

A redacted body (retention) is not tampering when a later ``retention_delete`` record
lists its seq; a body that is missing without one is reported as changed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from actimesh.audit._store import SELECT_RECORDS, Snapshot, as_text, record, snapshot
from actimesh.ledger import (
    GENESIS_HASH,
    AckRow,
    ActivationRow,
    ChainRecord,
    DecisionRow,
    EventType,
    Head,
    ack_from_body,
    activation_from_body,
)

__all__ = ["Finding", "Tamper", "VerifyReport", "verify_ledger"]

_MAX_FINDINGS = 1000


class Tamper(StrEnum):
    """What a finding says happened."""

    CHANGED = "changed"
    REMOVED = "removed"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where (``chain`` or a table), the records concerned, what happened."""

    kind: Tamper
    detail: str
    first: int | None = None
    last: int | None = None
    where: str = "chain"

    def __str__(self) -> str:
        if self.first is None:
            at = ""
        elif self.last is None or self.last == self.first:
            at = f" seq {self.first}"
        else:
            at = f" seq {self.first}..{self.last}"
        return f"{self.where}{at}: {self.kind.value}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    """What :func:`verify_ledger` found."""

    #: The ledger as shown to the operator (a SQLite file, or a URL without its password).
    path: Path | str
    records: int = 0
    redacted: int = 0
    head: Head = field(default_factory=lambda: Head(0, GENESIS_HASH))
    expected_head: Head | None = None
    findings: list[Finding] = field(default_factory=list)
    not_shown: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def summary(self) -> str:
        """One line for the operator."""
        if self.ok:
            anchored = ""
            if self.expected_head is not None:
                anchored = f", contains the recorded head {self.expected_head.seq}"
            return (
                f"ledger intact: {self.records} records ({self.redacted} redacted by "
                f"retention), head {self.head}{anchored}"
            )
        more = f" ({self.not_shown} more not shown)" if self.not_shown else ""
        kept = "file" if isinstance(self.path, Path) else "database"
        return (
            f"the ledger at {self.path} FAILED verification: {len(self.findings)} "
            f"problem(s){more}; keep this {kept} as evidence, restore the ledger from a "
            "backup and investigate"
        )

    def add(self, finding: Finding) -> None:
        """Keep a finding (the first thousand; the rest are only counted)."""
        if len(self.findings) < _MAX_FINDINGS:
            self.findings.append(finding)
        else:
            self.not_shown += 1


_BEFORE_FIRST = ChainRecord(0, "", "", "", "", "", None, "", "", GENESIS_HASH)


@dataclass(slots=True)
class _Step:
    """A record as walked: moved when its hash is right only at another seq."""

    record: ChainRecord
    written: int | None  # the seq its hash was computed for; None if it matches none
    flagged: bool = False  # already reported as changed

    @property
    def moved(self) -> bool:
        return self.written is not None and self.written != self.record.seq


@dataclass(slots=True)
class _Walker:
    report: VerifyReport
    db: Snapshot
    a: _Step = field(default_factory=lambda: _Step(_BEFORE_FIRST, 0))  # the previous record
    b: _Step | None = None  # the one before it
    #: r does not link to a, and nothing points elsewhere: r's successor decides.
    unresolved: tuple[_Step, _Step] | None = None
    moved: dict[int, int] = field(default_factory=dict)  # seq now -> seq written
    redacted: set[int] = field(default_factory=set)  # not yet covered by a retention record

    def _add(self, kind: Tamper, detail: str, first: int, last: int | None = None) -> None:
        self.report.add(Finding(kind, detail, first, last))

    def _written_seq(self, r: ChainRecord) -> int | None:
        if r.computed_hash() == r.hash:
            return r.seq
        candidates = [r.seq - 1, r.seq + 1]
        p = self.db.seq_of_hash(r.prev_hash)
        if p is not None:
            candidates.insert(0, p + 1)
        return next((s for s in candidates if s > 0 and r.computed_hash(s) == r.hash), None)

    def feed(self, r: ChainRecord, aid_column: str | None) -> None:
        self.report.records += 1
        step = _Step(r, self._written_seq(r))
        if not r.body_matches():
            self._add(Tamper.CHANGED, "its body does not match its body_sha256", r.seq)
            step.flagged = True
        elif r.redacted:
            self.report.redacted += 1
            self.redacted.add(r.seq)
        else:
            self._check_body(r, aid_column)
        if step.written is None:
            self._add(
                Tamper.CHANGED,
                "its fields do not match its hash (time, component, "
                "event type, subject, outcome or body_sha256 edited, or forged)",
                r.seq,
            )
            step.flagged = True
        elif step.moved:
            self.moved[r.seq] = step.written
        if r.seq != self.a.record.seq + 1:
            self._add(Tamper.REMOVED, "missing from the chain", self.a.record.seq + 1, r.seq - 1)
        elif r.prev_hash != self.a.record.hash:
            self._broken_link(step)
        if self.unresolved is not None and self.unresolved[1] is self.a:
            self._resolve(successor=r)
        self.b, self.a = self.a, step

    def _check_body(self, r: ChainRecord, aid_column: str | None) -> None:
        body = r.parsed_body()
        if body is None:
            self._add(Tamper.CHANGED, "its body is not a JSON object", r.seq)
            return
        aid = body.get("aid")
        if (aid if isinstance(aid, str) else None) != aid_column:
            self._add(
                Tamper.CHANGED, f"its aid column is {aid_column!r} but its body says {aid!r}", r.seq
            )
        if r.event_type == EventType.RETENTION_DELETE:
            for seq in body.get("redacted_seqs", ()):
                if isinstance(seq, int) and seq < r.seq:
                    self.redacted.discard(seq)

    def _broken_link(self, step: _Step) -> None:
        r, a, b = step.record, self.a, self.b
        if b is not None and r.prev_hash == b.record.hash and not a.moved:
            # r was written right after b, so a does not belong between them.
            self._add(
                Tamper.INSERTED,
                f"not part of the chain: seq {r.seq} was written right after seq {b.record.seq}",
                a.record.seq,
            )
            if self.unresolved is not None and self.unresolved[1] is a:
                self.unresolved = None
            return
        if step.written is None:
            return  # r itself was changed (reported): its prev_hash proves nothing
        if a.record.seq == 0:
            self._add(
                Tamper.CHANGED, "the first record does not start from the genesis hash", r.seq
            )
            return
        p = self.db.seq_of_hash(r.prev_hash)
        if step.moved or a.moved:
            if p is None and step.written is not None and step.moved:
                self._add(
                    Tamper.REMOVED,
                    f"the record written as seq {step.written - 1} is "
                    "gone and the records after it were renumbered",
                    r.seq,
                )
            return  # otherwise the reordering explains it
        if p is None:
            self.unresolved = (a, step)
        else:
            self._add(
                Tamper.REORDERED, f"links to seq {p}, not to seq {a.record.seq} before it", r.seq
            )

    def _resolve(self, *, successor: ChainRecord | None) -> None:
        assert self.unresolved is not None
        a, r = self.unresolved
        self.unresolved = None
        if successor is not None and successor.prev_hash == r.record.hash:
            if not a.flagged:
                self._add(
                    Tamper.CHANGED,
                    f"changed and its hash recomputed: seq "
                    f"{r.record.seq} was written after a different seq {a.record.seq}",
                    a.record.seq,
                )
            return
        self._add(
            Tamper.INSERTED,
            f"does not link to seq {a.record.seq}: forged, or seq "
            f"{a.record.seq} was changed and its hash recomputed",
            r.record.seq,
        )

    def finish(self) -> None:
        if self.unresolved is not None:
            self._resolve(successor=None)
        self._report_moves()
        for first, last in _ranges(sorted(self.redacted)):
            self._add(Tamper.CHANGED, "body removed without a retention_delete record", first, last)

    def _report_moves(self) -> None:
        done: set[int] = set()
        for now, written in sorted(self.moved.items()):
            if now in done:
                continue
            if self.moved.get(written) == now:
                done |= {now, written}
                low, high = sorted((now, written))
                self._add(Tamper.REORDERED, f"seq {low} and seq {high} were swapped", low, high)
                continue
            end = now
            while self.moved.get(end + 1) == self.moved[end] + 1:
                end += 1
            done.update(range(now, end + 1))
            if end == now:
                detail = f"holds the record written as seq {written}"
            else:
                shift = now - written
                direction = "up" if shift > 0 else "down"
                detail = (
                    f"hold the records written as seq {written}..{self.moved[end]} "
                    f"(renumbered {direction} by {abs(shift)})"
                )
            self._add(Tamper.REORDERED, detail, now, end)


def _ranges(seqs: list[int]) -> Iterator[tuple[int, int]]:
    """Runs of consecutive numbers as (first, last)."""
    run: list[int] = []
    for seq in seqs:
        if run and seq != run[-1] + 1:
            yield run[0], run[-1]
            run = []
        run.append(seq)
    if run:
        yield run[0], run[-1]


def verify_ledger(
    location: Path | str, *, head: Head | None = None, agency: str | None = None
) -> VerifyReport:
    """Check the chain and the tables of the ledger at ``location`` (read-only): a
    SQLite file, or the chain of ``agency`` in the PostgreSQL database at a URL.

    ``head`` is a head recorded earlier: the chain must still contain it, unchanged.
    Raises :class:`~actimesh.errors.AuditError` only if the ledger cannot be read at
    all; tampering is reported in :attr:`VerifyReport.findings`.
    """
    with snapshot(location, agency=agency) as db:
        report = VerifyReport(
            path=location if isinstance(location, Path) else db.shown, expected_head=head
        )
        walker = _Walker(report, db)
        for row in db.rows(f"{SELECT_RECORDS} ORDER BY seq"):
            walker.feed(*record(row))
        walker.finish()
        if walker.a.record.seq:
            report.head = Head(walker.a.record.seq, walker.a.record.hash)
        if head is not None:
            _check_head(db, report, head)
        _check_activations(db, report)
        _check_acks(db, report)
        _check_case_links(db, report)
    report.findings.sort(key=lambda f: (f.where != "chain", f.first or 0))
    return report


def _check_head(db: Snapshot, report: VerifyReport, head: Head) -> None:
    if head.seq == 0:
        return
    found = db.one("SELECT hash FROM records WHERE seq = ?", (head.seq,))
    if found is None and report.head.seq < head.seq:
        report.add(
            Finding(
                Tamper.TRUNCATED,
                f"the chain ends at seq {report.head.seq} but "
                f"its head was recorded at seq {head.seq}: the tail was cut off",
                report.head.seq + 1,
                head.seq,
            )
        )
    elif found is None:
        report.add(Finding(Tamper.REMOVED, "the recorded head is missing", head.seq))
    elif as_text(found[0]) != head.hash:
        report.add(
            Finding(
                Tamper.CHANGED,
                "its hash differs from the recorded head: the chain up to here was rewritten",
                head.seq,
            )
        )


# ---------------------------------------------------------------------- the tables
def _intact(db: Snapshot, event_type: str) -> Iterator[ChainRecord]:
    """Records of one type that match their hash (bodies may be redacted).

    The others were reported by the chain walk; what they say cannot be trusted, so the
    tables are not compared with them.
    """
    for row in db.rows(f"{SELECT_RECORDS} WHERE event_type = ? ORDER BY seq", (event_type,)):
        r, _aid = record(row)
        if r.body_matches() and r.computed_hash() == r.hash:
            yield r


def _diff(table: ActivationRow | DecisionRow | AckRow, chain: object) -> str:
    return "; ".join(
        f"{name} is {getattr(table, name)!r} in the table, {getattr(chain, name)!r} in the chain"
        for name in table.__slots__
        if getattr(table, name) != getattr(chain, name)
    )


def _check_activation(db: Snapshot, report: VerifyReport, r: ChainRecord) -> None:
    """One activation record against its activations row and decision rows."""

    def add(kind: Tamper, detail: str, table: str) -> None:
        report.add(Finding(kind, detail, where=table))

    where = f"activation {r.subject} (record seq {r.seq})"
    found = db.activation(r.subject)
    if r.redacted:
        if found is not None:
            add(
                Tamper.INSERTED,
                f"{where}: rows remain although retention redacted the record",
                "activations",
            )
        return
    try:
        row, decisions = activation_from_body(r.parsed_body() or {})
    except (KeyError, TypeError):
        report.add(Finding(Tamper.CHANGED, "its body is not an activation", r.seq))
        return
    if found is None:
        add(Tamper.REMOVED, f"{where}: row missing", "activations")
        return
    table_row, table_decisions = found
    if table_row != row:
        add(Tamper.CHANGED, f"{where}: {_diff(table_row, row)}", "activations")
    in_chain = {d.device_id: d for d in decisions}
    in_table = {d.device_id: d for d in table_decisions}
    for device_id in sorted(in_chain.keys() | in_table.keys()):
        c, t = in_chain.get(device_id), in_table.get(device_id)
        camera = f"{where} camera {device_id}"
        if t is None:
            add(Tamper.REMOVED, f"{camera}: decision row missing", "decisions")
        elif c is None:
            add(Tamper.INSERTED, f"{camera}: decision row not in the chain", "decisions")
        elif c != t:
            add(Tamper.CHANGED, f"{camera}: {_diff(t, c)}", "decisions")


def _check_activations(db: Snapshot, report: VerifyReport) -> None:
    def add(kind: Tamper, detail: str, table: str) -> None:
        report.add(Finding(kind, detail, where=table))

    for r in _intact(db, EventType.ACTIVATION):
        _check_activation(db, report, r)
    for (aid,) in db.rows(
        "SELECT aid FROM activations a WHERE NOT EXISTS (SELECT 1 FROM records r "
        "WHERE r.aid = a.aid AND r.event_type = ?) ORDER BY event_ts",
        (EventType.ACTIVATION.value,),
    ):
        add(
            Tamper.INSERTED, f"activation {aid} is in the table but not in the chain", "activations"
        )
    for aid, device_id in db.rows(
        "SELECT aid, device_id FROM decisions WHERE aid NOT IN (SELECT aid FROM activations)"
    ):
        add(Tamper.INSERTED, f"decision {aid}/{device_id} has no activation row", "decisions")
    for aid, count in db.rows(
        "SELECT subject, count(*) FROM records WHERE event_type = ? GROUP BY subject "
        "HAVING count(*) > 1",
        (EventType.ACTIVATION.value,),
    ):
        report.add(Finding(Tamper.INSERTED, f"activation {aid} has {count} activation records"))


_SELECT_ACKS = (
    "SELECT aid, device_id, status, pre_cov_s, recording, device_ts, received_ts, detail FROM acks"
)


def _ack_key(ack: AckRow) -> tuple[str, str, str, float]:
    return ack.aid, ack.device_id, ack.status, ack.device_ts


def _check_acks(db: Snapshot, report: VerifyReport) -> None:
    matched = 0
    for r in _intact(db, EventType.ACK):
        if r.redacted:
            continue
        try:
            ack = ack_from_body(r.parsed_body() or {})
        except (KeyError, TypeError):
            report.add(Finding(Tamper.CHANGED, "its body is not an acknowledgement", r.seq))
            continue
        found = db.one(
            f"{_SELECT_ACKS} WHERE aid = ? AND device_id = ? AND status = ? AND device_ts = ?",
            _ack_key(ack),
        )
        what = f"ack of {ack.aid} by {ack.device_id} ({ack.status}, record seq {r.seq})"
        if found is None:
            report.add(Finding(Tamper.REMOVED, f"{what}: row missing", where="acks"))
            continue
        matched += 1
        row = AckRow(*found)
        if row != ack:
            report.add(Finding(Tamper.CHANGED, f"{what}: {_diff(row, ack)}", where="acks"))
    counted = db.one("SELECT count(*) FROM acks")
    if counted is None or counted[0] <= matched:
        return
    # Some row has no record. Only now look up each row's records to name it.
    for found in db.rows(f"{_SELECT_ACKS} ORDER BY received_ts"):
        row = AckRow(*found)
        keys = set()
        for (body,) in db.rows(
            "SELECT body FROM records WHERE aid = ? AND event_type = ? AND body IS NOT NULL",
            (row.aid, EventType.ACK.value),
        ):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                keys.add(_ack_key(ack_from_body(json.loads(body))))
        if _ack_key(row) not in keys:
            report.add(
                Finding(
                    Tamper.INSERTED,
                    f"ack of {row.aid} by {row.device_id} "
                    f"({row.status}) is in the table but not in the chain",
                    where="acks",
                )
            )


def _check_case_links(db: Snapshot, report: VerifyReport) -> None:
    names = ("case_id", "aid", "linked_by", "linked_ts")
    chain: dict[tuple[str, str], tuple[int, tuple[Any, ...]]] = {}
    for r in _intact(db, EventType.CASE_LINK):
        body = r.parsed_body() or {}
        values = tuple(body.get(name) for name in names)
        chain[(as_text(values[0]), as_text(values[1]))] = (r.seq, values)
    table = {
        (as_text(row[0]), as_text(row[1])): tuple(row)
        for row in db.rows("SELECT case_id, aid, linked_by, linked_ts FROM case_links")
    }
    for key in sorted(chain.keys() | table.keys()):
        what = f"case {key[0]} activation {key[1]}"
        if key not in table:
            report.add(
                Finding(
                    Tamper.REMOVED,
                    f"{what} (record seq {chain[key][0]}): link row missing",
                    where="case_links",
                )
            )
        elif key not in chain:
            report.add(
                Finding(Tamper.INSERTED, f"{what}: link row not in the chain", where="case_links")
            )
        elif table[key] != chain[key][1]:
            diff = "; ".join(
                f"{n} is {t!r} in the table, {c!r} in the chain"
                for n, t, c in zip(names, table[key], chain[key][1], strict=True)
                if t != c
            )
            report.add(
                Finding(
                    Tamper.CHANGED,
                    f"{what} (record seq {chain[key][0]}): {diff}",
                    where="case_links",
                )
            )
