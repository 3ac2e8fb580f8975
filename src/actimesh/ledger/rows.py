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

from actimesh.ledger.chain import EventType

__all__ = [
    "FALSE_ACTIVATION",
    "KEEP_TYPES",
    "RETENTION_COMPONENT",
    "AckRow",
    "AckWrite",
    "ActivationRow",
    "DecisionRow",
    "FalseActivation",
    "Head",
    "Redaction",
    "ack_body",
    "ack_from_body",
    "activation_body",
    "activation_from_body",
    "activation_outcome",
]

#: Components of the records the ledger writes on its own behalf.
RETENTION_COMPONENT = "audit/retention"
#: A camera whose officer cancelled its activation as false, within the cancel window.
FALSE_ACTIVATION = EventType.FALSE_ACTIVATION
#: Record types retention never redacts: the proof of links and of deletions.
KEEP_TYPES = (EventType.CASE_LINK, EventType.RETENTION_DELETE, EventType.LEDGER_IMPORT)


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One camera considered for an activation."""

    device_id: str
    device_kind: str | None
    commanded: bool
    reason: str
    distance_m: float | None = None
    margin_m: float | None = None
    fix_age_s: float | None = None
    acc_m: float | None = None


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
_DECISION_FIELDS = tuple(f.name for f in fields(DecisionRow))
_ACK_FIELDS = tuple(f.name for f in fields(AckRow))


def _shallow(obj: object, names: tuple[str, ...]) -> dict[str, Any]:
    # Not dataclasses.asdict: its deep copy costs more than the rest of a write.
    return {name: getattr(obj, name) for name in names}


def activation_body(row: ActivationRow, decisions: Sequence[DecisionRow]) -> dict[str, Any]:
    """The body of an activation record: the row, and every decision by device id."""
    body = _shallow(row, _ACTIVATION_FIELDS)
    body["decisions"] = [
        _shallow(d, _DECISION_FIELDS) for d in sorted(decisions, key=lambda d: d.device_id)
    ]
    return body


def activation_from_body(body: Mapping[str, Any]) -> tuple[ActivationRow, list[DecisionRow]]:
    """Inverse of :func:`activation_body`. Raises KeyError/TypeError if it is not one."""
    row = ActivationRow(**{name: body[name] for name in _ACTIVATION_FIELDS})
    decisions = [
        DecisionRow(**{name: d[name] for name in _DECISION_FIELDS}) for d in body["decisions"]
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
