"""The ledger's hash chain: how a record is encoded and hashed.

Every ledger write appends one record to the ``records`` table. A record carries the
CJIS 5.4 audit fields as columns (date and time, system component, event type, subject
identity, outcome), a JSON body with the details, and the hash of the record before it,
so that changing, removing, inserting or reordering any record breaks the chain.

The encoding (version ``actimesh.ledger.v1``) is simple enough to re-implement in any
language from this description, without a JSON canonicaliser:

``body``
    JSON with keys sorted, no whitespace, ASCII only (other characters as ``\\uXXXX``)
    and no NaN or infinity. ``body_sha256`` is the lowercase hex SHA-256 of its bytes, as
    stored. Retention may set ``body`` to NULL; ``body_sha256`` stays, so the record's
    hash still verifies.
``time``
    UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fixed width, so text order is time order).
``hash``
    lowercase hex SHA-256 over the netstrings (``<byte length>:<UTF-8 bytes>,``) of, in
    order: ``actimesh.ledger.v1``, ``prev_hash``, ``seq`` (decimal), ``time``,
    ``component``, ``event_type``, ``subject``, ``outcome``, ``body_sha256``.
``prev_hash``
    the ``hash`` of record ``seq - 1``; 64 zeros for record 1.

No secret key is involved: anyone who can rewrite the whole file can recompute the whole
chain. Operators therefore record the head (``actimesh audit head``) somewhere else and
verify against it (``actimesh audit verify --head SEQ:HASH``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from actimesh.errors import LedgerError

__all__ = [
    "CHAIN_VERSION",
    "GENESIS_HASH",
    "ChainRecord",
    "EventType",
    "canonical_json",
    "format_time",
    "next_record",
    "parse_time",
    "record_hash",
    "sha256_hex",
]

CHAIN_VERSION = "actimesh.ledger.v1"
GENESIS_HASH = "0" * 64
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class EventType(StrEnum):
    """Event types the ledger writes itself. Others may be appended with ``record_event``."""

    ACTIVATION = "activation"  # an activation with every camera decision in its body
    ACK = "ack"  # a camera's acknowledgement
    ALERT = "alert"  # e.g. a camera that did not acknowledge in time
    CASE_LINK = "case_link"  # an activation linked to a case: kept past retention
    RETENTION_DELETE = "retention_delete"  # records redacted or a recording deleted
    LEDGER_IMPORT = "ledger_import"  # rows written before the chain existed were chained
    FALSE_ACTIVATION = "false_activation"  # an officer cancelled a camera's activation
    MERGE = "merge"  # a repeated trigger that joined the activation it repeats
    DISPATCH_ACK = "dispatch_ack"  # a dispatcher acknowledged an incident or an alert
    INCIDENT_NOTE = "incident_note"  # a dispatcher's note on an incident


def canonical_json(body: Mapping[str, Any]) -> str:
    """The canonical text of a record body. Raises ValueError/TypeError if not JSON."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_hex(text: str) -> str:
    """Lowercase hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def format_time(ts: float) -> str:
    """A POSIX timestamp as the chain's fixed-width UTC time text."""
    return datetime.fromtimestamp(ts, UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> float:
    """The POSIX timestamp of a chain time text."""
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC).timestamp()


def record_hash(
    *,
    prev_hash: str,
    seq: int,
    time: str,
    component: str,
    event_type: str,
    subject: str,
    outcome: str,
    body_sha256: str,
) -> str:
    """The hash of one record (see the module docstring for the encoding)."""
    digest = hashlib.sha256()
    for field in (
        CHAIN_VERSION,
        prev_hash,
        str(seq),
        time,
        component,
        event_type,
        subject,
        outcome,
        body_sha256,
    ):
        data = field.encode("utf-8")
        digest.update(b"%d:%b," % (len(data), data))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ChainRecord:
    """One row of ``records`` as stored."""

    seq: int
    time: str
    component: str
    event_type: str
    subject: str
    outcome: str
    body: str | None
    body_sha256: str
    prev_hash: str
    hash: str

    #: The columns in table order, for SELECTs and exports.
    COLUMNS = (
        "seq",
        "time",
        "component",
        "event_type",
        "subject",
        "outcome",
        "body",
        "body_sha256",
        "prev_hash",
        "hash",
    )

    @property
    def redacted(self) -> bool:
        """True once retention has removed the body."""
        return self.body is None

    def computed_hash(self, seq: int | None = None) -> str:
        """The hash these fields give (as if written at ``seq``, default its own)."""
        return record_hash(
            prev_hash=self.prev_hash,
            seq=self.seq if seq is None else seq,
            time=self.time,
            component=self.component,
            event_type=self.event_type,
            subject=self.subject,
            outcome=self.outcome,
            body_sha256=self.body_sha256,
        )

    def body_matches(self) -> bool:
        """True if the body is redacted or hashes to ``body_sha256``."""
        return self.body is None or sha256_hex(self.body) == self.body_sha256

    def parsed_body(self) -> dict[str, Any] | None:
        """The body as a dict (None when redacted or not a JSON object)."""
        if self.body is None:
            return None
        try:
            value = json.loads(self.body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


def next_record(
    prev_seq: int,
    prev_hash: str,
    *,
    at: float,
    component: str,
    event_type: str,
    subject: str,
    outcome: str,
    body: Mapping[str, Any],
) -> ChainRecord:
    """The record that follows the head ``(prev_seq, prev_hash)`` (0 and the genesis hash
    on an empty chain): what every store inserts, so that every store's records verify
    alike. Raises :class:`~actimesh.errors.LedgerError` if the body is not JSON."""
    try:
        text = canonical_json(body)
        when = format_time(at)
        body_sha = sha256_hex(text)
        seq = prev_seq + 1
        digest = record_hash(
            prev_hash=prev_hash,
            seq=seq,
            time=when,
            component=component,
            event_type=event_type,
            subject=subject,
            outcome=outcome,
            body_sha256=body_sha,
        )
    except (ValueError, TypeError, OverflowError) as exc:
        raise LedgerError(f"cannot append a {event_type} record for {subject}: {exc}") from exc
    return ChainRecord(
        seq, when, component, event_type, subject, outcome, text, body_sha, prev_hash, digest
    )
