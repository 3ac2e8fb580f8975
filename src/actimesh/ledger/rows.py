"""What the ledger stores: its rows, and the bodies of their hash-chain records.

The row types are what every store returns and takes, whatever holds them (SQLite on
one machine, a database server in a cluster). A record's body is the row as JSON
(encoded by :mod:`.chain`), so that ``actimesh audit verify`` can check the query tables
against the chain, and an export can be read without the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from actimesh.broker.topics import is_identifier
from actimesh.errors import LedgerError
from actimesh.ledger.chain import ChainRecord, EventType, next_record

__all__ = [
    "FALSE_ACTIVATION",
    "KEEP_TYPES",
    "RETENTION_COMPONENT",
    "AckRow",
    "AckWrite",
    "ActivationRow",
    "DecisionRow",
    "Entry",
    "FalseActivation",
    "Head",
    "Redaction",
    "ack_body",
    "ack_entry",
    "ack_from_body",
    "activation_body",
    "activation_entry",
    "activation_from_body",
    "activation_outcome",
    "case_link_entry",
    "check_cancel",
    "check_case_id",
    "check_event",
    "false_activation_entry",
    "record_aid",
    "redaction_entry",
]

#: Components of the records the ledger writes on its own behalf.
RETENTION_COMPONENT = "audit/retention"
#: A camera whose officer cancelled its activation as false, within the cancel window.
FALSE_ACTIVATION = EventType.FALSE_ACTIVATION
#: Record types retention never redacts: the proof of links and of deletions.
KEEP_TYPES = (EventType.CASE_LINK, EventType.RETENTION_DELETE, EventType.LEDGER_IMPORT)
#: Record types only the ledger's own methods append (with rows in the query tables, or
#: kept by retention).
_OWN_TYPES = frozenset(
    {EventType.ACTIVATION, EventType.ACK, EventType.CASE_LINK, FALSE_ACTIVATION, *KEEP_TYPES}
)


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One camera considered for an activation.

    ``lat``/``lon`` is where the fix the engine judged put the camera (None when it
    judged none: a paired camera with no fix near, or a row written before positions
    were kept).
    """

    device_id: str
    device_kind: str | None
    commanded: bool
    reason: str
    distance_m: float | None = None
    margin_m: float | None = None
    fix_age_s: float | None = None
    acc_m: float | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class ActivationRow:
    """One activation: the event and the rule applied."""

    aid: str
    src: str
    eid: str
    type: str
    event_ts: float
    received_ts: float
    decided_ts: float
    lat: float | None
    lon: float | None
    acc: float | None
    position_source: str
    radius_m: float
    pre_roll_s: float
    rule: dict[str, Any]
    initiated_by: str | None
    engine: str


@dataclass(frozen=True, slots=True)
class AckWrite:
    """What :meth:`~actimesh.ledger.Ledger.record_acks` did: rows written, and answers
    refused because the activation had not commanded that camera."""

    inserted: int
    #: The devices whose answers were refused, one entry per answer.
    refused: tuple[str, ...] = ()

    @property
    def not_commanded(self) -> int:
        return len(self.refused)


@dataclass(frozen=True, slots=True)
class AckRow:
    """A camera's acknowledgement of an activation command."""

    aid: str
    device_id: str
    status: str
    pre_cov_s: float
    recording: str | None
    device_ts: float
    received_ts: float
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class FalseActivation:
    """One camera of an activation cancelled on the camera as a false activation.

    ``cancelled_ts`` is the camera's clock when the officer cancelled; ``after_event_s``
    is that minus the event time (None if the activation is not in the ledger).
    """

    seq: int
    aid: str
    device_id: str
    by: str
    cancelled_ts: float
    received_ts: float
    after_event_s: float | None
    recording: str | None
    eid: str | None = None
    event_type: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Head:
    """The last record of the chain (``seq`` 0 and the genesis hash when empty)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class Redaction:
    """Records about one activation (or one other subject) redacted by retention."""

    subject: str
    aid: str | None
    seqs: tuple[int, ...]
    rows_deleted: dict[str, int] = field(default_factory=dict)
    #: ``device/recording`` named by the deleted acknowledgements.
    recordings: tuple[str, ...] = ()
    #: The ``retention_delete`` record written (None on a dry run).
    record_seq: int | None = None


# ---------------------------------------------------------------------- record bodies
_ACTIVATION_FIELDS = tuple(f.name for f in fields(ActivationRow))
#: Decision fields a record body has only when set: a decision without a position has
#: the body it had before positions were kept, and older records read back as None.
_DECISION_OPTIONAL = ("lat", "lon")
_DECISION_FIELDS = tuple(f.name for f in fields(DecisionRow) if f.name not in _DECISION_OPTIONAL)
_ACK_FIELDS = tuple(f.name for f in fields(AckRow))


def _shallow(obj: object, names: tuple[str, ...]) -> dict[str, Any]:
    # Not dataclasses.asdict: its deep copy costs more than the rest of a write.
    return {name: getattr(obj, name) for name in names}


def _decision_body(d: DecisionRow) -> dict[str, Any]:
    body = _shallow(d, _DECISION_FIELDS)
    if d.lat is not None or d.lon is not None:
        body["lat"], body["lon"] = d.lat, d.lon
    return body


def activation_body(row: ActivationRow, decisions: Sequence[DecisionRow]) -> dict[str, Any]:
    """The body of an activation record: the row, and every decision by device id."""
    body = _shallow(row, _ACTIVATION_FIELDS)
    body["decisions"] = [_decision_body(d) for d in sorted(decisions, key=lambda d: d.device_id)]
    return body


def activation_from_body(body: Mapping[str, Any]) -> tuple[ActivationRow, list[DecisionRow]]:
    """Inverse of :func:`activation_body`. Raises KeyError/TypeError if it is not one."""
    row = ActivationRow(**{name: body[name] for name in _ACTIVATION_FIELDS})
    decisions = [
        DecisionRow(
            **{name: d[name] for name in _DECISION_FIELDS},
            **{name: d.get(name) for name in _DECISION_OPTIONAL},
        )
        for d in body["decisions"]
    ]
    return row, decisions


def ack_body(ack: AckRow) -> dict[str, Any]:
    """The body of an acknowledgement record."""
    return _shallow(ack, _ACK_FIELDS)


def ack_from_body(body: Mapping[str, Any]) -> AckRow:
    """Inverse of :func:`ack_body`. Raises KeyError/TypeError if it is not one."""
    return AckRow(**{name: body[name] for name in _ACK_FIELDS})


def activation_outcome(decisions: Sequence[DecisionRow]) -> str:
    """The outcome column of an activation record: did it command any camera?"""
    return "commanded" if any(d.commanded for d in decisions) else "none_commanded"


# ---------------------------------------------------------------------- records to append
@dataclass(frozen=True, slots=True)
class Entry:
    """A record to append, before the chain's head gives it its ``seq`` and hash.

    Built here, once, for every store: the same write makes the same record whatever
    holds the chain.
    """

    at: float
    component: str
    event_type: str
    subject: str
    outcome: str
    body: Mapping[str, Any]

    def after(self, prev_seq: int, prev_hash: str) -> ChainRecord:
        """The record this entry is once appended after ``(prev_seq, prev_hash)``."""
        return next_record(
            prev_seq,
            prev_hash,
            at=self.at,
            component=self.component,
            event_type=self.event_type,
            subject=self.subject,
            outcome=self.outcome,
            body=self.body,
        )

    @property
    def aid(self) -> str | None:
        """The activation the record belongs to (see :func:`record_aid`)."""
        return record_aid(self.body)


def record_aid(body: Mapping[str, Any]) -> str | None:
    """The activation a record body names: it is exported and retained with it."""
    aid = body.get("aid")
    return aid if isinstance(aid, str) else None


def activation_entry(row: ActivationRow, decisions: Sequence[DecisionRow]) -> Entry:
    """The record of an activation with all of its decisions."""
    return Entry(
        row.decided_ts,
        f"engine/{row.engine}",
        EventType.ACTIVATION,
        row.aid,
        activation_outcome(decisions),
        activation_body(row, decisions),
    )


def ack_entry(ack: AckRow) -> Entry:
    """The record of a camera's acknowledgement."""
    return Entry(
        ack.received_ts,
        f"device/{ack.device_id}",
        EventType.ACK,
        ack.aid,
        ack.status,
        ack_body(ack),
    )


def false_activation_entry(
    ack: AckRow, by: str, event: tuple[str, str, str, float] | None
) -> Entry:
    """The ``false_activation`` record of a cancelled ack; ``event`` is the activation's
    (src, eid, type, event_ts), None if it is not in the ledger."""
    src, eid, event_type, event_ts = (None, None, None, None) if event is None else event
    body = {
        "aid": ack.aid,
        "device_id": ack.device_id,
        "by": by,
        "cancelled_ts": ack.device_ts,
        "received_ts": ack.received_ts,
        "after_event_s": None if event_ts is None else ack.device_ts - event_ts,
        "recording": ack.recording,
        "src": src,
        "eid": eid,
        "event_type": event_type,
        "event_ts": event_ts,
        "detail": ack.detail,
    }
    return Entry(
        ack.received_ts,
        f"device/{ack.device_id}",
        FALSE_ACTIVATION,
        ack.device_id,
        "cancelled",
        body,
    )


def case_link_entry(case_id: str, aid: str, by: str, at: float) -> Entry:
    """The record of an activation linked to a case."""
    body = {"case_id": case_id, "aid": aid, "linked_by": by, "linked_ts": at}
    return Entry(at, "audit/cli", EventType.CASE_LINK, case_id, "linked", body)


def redaction_entry(
    subject: str,
    aid: str | None,
    seqs: Sequence[int],
    rows_deleted: Mapping[str, int],
    recordings: Sequence[str],
    *,
    cutoff: str,
    at: float,
) -> Entry:
    """The ``retention_delete`` record listing the records of one subject redacted."""
    body = {
        "aid": aid,
        "cutoff": cutoff,
        "reason": "older than the retention period and not linked to a case",
        "recordings": sorted(recordings),
        "redacted_seqs": list(seqs),
        "rows_deleted": dict(rows_deleted),
    }
    return Entry(at, RETENTION_COMPONENT, EventType.RETENTION_DELETE, subject, "redacted", body)


# ---------------------------------------------------------------------- checks before a write
def _text(name: str, value: str, limit: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise LedgerError(f"{name} must be a non-empty string of at most {limit} characters")
    return value


def check_event(component: str, event_type: str, subject: str, outcome: str) -> None:
    """Raise :class:`~actimesh.errors.LedgerError` unless ``record_event`` may write it."""
    for name, value in (
        ("component", component),
        ("event_type", event_type),
        ("subject", subject),
        ("outcome", outcome),
    ):
        _text(name, value)
    if event_type in _OWN_TYPES:
        raise LedgerError(
            f"event type {event_type!r} is written by the ledger itself; use "
            "record_activation, record_ack, record_cancel, link_case or the retention job"
        )


def check_cancel(ack: AckRow, by: str) -> None:
    """Raise :class:`~actimesh.errors.LedgerError` unless ``ack`` is a cancel by someone."""
    _text("the name of who cancelled", by)
    if ack.status != "cancelled":
        raise LedgerError(f"a false activation needs a cancelled ack, not {ack.status!r}")


def check_case_id(case_id: str, by: str) -> None:
    """Raise :class:`~actimesh.errors.LedgerError` unless a case link may name these."""
    if not is_identifier(case_id):
        raise LedgerError(
            f"case id {case_id!r} must be letters, digits, '.', '_' or '-' (at most 64, "
            "starting with a letter or digit)"
        )
    _text("the name of who links it", by, 128)
