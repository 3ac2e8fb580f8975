"""The ledger in a PostgreSQL database: one chain per agency, for engines on several
hosts. :func:`actimesh.ledger.open_ledger` opens it for a ``postgresql://`` location."""

from actimesh.ledger.postgres.schema import (
    DECISION_COLUMNS,
    POSITIONS_VERSION,
    SCHEMA_VERSION,
    lock_key,
    schema_name,
)
from actimesh.ledger.postgres.store import PostgresLedger

__all__ = [
    "DECISION_COLUMNS",
    "POSITIONS_VERSION",
    "SCHEMA_VERSION",
    "PostgresLedger",
    "lock_key",
    "schema_name",
]
