"""The activation ledger: what the engine did about each trigger, and why.

For each activation it keeps the event (who raised it, when, where, which rule), every
camera commanded and why (paired, or its distance and the margin allowed), every camera
considered and left out and why (too far, stale fix, offline), and each camera's
acknowledgement as it arrives, all chained into one tamper-evident record stream
(:mod:`.chain`). It is shared storage: the engine writes it; audit, evidence, dispatch and
the drills read it.

:class:`Ledger` is the store's interface (:mod:`.store`); :mod:`.sqlite` holds the SQLite
implementation and :mod:`.postgres` the PostgreSQL one (imported only when
:func:`open_ledger` is given a database URL); :mod:`.rows` the row types every store takes
and returns, and the records every store appends.
"""

from actimesh.ledger.chain import (
    CHAIN_VERSION,
    GENESIS_HASH,
    ChainRecord,
    EventType,
    canonical_json,
    format_time,
    parse_time,
    record_hash,
    sha256_hex,
)
from actimesh.ledger.rows import (
    FALSE_ACTIVATION,
    KEEP_TYPES,
    RETENTION_COMPONENT,
    AckRow,
    AckWrite,
    ActivationRow,
    DecisionRow,
    FalseActivation,
    Head,
    Redaction,
    ack_body,
    ack_from_body,
    activation_body,
    activation_from_body,
    activation_outcome,
)
from actimesh.ledger.sqlite import SCHEMA_VERSION, SqliteLedger, read_activation
from actimesh.ledger.store import Ledger, is_database_url, open_ledger, shown_location

__all__ = [
    "CHAIN_VERSION",
    "FALSE_ACTIVATION",
    "GENESIS_HASH",
    "KEEP_TYPES",
    "RETENTION_COMPONENT",
    "SCHEMA_VERSION",
    "AckRow",
    "AckWrite",
    "ActivationRow",
    "ChainRecord",
    "DecisionRow",
    "EventType",
    "FalseActivation",
    "Head",
    "Ledger",
    "Redaction",
    "SqliteLedger",
    "ack_body",
    "ack_from_body",
    "activation_body",
    "activation_from_body",
    "activation_outcome",
    "canonical_json",
    "format_time",
    "is_database_url",
    "open_ledger",
    "parse_time",
    "read_activation",
    "record_hash",
    "sha256_hex",
    "shown_location",
]
